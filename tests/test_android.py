"""The Android demo (android_demo/): its Kotlin core compiled and tested here, the app checked as far
as a machine without the Android SDK can.

The core module is plain Kotlin/JVM. It is compiled once per session with the kotlinc that
`npm ci --prefix android_demo/tools` installs and run with the JDK; its own runner prints
`N passed, N failed`. Suites: `unit` (golden wire and quantization vectors, JSON, top-k,
preprocessing, manifest, HTTP client), `export` (a real int8 export's golden files), `roundtrip`
(the real `dtconvert serve` on loopback). The app module needs the Android SDK, so it gets
what can run here: a tree-sitter parse of every .kt/.kts file (a parse check, not a compile),
the manifest keys it reads checked against the schema, and a scan for hard-coded model facts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from dtconvert.data import DIGIT_LABELS
from tests.conftest import REPO, manifest_of

pytestmark = pytest.mark.android

ANDROID = REPO / "android_demo"
TOOLS = ANDROID / "tools"
KOTLINC = TOOLS / "node_modules" / "kotlin-compiler" / "bin" / "kotlinc"
NPM_CI = "npm ci --prefix android_demo/tools"
CORE_SOURCES = [ANDROID / "core" / "src" / "main" / "kotlin", ANDROID / "core" / "src" / "test" / "kotlin"]
APP_SOURCES = ANDROID / "app" / "src" / "main" / "kotlin"
MANIFEST_KEYS_KT = ANDROID / "core" / "src" / "main" / "kotlin" / "dev" / "dtconvert" / "demo" / "core" / "ManifestKeys.kt"
EXPORT_PATHS_KT = MANIFEST_KEYS_KT.parent / "ExportPaths.kt"
APP_BUILD = ANDROID / "app" / "build.gradle.kts"
SCHEMA = REPO / "dtconvert" / "manifest.schema.json"
GOLDEN_WIRE = REPO / "tests" / "golden" / "wire"
RUNNER = "dev.dtconvert.demo.core.TestRunnerKt"
# How many tests each Kotlin suite has: a suite that silently lost tests fails here.
SUITE_TESTS = {"unit": 49, "export": 4, "roundtrip": 6}
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$", re.MULTILINE)


# ---- the Kotlin core: compiled once, run per suite ---------------------------------------------


@pytest.fixture(scope="session")
def java() -> str:
    path = shutil.which("java")
    if path is None:
        pytest.skip("java is not installed: the Android demo's Kotlin core cannot be compiled or run here")
    return path


@pytest.fixture(scope="session")
def core_tests_jar(java, tmp_path_factory) -> Path:
    """The core module and its tests in one jar, compiled by the pinned kotlinc."""
    if not KOTLINC.is_file():
        pytest.fail(f"kotlinc is not installed ({KOTLINC.relative_to(REPO)} is missing): run `{NPM_CI}`")
    jar = tmp_path_factory.mktemp("kotlin") / "core-tests.jar"
    command = ["bash", str(KOTLINC), *map(str, CORE_SOURCES), "-Werror", "-include-runtime", "-d", str(jar)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ANDROID)
    assert result.returncode == 0 and jar.is_file(), f"kotlinc failed:\n{result.stdout}\n{result.stderr}"
    return jar


def run_suites(jar: Path, *suites: str, **env: str | Path) -> tuple[int, int, int, str]:
    """Run Kotlin test suites; return (exit code, passed, failed, output)."""
    environment = {**os.environ, **{k: str(v) for k, v in env.items()}}
    result = subprocess.run(["java", "-cp", str(jar), RUNNER, *suites], capture_output=True, text=True, timeout=300, env=environment)
    output = result.stdout + result.stderr
    counts = SUMMARY.findall(output)
    assert counts, f"no 'N passed, N failed' line in the Kotlin runner's output:\n{output}"
    passed, failed = map(int, counts[-1])
    return result.returncode, passed, failed, output


def assert_suite_passed(jar: Path, suite: str, **env: str | Path) -> None:
    code, passed, failed, output = run_suites(jar, suite, **env)
    assert failed == 0 and code == 0, f"Kotlin suite {suite}: {failed} failed (exit {code}):\n{output}"
    assert passed >= SUITE_TESTS[suite], f"Kotlin suite {suite} ran {passed} tests, expected {SUITE_TESTS[suite]}:\n{output}"


def test_kotlin_core_unit_suite(core_tests_jar):
    """Golden wire vectors byte for byte, quantization golden, JSON reader, top-k, npy,
    preprocessing against torch, manifest parsing, and the HTTP client against a stub server."""
    assert_suite_passed(core_tests_jar, "unit", DT_GOLDEN_WIRE_DIR=GOLDEN_WIRE)


def test_twin_kotlin_unit_suite_catches_a_flipped_golden_byte(core_tests_jar, tmp_path):
    golden = shutil.copytree(GOLDEN_WIRE, tmp_path / "wire")
    data = bytearray((golden / "digits_b1.bin").read_bytes())
    data[-1] ^= 0x01
    (golden / "digits_b1.bin").write_bytes(bytes(data))
    code, _, failed, output = run_suites(core_tests_jar, "unit", DT_GOLDEN_WIRE_DIR=golden)
    assert code != 0 and failed >= 1
    assert "FAIL unit/wire golden vectors encode byte for byte: AssertionFailed: digits_b1.bin: first difference at byte 107" in output


def test_kotlin_core_export_suite(core_tests_jar, int8_export):
    """The real export: golden fp32 encoder outputs quantize to golden/wire_int8.npy byte for byte,
    golden/image_uint8.npy preprocesses to golden/input.npy within 1e-5."""
    assert_suite_passed(core_tests_jar, "export", DT_EXPORT_DIR=int8_export)


def test_twin_kotlin_export_suite_catches_a_changed_wire_byte(core_tests_jar, int8_export, tmp_path):
    import numpy as np

    export = shutil.copytree(int8_export, tmp_path / "export", ignore=shutil.ignore_patterns("*.mlpackage", "triton", "*.pt"))
    golden = export / manifest_of(int8_export)["golden"]["path"] / "wire_int8.npy"
    wire = np.load(golden)
    wire.flat[5] = wire.flat[5] + 1 if wire.flat[5] < 127 else 126
    np.save(golden, wire)
    code, _, failed, output = run_suites(core_tests_jar, "export", DT_EXPORT_DIR=export)
    assert code != 0 and failed == 1
    assert "FAIL export/golden encoder outputs quantize to golden wire_int8 byte for byte" in output
    assert "first difference at byte 5" in output


def _doctored_export(int8_export: Path, tmp_path: Path, case: str) -> tuple[Path, str]:
    """A copy of the int8 export broken one way; returns it and the sentence the Kotlin reader must give."""
    export = shutil.copytree(int8_export, tmp_path / "export", ignore=shutil.ignore_patterns("*.mlpackage", "triton", "*.pt"))
    manifest = manifest_of(int8_export)
    index, artifact = next((i, a) for i, a in enumerate(manifest["artifacts"]) if a["part"] == "device" and a["target"] == "executorch")
    outside = tmp_path / "outside.pte"
    shutil.copy(export / artifact["path"], outside)  # the same bytes: only the path rule can stop it
    if case == "symlink":
        (export / artifact["path"]).unlink()
        (export / artifact["path"]).symlink_to(outside)
        return export, f'artifacts[{index}].path "{artifact["path"]}" leaves the export directory (it resolves to {outside}, outside'
    path = {"traversal": "../outside.pte", "absolute": str(outside)}[case]
    manifest["artifacts"][index]["path"] = path
    (export / "manifest.json").write_text(json.dumps(manifest))
    why = {"traversal": 'it contains ".."', "absolute": "it is absolute"}[case]
    return export, f'artifacts[{index}].path "{path}" leaves the export directory ({why})'


@pytest.mark.parametrize("case", ["traversal", "absolute", "symlink"])
def test_kotlin_reader_refuses_an_export_path_that_leaves_it(core_tests_jar, int8_export, tmp_path, case):
    """The real export with its ExecuTorch encoder reached through `..`, an absolute path or a
    symlink to a byte-identical file outside: the Kotlin reader fails with one sentence naming
    the manifest field and the path. Twin: test_kotlin_core_export_suite passes on the intact export."""
    export, sentence = _doctored_export(int8_export, tmp_path, case)
    code, _, failed, output = run_suites(core_tests_jar, "export", DT_EXPORT_DIR=export)
    assert code != 0 and failed >= 1, output
    [line] = [line for line in output.splitlines() if line.startswith("FAIL export/real manifest parses")]
    assert sentence in line, line


@pytest.mark.serve
def test_kotlin_round_trip_against_dtconvert_serve(core_tests_jar, int8_export):
    """Kotlin quantizes the golden encoder outputs, sends one batch to the real server and gets the
    golden decoder's top-1 for every task; a wrong model id gets 422, a truncated message 400."""
    from tests.serving import running_server

    with running_server(int8_export) as server:
        code, passed, failed, output = run_suites(core_tests_jar, "roundtrip", DT_EXPORT_DIR=int8_export, DT_SERVER_URL=server.url)
    assert failed == 0 and code == 0, f"Kotlin round trip: {failed} failed:\n{output}\n--- server log ---\n{server.log()}"
    assert passed >= SUITE_TESTS["roundtrip"], f"the Kotlin round trip ran {passed} tests, expected {SUITE_TESTS['roundtrip']}:\n{output}"


