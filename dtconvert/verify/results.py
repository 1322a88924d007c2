"""verify's results: every check with its numbers, as JSON (the manifest's record and ``--json``) and JUnit XML."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from xml.etree import ElementTree


@dataclass
class Check:
    artifact: str  # the artifact's path in the manifest, or "manifest"
    runtime: str  # what executed it ("ExecuTorch XNNPACK", "MIL reference", ...) or "-" for static checks
    check: str  # "sha256", "structure", "wire", "top-1 agreement [digit]", ...
    passed: bool
    detail: str  # the measured number next to its bound, or what is wrong
    numbers: dict | None = None  # the measured numbers behind the decision (n, flips, interval, p-value, ...)


@dataclass
class Report:
    export_dir: str
    samples: int
    data: str
    sets: dict = field(default_factory=dict)  # evaluation set → images ("held-out", "rest", "folder")
    checks: list[Check] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)  # artifact → runtime → numbers
    structure: dict = field(default_factory=dict)  # artifact → {"delegation": {...}}, measured from the artifact
    seconds: float = 0.0
    explanation: dict | None = None  # verify --explain (and every failed gate): the per-point SQNR table
    platforms: dict = field(default_factory=dict)  # verify --arch arm64: the emulator, each CPU profile and the features it showed

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def add(self, artifact: str, runtime: str, check: str, passed: bool, detail: str, numbers: dict | None = None) -> None:
        self.checks.append(Check(artifact, runtime, check, bool(passed), detail, numbers))

    def disagreements(self) -> list[tuple[str, str, str, dict]]:
        """(artifact, runtime, task, disagreement) for every flipped image, worst first per artifact."""
        rows: list[tuple[str, str, str, dict]] = []
        for artifact, per_runtime in self.metrics.items():
            for runtime, numbers in per_runtime.items():
                for task, values in numbers["tasks"].items():
                    rows.extend((artifact, runtime, task, d) for d in values.get("disagreements", []))
        return rows

    def to_json(self) -> dict:
        return {
            "export_dir": self.export_dir,
            "passed": self.passed,
            "samples": self.samples,
            "data": self.data,
            "sets": self.sets,
            "seconds": round(self.seconds, 2),
            "metrics": self.metrics,
            "structure": self.structure,
            "checks": [asdict(c) for c in self.checks],
            "explanation": self.explanation,
            "platforms": self.platforms,
        }

    def summary(self) -> dict:
        """What export records in the manifest."""
        return {
            "passed": self.passed,
            "samples": self.samples,
            "data": self.data,
            "sets": self.sets,
            "metrics": _without_disagreement_lists(self.metrics),
            "structure": self.structure,
            "failed": [asdict(c) for c in self.checks if not c.passed],
            "checks": len(self.checks),
            "explanation": self.explanation,
            "platforms": self.platforms,
        }

    def to_junit(self) -> str:
        suite = ElementTree.Element(
            "testsuite",
            name="dtconvert verify",
            tests=str(len(self.checks)),
            failures=str(sum(not c.passed for c in self.checks)),
            time=f"{self.seconds:.2f}",
        )
        for c in self.checks:
            case = ElementTree.SubElement(suite, "testcase", classname=c.artifact, name=f"{c.runtime}: {c.check}")
            if c.numbers:
                properties = ElementTree.SubElement(case, "properties")
                for key, value in _flatten(c.numbers):
                    ElementTree.SubElement(properties, "property", name=key, value=str(value))
            if not c.passed:
                ElementTree.SubElement(case, "failure", message=c.detail).text = c.detail
            else:
                ElementTree.SubElement(case, "system-out").text = c.detail
        root = ElementTree.Element("testsuites")
        root.append(suite)
        ElementTree.indent(root)
        return ElementTree.tostring(root, encoding="unicode", xml_declaration=True)


def _flatten(numbers: dict, prefix: str = ""):
    """("sets.held-out.p_value", 0.54), ...: a check's numbers as JUnit properties."""
    for key, value in numbers.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _without_disagreement_lists(metrics: dict) -> dict:
    """The metrics as the manifest records them: disagreements counted, not listed (--json lists them)."""
    slim: dict = {}
    for artifact, per_runtime in metrics.items():
        for runtime, numbers in per_runtime.items():
            tasks = {
                task: {k: v for k, v in values.items() if k != "disagreements"} | {"disagreements": len(values.get("disagreements", []))}
                for task, values in numbers["tasks"].items()
            }
            slim.setdefault(artifact, {})[runtime] = {**numbers, "tasks": tasks}
    return slim


def write_reports(report: Report, json_path: Path | None, junit_path: Path | None) -> None:
    from dtconvert.checkpoint import atomic_write

    if json_path is not None:
        atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(report.to_json(), indent=2) + "\n"))
    if junit_path is not None:
        atomic_write(junit_path, lambda tmp: tmp.write_text(report.to_junit() + "\n"))
