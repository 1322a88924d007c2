"""The house's rules, read from the code: floors without upward arrows or cycles, rooms of a size a
reader can hold, and a first docstring line saying what each module is for.

``dtconvert``'s imports (module level and inside functions alike) are walked with ``ast``. Each
module lives on a floor; a module may import from its own floor or below, never above, and the
graph has no cycle. Each rule is checked on the real package and, as its twin, on a small package
written here that breaks it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dtconvert"

# Lowest first. A module on floor n may import modules on floors 0..n.
FLOORS = {
    0: ["dtconvert", "errors", "metrics", "gate", "gradnorm", "wire", "output", "model", "mil_reference", "rewrite"],
    1: ["recipe", "checkpoint", "data", "manifest", "tolerances", "describe", "evaluation", "quantize"],
    2: ["targets", "train", "qat"],
    3: ["export", "verify", "cloud", "batching", "triton", "client", "bench", "sweep"],
    4: ["serve", "report", "demo", "auto"],
    5: ["cli"],
}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
LONG_BY_DESIGN = "Long by design:"  # a module docstring naming why one long piece reads better


def module_name(path: Path, package_dir: Path) -> str:
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module → the package's modules it imports (``from pkg import name`` counts ``pkg.name`` when that is a module)."""
    package = package_dir.name
    modules = {module_name(p, package_dir): p for p in package_dir.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target.split(".")[0] == package and target in modules and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def floor_of(module: str, floors: dict[int, list[str]]) -> int:
    """The floor of a module: that of its top-level room (``dtconvert.targets.tflite`` → ``targets``)."""
    room = room_of(module)
    for floor, rooms in floors.items():
        if room in rooms:
            return floor
    raise AssertionError(f"{module} is on no floor: add it to FLOORS")


def upward_arrows(graph: dict[str, set[str]], floors: dict[int, list[str]]) -> list[str]:
    return sorted(
        f"{a} (floor {floor_of(a, floors)}) → {b} (floor {floor_of(b, floors)})"
        for a, edges in graph.items()
        for b in edges
        if floor_of(b, floors) > floor_of(a, floors)
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk (one per back edge)."""
    found, state, stack = [], dict.fromkeys(graph, 0), []

    def visit(node: str) -> None:
        state[node], _ = 1, stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt) :], nxt])
            elif state.get(nxt) == 0:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if state[node] == 0:
            visit(node)
    return found


def room_of(module: str) -> str:
    """``dtconvert.bench.plan`` → ``bench``: the top-level module or package a module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def private_imports(package_dir: Path) -> list[str]:
    """``from pkg.a import _name`` across rooms: a private helper used outside the room that owns it."""
    package = package_dir.name
    found = []
    for path in package_dir.rglob("*.py"):
        importer = module_name(path, package_dir)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package:
                for alias in node.names:
                    private = alias.name.startswith("_") and not alias.name.startswith("__")
                    if private and room_of(node.module) != room_of(importer):
                        found.append(f"{importer} imports {node.module}.{alias.name}")
    return sorted(found)


def oversized(package_dir: Path) -> list[str]:
    """Modules over MAX_MODULE_LINES and functions over MAX_FUNCTION_LINES, unless the module's docstring says why."""
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        text = path.read_text()
        tree = ast.parse(text)
        doc = ast.get_docstring(tree) or ""
        excused = doc[doc.index(LONG_BY_DESIGN) :] if LONG_BY_DESIGN in doc else ""
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES and not excused:
            found.append(f"{path.relative_to(package_dir.parent)}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > MAX_FUNCTION_LINES and node.name not in excused:
                    found.append(f"{path.relative_to(package_dir.parent)}: {node.name}() is {length} lines")
    return found


def purpose_problems(package_dir: Path) -> list[str]:
    """Modules whose docstring does not open with one line saying what the module is for."""
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        first = doc.splitlines()[0] if doc else ""
        if len(first.split()) < 4:
            found.append(f"{path.relative_to(package_dir.parent)}: {first!r}")
    return found


# ---- the real package ---------------------------------------------------------------------------


def test_no_module_imports_from_a_higher_floor():
    assert upward_arrows(import_graph(PACKAGE), FLOORS) == []


def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph(PACKAGE)) == []


def test_no_private_helper_crosses_rooms():
    assert private_imports(PACKAGE) == []


def test_modules_and_functions_stay_readable_sizes():
    assert oversized(PACKAGE) == []


def test_every_module_says_what_it_is_for():
    assert purpose_problems(PACKAGE) == []


def layout_problems(readme: str, package_dir: Path, floors: dict[int, list[str]]) -> list[str]:
    """What the README's layout table gets wrong about the tree: modules it does not name, paths
    that do not exist, rooms on another floor than the code's."""
    layout = readme[readme.index("## Layout") :].split("\n## ")[0]
    package = package_dir.name
    named: dict[str, int | None] = {}  # package path → the floor its row gives
    for row in layout.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[1].startswith(f"`{package}/"):
            continue
        floor = int(cells[0]) if cells[0].isdigit() else None
        for path in re.findall(r"`([\w./]+)`", cells[1]):
            named[path if path.startswith(f"{package}/") else f"{package}/{path}"] = floor
    problems = []
    root = package_dir.parent
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if path.parent == package_dir and path.name == "__init__.py":
            continue
        room = rel if path.parent == package_dir else f"{path.parent.relative_to(root).as_posix()}/"
        if room not in named:
            problems.append(f"{rel}: not in the layout table")
    for entry, floor in named.items():
        if not (root / entry).exists():
            problems.append(f"{entry}: in the layout table, not in the tree")
        elif entry.endswith((".py", "/")) and floor is not None:
            module = entry.removesuffix(".py").rstrip("/").replace("/", ".")
            if floor_of(module, floors) != floor:
                problems.append(f"{entry}: floor {floor} in the table, {floor_of(module, floors)} in the code")
    return sorted(set(problems))


def test_the_readme_layout_table_matches_the_tree():
    assert layout_problems((ROOT / "README.md").read_text(), PACKAGE, FLOORS) == []


# ---- twins: each rule fails on a package that breaks it -------------------------------------------


@pytest.fixture
def bad_package(tmp_path) -> Path:
    root = tmp_path / "bad"
    (root / "low").mkdir(parents=True)
    (root / "__init__.py").write_text('"""A package that breaks every rule of the house."""\n')
    (root / "low" / "__init__.py").write_text('"""A low room that reaches up to a higher one."""\nfrom bad import high\n')
    (root / "high.py").write_text('"""A high room that imports a private helper."""\nfrom bad.low import _secret\n')
    (root / "ping.py").write_text('"""One half of an import cycle."""\nimport bad.pong\n')
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (root / "pong.py").write_text(f'"""x"""\nimport bad.ping\n\n\ndef long():\n{body}\n' + "\n" * MAX_MODULE_LINES)
    return root


BAD_FLOORS = {0: ["bad", "low", "ping", "pong"], 1: ["high"]}


def test_twin_an_upward_arrow_is_found(bad_package):
    assert upward_arrows(import_graph(bad_package), BAD_FLOORS) == ["bad.low (floor 0) → bad.high (floor 1)"]


def test_twin_a_cycle_is_found(bad_package):
    found = cycles(import_graph(bad_package))
    assert ["bad.ping", "bad.pong", "bad.ping"] in found


def test_twin_a_private_import_across_rooms_is_found(bad_package):
    assert private_imports(bad_package) == ["bad.high imports bad.low._secret"]


def test_twin_long_modules_and_functions_are_found(bad_package):
    found = oversized(bad_package)
    assert any("pong.py: long() is 81 lines" in f for f in found) and any(f.endswith("lines") and "pong.py:" in f and "()" not in f for f in found)
    (bad_package / "pong.py").write_text(f'"""Long by design: long() is one table."""\n' + (bad_package / "pong.py").read_text().split("\n", 1)[1])
    assert oversized(bad_package) == []


def test_twin_a_layout_table_that_misses_misnames_or_misplaces_is_found(bad_package):
    readme = "## Layout\n\n| floor | path | what |\n|---|---|---|\n| 0 | `bad/low/`, `ping.py` | x |\n| 0 | `bad/high.py` | x |\n| 0 | `bad/gone.py` | x |\n"
    assert layout_problems(readme, bad_package, BAD_FLOORS) == [
        "bad/gone.py: in the layout table, not in the tree",
        "bad/high.py: floor 0 in the table, 1 in the code",
        "bad/pong.py: not in the layout table",
    ]


def test_twin_a_module_without_a_purpose_is_found(bad_package):
    assert purpose_problems(bad_package) == ["bad/pong.py: 'x'"]


# ---- one table of runtimes ------------------------------------------------------------------------


def unknown_runtimes(overrides: dict) -> list[str]:
    """Keys of a per-runtime table that name no runtime of dtconvert.targets.RUNTIMES."""
    from dtconvert.targets import RUNTIMES

    return sorted(set(overrides) - set(RUNTIMES))


def test_per_runtime_bounds_name_runtimes_of_the_one_table():
    from dtconvert.targets import PRIMARY_RUNTIME, RUNTIMES, load_target
    from dtconvert.tolerances import RUNTIME_OVERRIDES

    assert RUNTIME_OVERRIDES and unknown_runtimes(RUNTIME_OVERRIDES) == []
    assert set(PRIMARY_RUNTIME.values()) <= set(RUNTIMES)
    for target in PRIMARY_RUNTIME:
        assert set(load_target(target).runtimes()) <= set(RUNTIMES)


def test_twin_a_runtime_named_by_its_label_is_caught():
    assert unknown_runtimes({"Core ML all units": {}}) == ["Core ML all units"]


# ---- what a wheel ships ---------------------------------------------------------------------------


def unpackaged(package_dir: Path, declared: list[str]) -> list[str]:
    """Packages (folders with an ``__init__.py``) that pyproject.toml's package list leaves out of a wheel."""
    found = {module_name(p, package_dir) for p in package_dir.rglob("__init__.py")}
    return sorted(found - set(declared))


def test_pyproject_ships_every_package():
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert unpackaged(PACKAGE, declared) == []


def test_twin_a_package_missing_from_the_list_is_found(bad_package):
    assert unpackaged(bad_package, ["bad"]) == ["bad.low"]