@pytest.mark.serve
def test_kotlin_round_trip_against_a_two_variant_server(core_tests_jar, int8_export, tuned_export):
    """The device-tuned variant's app talks, unchanged, to one shared cloud serving both variants."""
    from tests.serving import running_server

    with running_server([int8_export, tuned_export]) as server:
        code, passed, failed, output = run_suites(core_tests_jar, "roundtrip", DT_EXPORT_DIR=tuned_export, DT_SERVER_URL=server.url)
    assert failed == 0 and code == 0 and passed > 0, f"Kotlin round trip: {failed} failed:\n{output}\n--- server log ---\n{server.log()}"
    assert passed >= SUITE_TESTS["roundtrip"], output


# ---- manifest keys: every key the Kotlin code reads exists in the schema -----------------------


def kotlin_constants(path: Path, object_name: str) -> dict[str, str | int]:
    """`const val NAME = "value"` (or an integer) inside `object <object_name> { ... }` of a Kotlin file."""
    match = re.search(rf"^object {object_name} \{{\n(.*?)^\}}", path.read_text(), re.MULTILINE | re.DOTALL)
    assert match, f"{path}: no object {object_name}"
    constants = {}
    for name, text, number in re.findall(r'const val (\w+) = (?:"([^"]*)"|(-?\d+))', match.group(1)):
        constants[name] = text if number == "" else int(number)
    return constants


def _deref(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["$defs"][node["$ref"].removeprefix("#/$defs/")]
    return node


def schema_has_key(schema: dict, key: str) -> bool:
    """Whether a dotted manifest key (`[]` steps into an array's items) is declared by the schema."""
    node = schema
    for part in key.split("."):
        name, into_items = (part[:-2], True) if part.endswith("[]") else (part, False)
        properties = _deref(schema, node).get("properties", {})
        if name not in properties:
            return False
        node = _deref(schema, properties[name])
        if into_items:
            if "items" not in node:
                return False
            node = node["items"]
    return True


def schema_values(node) -> set:
    """Every enum member and const in the schema."""
    found = set()
    if isinstance(node, dict):
        found.update(node.get("enum", []))
        if "const" in node:
            found.add(node["const"])
        for value in node.values():
            found |= schema_values(value)
    elif isinstance(node, list):
        for value in node:
            found |= schema_values(value)
    return found


def kotlin_manifest_keys() -> dict[str, str]:
    keys = {f"core {name}": key for name, key in kotlin_constants(MANIFEST_KEYS_KT, "ManifestKeys").items()}
    keys |= {f"app/build.gradle.kts {name}": key for name, key in kotlin_constants(APP_BUILD, "ManifestKeys").items()}
    return keys


def test_manifest_keys_read_by_kotlin_exist_in_the_schema():
    schema = json.loads(SCHEMA.read_text())
    keys = kotlin_manifest_keys()
    assert len(keys) > 30, keys
    missing = {name: key for name, key in keys.items() if not schema_has_key(schema, key)}
    assert not missing, f"manifest keys the Kotlin code reads but {SCHEMA.name} does not declare: {missing}"
    values = kotlin_constants(MANIFEST_KEYS_KT, "ManifestValues")
    unknown = {name: v for name, v in values.items() if v not in schema_values(schema)}
    assert not unknown, f"ManifestValues that are no enum member or const of {SCHEMA.name}: {unknown}"
    # The parser reads keys only through ManifestKeys: no quoted key passed to at()/optionalAt().
    manifest_kt = (MANIFEST_KEYS_KT.parent / "Manifest.kt").read_text()
    assert not re.search(r'\b(at|optionalAt|optional|get)\("', manifest_kt), "Manifest.kt reads a key spelled outside ManifestKeys"


# ---- the export confinement rule: core and the copyExport Gradle task share it ------------------

def export_paths_object(source: str) -> str:
    """The `object ExportPaths` declaration with its KDoc, as written in a Kotlin source."""
    start = source.index("/**\n * An export directory is something")
    end = source.index("\n}\n", source.index("object ExportPaths {", start)) + 3
    return source[start:end]


def test_copy_export_task_holds_core_s_confinement_rule_verbatim():
    """app/build.gradle.kts runs in the build JVM without core's classes, so it carries a copy of
    core's ExportPaths; the copy is the tested one character for character, and the task uses it
    for every path it copies (no include patterns, which would read a path as a glob)."""
    core = export_paths_object(EXPORT_PATHS_KT.read_text())
    build = APP_BUILD.read_text()
    assert "fun resolve(exportDir: File, path: String, key: String): File" in core
    assert export_paths_object(build) == core
    task = build[build.index("abstract class CopyExportTask"):build.index("abstract class NetworkSecurityConfigTask")]
    assert "ExportPaths.resolve(export, path, key)" in task and "ExportPaths.problem(path)" in task
    assert "include(" not in task and "MessageDigest" in task


def test_twin_shared_rule_check_notices_a_changed_copy():
    build = APP_BUILD.read_text()
    loosened = build.replace('path.split(\'/\', \'\\\\\').any { it == ".." }', 'path.split(\'/\').any { it == ".." }')
    assert loosened != build
    assert export_paths_object(loosened) != export_paths_object(EXPORT_PATHS_KT.read_text())


def test_twin_schema_check_catches_made_up_keys():
    schema = json.loads(SCHEMA.read_text())
    assert schema_has_key(schema, "artifacts[].inputs[].shape") and schema_has_key(schema, "device_input.preprocessing.std")
    for made_up in ["wire.scael", "artifacts[].paht", "artifacts.path", "tasks[].labels[].name", "golden.files.input"]:
        assert not schema_has_key(schema, made_up), made_up
    assert "coreml" in schema_values(schema) and "tflite2" not in schema_values(schema)


def test_golden_files_the_kotlin_code_reads_are_written_by_export(int8_export):
    names = kotlin_constants(MANIFEST_KEYS_KT, "GoldenFiles")
    manifest = manifest_of(int8_export)
    written = set(manifest["golden"]["files"])
    assert set(names.values()) <= written, f"GoldenFiles names export does not write: {set(names.values()) - written}"
    assert {f"logits_{t['name']}.npy" for t in manifest["tasks"]} <= written  # GoldenFiles.logits(task)


# ---- the core stays plain Kotlin/JVM -------------------------------------------------------------


def _parser():
    import tree_sitter
    import tree_sitter_kotlin

    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_kotlin.language()))


def code_without_comments_and_strings(source: bytes) -> str:
    """The Kotlin source with comments and string literals blanked out (tree-sitter)."""
    tree = _parser().parse(source)
    spans = []

    def walk(node):
        if "comment" in node.type or node.type in ("string_literal", "multiline_string_literal"):
            spans.append((node.start_byte, node.end_byte))
            return
        for child in node.children:
            walk(child)

    walk(tree.root_node)
    out = bytearray(source)
    for start, end in spans:
        out[start:end] = b" " * (end - start)
    return out.decode()


ANDROID_REFERENCE = re.compile(r"\b(android|androidx|org\.pytorch|com\.google\.ai\.edge)\.")


def android_references(source: bytes) -> list[str]:
    return ANDROID_REFERENCE.findall(code_without_comments_and_strings(source))


def test_core_has_no_android_imports():
    files = [p for root in CORE_SOURCES for p in root.rglob("*.kt")]
    assert len(files) > 10
    offenders = {str(p.relative_to(ANDROID)): refs for p in files if (refs := android_references(p.read_bytes()))}
    assert not offenders, f"core must stay plain Kotlin/JVM (it is compiled without the Android SDK): {offenders}"


def test_twin_android_import_check_catches_an_import():
    assert android_references(b"import android.graphics.Bitmap\n")
    assert android_references(b"val b: android.graphics.Bitmap? = null\n")
    assert android_references(b"import org.pytorch.executorch.Module\n")
    assert not android_references(b'// what android.graphics.Bitmap.getPixels returns\nval s = "android.x"\n')


# ---- the app: nothing about the model is written in app code ------------------------------------

FILE_SUFFIXES = re.compile(r"\.(pte|tflite|npy|json|mlpackage|pt)\b")
URL_LITERAL = re.compile(r"https?://[\w\[]")


def _number(text: str) -> int | None:
    text = text.replace("_", "").rstrip("uUlL")
    try:
        return int(text, 0)
    except ValueError:
        return None


def hard_coded_facts(source: bytes, strings: set[str], numbers: set[int]) -> list[str]:
    """Literals in Kotlin app code that restate the model: URLs, file names, labels, float
    constants (mean, std, scale), and integers equal to a shape, size or int8 bound. Sizes in
    dp/sp are layout, not model facts."""
    tree = _parser().parse(source)
    found = []

    def is_layout_unit(node) -> bool:
        parent = node.parent
        return parent is not None and parent.type == "navigation_expression" and parent.text.split(b".")[-1] in (b"dp", b"sp")

    def walk(node):
        if node.type in ("string_literal", "multiline_string_literal"):
            text = node.text.decode()
            content = "".join(c.text.decode() for c in node.children if c.type == "string_content")
            if URL_LITERAL.search(text) or FILE_SUFFIXES.search(text) or content in strings:
                found.append(text)
            return
        if "comment" in node.type:
            return
        if node.type == "float_literal" and not is_layout_unit(node):
            found.append(node.text.decode())
        if node.type == "number_literal" and not is_layout_unit(node) and _number(node.text.decode()) in numbers:
            found.append(node.text.decode())
        for child in node.children:
            walk(child)

    walk(tree.root_node)
    return found


def model_facts(manifest: dict) -> tuple[set[str], set[int]]:
    strings = {manifest["model"]["name"], manifest["model"]["id"], *(a["path"] for a in manifest["artifacts"])}
    strings |= {t["name"] for t in manifest["tasks"]} | {label for t in manifest["tasks"] for label in t["labels"]}
    strings |= set(DIGIT_LABELS) | {label for labels in DIGIT_LABELS.values() for label in labels}
    pre = manifest["device_input"]["preprocessing"]
    numbers = {*manifest["device_input"]["shape"], *pre["size"], *manifest["wire"]["shape"], manifest["wire"]["bytes_per_image"]}
    numbers |= set(manifest["communication"].values()) | {len(t["labels"]) for t in manifest["tasks"]} | {127, 128, 255}
    return strings, numbers - {0, 1, 2}


def test_app_code_hard_codes_no_model_facts(int8_export):
    strings, numbers = model_facts(manifest_of(int8_export))
    files = sorted(APP_SOURCES.rglob("*.kt"))
    assert len(files) >= 5
    offenders = {str(p.relative_to(ANDROID)): facts for p in files if (facts := hard_coded_facts(p.read_bytes(), strings, numbers))}
    assert not offenders, f"app code restates what manifest.json says: {offenders}"
    # The default server URL is a Gradle property that reaches the code through BuildConfig.
    properties = (ANDROID / "gradle.properties").read_text()
    assert re.search(r"^dtServerUrl=https?://\S+$", properties, re.MULTILINE)
    assert re.search(r"^dtExportDir=\.\./export/digits$", properties, re.MULTILINE)
    build = APP_BUILD.read_text()
    assert not URL_LITERAL.search(build), "app/build.gradle.kts names a server; the URL belongs in gradle.properties"
    assert 'gradleProperty("dtServerUrl")' in build and 'gradleProperty("dtExportDir")' in build
    assert "BuildConfig.DT_SERVER_URL" in (APP_SOURCES / "dev" / "dtconvert" / "demo" / "DemoSettings.kt").read_text()
    # Cleartext is allowed only by the generated network security config, never app-wide.
    manifest_xml = (ANDROID / "app" / "src" / "main" / "AndroidManifest.xml").read_text()
    assert "usesCleartextTraffic" not in manifest_xml and 'android:networkSecurityConfig="@xml/network_security_config"' in manifest_xml
    assert not list((ANDROID / "app" / "src").rglob("network_security_config.xml")), "the config is generated from dtServerUrl"


def test_twin_fact_scan_catches_hard_coded_model_facts(int8_export):
    strings, numbers = model_facts(manifest_of(int8_export))
    source = b'''
        val url = "http://10.0.2.2:8080"
        val model = "digits_encoder_executorch_int8.pte"
        val shape = longArrayOf(1, 1, 16, 16)
        val mean = 0.5f
        val label = "odd"
        val q = x.coerceIn(-128, 127)
    '''
    found = hard_coded_facts(source, strings, numbers)
    assert found == ['"http://10.0.2.2:8080"', '"digits_encoder_executorch_int8.pte"', "16", "16", "0.5f", '"odd"', "128", "127"]
    assert hard_coded_facts(b"val m = Modifier.size(16.dp).padding(8.dp)\nval k = 1\n", strings, numbers) == []


# ---- the project files ---------------------------------------------------------------------------


def kotlin_and_gradle_files() -> list[Path]:
    skip = {"node_modules", "build", ".gradle"}
    return sorted(p for p in ANDROID.rglob("*.kt*") if p.suffix in (".kt", ".kts") and not skip & set(p.parts))


def test_every_kotlin_file_parses():
    """A parse check only (tree-sitter-kotlin): the app needs the Android SDK to compile, which this
    machine lacks; kotlinc compiling the core in the suites above is the real check for core."""
    parser = _parser()
    files = kotlin_and_gradle_files()
    assert len(files) >= 25
    broken = [str(p.relative_to(ANDROID)) for p in files if parser.parse(p.read_bytes()).root_node.has_error]
    assert not broken, f"tree-sitter-kotlin cannot parse: {broken}"


def test_gradle_project_is_complete():
    settings = (ANDROID / "settings.gradle.kts").read_text()
    assert 'include(":app", ":core")' in settings and "google()" in settings and "mavenCentral()" in settings
    catalog = tomllib.loads((ANDROID / "gradle" / "libs.versions.toml").read_text())
    pins = dict(re.findall(r'"([\w-]+)==([^"]+)"', (REPO / "pyproject.toml").read_text()))
    assert catalog["versions"]["executorch"] == pins["executorch"], "the ExecuTorch runtime must match the exporter's release"
    assert catalog["libraries"]["executorch-android"]["module"] == "org.pytorch:executorch-android"
    assert catalog["libraries"]["litert"]["module"] == "com.google.ai.edge.litert:litert"
    assert {"android-application", "kotlin-jvm", "kotlin-compose"} <= set(catalog["plugins"])
    build = APP_BUILD.read_text()
    assert re.search(r"^\s*compileSdk = 35$", build, re.MULTILINE) and re.search(r"^\s*minSdk = 24$", build, re.MULTILINE)
    assert 'tasks.register<CopyExportTask>("copyExport")' in build and "addGeneratedSourceDirectory(copyExport" in build
    assert "libs.executorch.android" in build and "libs.litert" in build and 'project(":core")' in build
    core_build = (ANDROID / "core" / "build.gradle.kts").read_text()
    assert "libs.plugins.kotlin.jvm" in core_build and "android" not in core_build.split("plugins {")[1].split("}")[0]
    wrapper = (ANDROID / "gradle" / "wrapper" / "gradle-wrapper.properties").read_text()
    assert re.search(r"^distributionUrl=https\\://services\.gradle\.org/distributions/gradle-[\d.]+-(bin|all)\.zip$", wrapper, re.MULTILINE)
    manifest_xml = (ANDROID / "app" / "src" / "main" / "AndroidManifest.xml").read_text()
    assert 'android:name="android.permission.INTERNET"' in manifest_xml and 'android:name=".MainActivity"' in manifest_xml
    package = json.loads((TOOLS / "package.json").read_text())
    lock = json.loads((TOOLS / "package-lock.json").read_text())
    assert re.fullmatch(r"\d+\.\d+\.\d+", package["dependencies"]["kotlin-compiler"]), "kotlinc is pinned exactly"
    assert lock["packages"]["node_modules/kotlin-compiler"]["version"] == package["dependencies"]["kotlin-compiler"]
    assert "tools/node_modules/" in (ANDROID / ".gitignore").read_text().splitlines()


def test_no_placeholders_in_the_android_project():
    skip = {"node_modules", "build", ".gradle"}
    suffixes = {".kt", ".kts", ".xml", ".toml", ".properties", ".md", ".json"}
    files = [p for p in ANDROID.rglob("*") if p.is_file() and p.suffix in suffixes and not skip & set(p.parts)]
    marked = {str(p.relative_to(ANDROID)) for p in files if re.search(r"\b(TODO|FIXME|XXX|TBD)\b", p.read_text())}
    assert not marked, f"placeholders left in: {marked}"


def test_readme_walks_from_export_to_a_running_app():
    readme = (ANDROID / "README.md").read_text()
    steps = re.findall(r"^(\d+)\. ", readme, re.MULTILINE)
    assert len(steps) >= 5 and steps[:5] == ["1", "2", "3", "4", "5"]
    for needed in ["dtconvert export", "dtconvert serve", "-PdtExportDir", "-PdtServerUrl", "gradle wrapper", NPM_CI, "```mermaid"]:
        assert needed in readme, needed
