"""``dtconvert verify``: prove that what ships computes what was trained.

Integrity first (every file's sha256 against the manifest, before anything runs), then each
artifact in its real runtime on held-out data, compared with the fp32 PyTorch model that the
export carries as its TorchScript ``reference`` artifact:

* wire tensor against the fp32 encoder: max abs error, cosine similarity, SQNR (dB; the default
  int8 has a floor);
* end to end (device artifact → int8 wire → cloud decoder) against the fp32 model, per task:
  top-1 agreement, accuracy change, and a collapse check (one class for everything);
* delegation: how many XNNPACK delegate calls (.pte) or partitions (LiteRT) the artifact makes
  and which ops run outside them, measured from the artifact, against the tolerance table (the
  default int8 and fp32: one, and nothing outside) and against what the manifest records;
* structure: the .tflite has only builtin ops and the I/O the manifest declares; the Core ML
  program uses only ops the MIL reference interpreter knows, with the declared I/O.

Core ML predicts only on macOS. On Linux its ML program runs in dtconvert's numpy MIL reference
interpreter and is reported as "MIL reference", never as "Core ML".
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

from dtconvert import gate
from dtconvert.errors import UserError, unloadable
from dtconvert.manifest import describe_file, load_manifest
from dtconvert.metrics import cosine_similarity, max_abs_error, sqnr_db
from dtconvert.tolerances import load_tolerances


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


# ---- data ---------------------------------------------------------------------------------

HELDOUT, REST, FOLDER = "held-out", "rest", "folder"


@dataclass
class VerificationData:
    """Every image verify can reach, concatenated, with the set each came from.

    ``held-out`` is the checkpoint's held-out split (the only unbiased sample of unseen images,
    and the only one whose labels judge accuracy); ``rest`` is every other image of the data
    source (training and calibration images: agreement with the fp32 model needs no labels);
    ``folder`` is ``--data DIR``."""

    images: np.ndarray  # (N, C, H, W) float32, preprocessed as the manifest says
    labels: np.ndarray | None  # (N, tasks) int64, -1 where unknown; None when nothing is labelled
    index: np.ndarray  # (N,) the image's index in its source (data set index, or file number)
    sets: np.ndarray  # (N,) HELDOUT, REST or FOLDER
    description: str

    def names(self) -> list[str]:
        return [s for s in (HELDOUT, REST, FOLDER) if np.any(self.sets == s)]

    def counts(self) -> dict[str, int]:
        return {s: int(np.sum(self.sets == s)) for s in self.names()}


def verification_data(manifest: dict, data: Path | None, digits: bool, limit: int | None) -> VerificationData:
    """Every image of the export's own data source (held-out split and the rest), plus ``data``'s.

    ``limit`` takes the first N of each set."""
    from dtconvert.data import load_task_data, normalize
    from dtconvert.recipe import parse_recipe

    pre = manifest["device_input"]["preprocessing"]
    source = manifest["data"]["source"].get("kind")
    if digits and source != "digits":
        raise UserError(f"--digits: this model was trained on {source!r} data, not the bundled digits; pass --data DIR")
    parts: list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray]] = []  # (set, images, labels, index)
    described = []
    recipe = manifest["data"]["recipe"]
    try:
        parsed = parse_recipe({k: v for k, v in recipe.items() if k != "name"}, "stored recipe", recipe["name"])
        task_data = load_task_data(parsed)
    except UserError as e:
        if data is None:
            raise UserError(f"cannot read the held-out data the manifest names ({e}); pass --data DIR") from None
        task_data = None
    if task_data is not None:
        heldout = np.asarray(manifest["data"]["heldout"], dtype=np.int64)
        if len(heldout) and (heldout.max() >= len(task_data) or heldout.min() < 0):
            raise UserError(f"manifest.json: data.heldout names image {int(heldout.max())}, but the data source has {len(task_data)}")
        rest = np.setdiff1d(np.arange(len(task_data)), heldout)
        for name, rows in ((HELDOUT, heldout), (REST, rest)):
            rows = rows[:limit] if limit is not None else rows
            if len(rows):
                images = normalize(task_data.images01(rows), pre["mean"], pre["std"]).numpy().astype(np.float32)
                parts.append((name, images, task_data.labels[rows], rows))
        described.append(f"{source} ({len(task_data)} images)")
    if data is not None:
        images = folder_images(data, pre)
        labels = _folder_labels(data, manifest)
        rows = np.arange(len(images))
        if limit is not None:
            images, rows, labels = images[:limit], rows[:limit], None if labels is None else labels[:limit]
        parts.append((FOLDER, images, labels, rows))
        described.append(f"folder {data}")
    if not parts or sum(len(p[1]) for p in parts) == 0:
        raise UserError("no images to verify on")
    n_tasks = len(manifest["tasks"])
    label_parts = [p[2] if p[2] is not None else np.full((len(p[1]), n_tasks), -1, dtype=np.int64) for p in parts]
    return VerificationData(
        images=np.concatenate([p[1] for p in parts]),
        labels=np.concatenate(label_parts) if any(p[2] is not None for p in parts) else None,
        index=np.concatenate([p[3] for p in parts]),
        sets=np.concatenate([np.full(len(p[1]), p[0]) for p in parts]),
        description=" + ".join(described),
    )


def folder_images(root: Path, preprocessing: dict) -> np.ndarray:
    from dtconvert.quantize import folder_images as load

    return load(root, preprocessing)


def heldout_data(manifest: dict, data: Path | None, digits: bool, limit: int | None) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Preprocessed held-out images (or ``data``'s), labels of the first task(s) or None, and a description."""
    from dtconvert.quantize import dataset_images

    pre = manifest["device_input"]["preprocessing"]
    if data is not None:
        images = folder_images(data, pre)
        labels = _folder_labels(data, manifest)
        description = f"folder {data}"
    else:
        source = manifest["data"]["source"].get("kind")
        if digits and source != "digits":
            raise UserError(f"--digits: this model was trained on {source!r} data, not the bundled digits; pass --data DIR")
        try:
            images, labels = dataset_images(manifest["data"]["recipe"], manifest["data"]["heldout"], pre)
        except UserError as e:
            raise UserError(f"cannot read the held-out data the manifest names ({e}); pass --data DIR") from None
        description = f"{source} held-out split"
    if limit is not None:
        images = images[:limit]
        labels = None if labels is None else labels[:limit]
    if len(images) == 0:
        raise UserError("no held-out images to verify on")
    return images, labels, description


def _folder_labels(root: Path, manifest: dict) -> np.ndarray | None:
    """Labels of the first task when ``root`` has one sub-folder per label name, else None."""
    from dtconvert.data import image_files

    names = manifest["tasks"][0]["labels"]
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders or any(f not in names for f in folders):
        return None
    labels = [names.index(f.relative_to(root).parts[0]) for f in image_files(root)]
    column = np.full((len(labels), len(manifest["tasks"])), -1, dtype=np.int64)
    column[:, 0] = labels
    return column


# ---- runners ----------------------------------------------------------------------------------


def device_runners(export_dir: Path, entry: dict):
    """(runtime label, run function or None, why not) for every way this host can run an artifact."""
    path = export_dir / entry["path"]
    target = entry["target"]
    if target == "executorch":
        from dtconvert.targets import load_target

        return [("ExecuTorch XNNPACK", load_target("executorch").runner(path), None)]
    if target == "tflite":
        from dtconvert.targets.tflite import make_runner

        return [("LiteRT XNNPACK", make_runner(path), None), ("LiteRT reference kernels", make_runner(path, reference_kernels=True), None)]
    if target == "coreml":
        if platform.system() == "Darwin":
            import coremltools as ct

            runs = []
            for label, units in (("Core ML CPU", ct.ComputeUnit.CPU_ONLY), ("Core ML all units", ct.ComputeUnit.ALL)):
                model = ct.models.MLModel(str(path), compute_units=units)
                runs.append((label, lambda x, m=model: m.predict({"image": x.astype(np.float32)})["wire"], None))
            return runs
        from dtconvert.mil_reference import MILReference

        reference = MILReference(path)
        return [("MIL reference", lambda x: reference.run({"image": x})["wire"], None)]
    return []


def _load(path: Path, runtime: str, load):
    try:
        return load(path)
    except Exception as e:  # noqa: BLE001  the runtime raises anything on bytes it cannot load: reported as a broken export
        raise unloadable(path, runtime, e) from None


def _run_batched(run, images: np.ndarray) -> np.ndarray:
    # The device artifacts are exported for batch 1, as phones run them.
    return np.concatenate([run(images[i : i + 1]) for i in range(len(images))])


# ---- the verifier -----------------------------------------------------------------------------


def verify_export(
    export_dir: Path,
    data: Path | None = None,
    digits: bool = False,
    tolerance_file: Path | None = None,
    limit: int | None = None,
    log=print,
) -> Report:
    """Run every check on an export directory; never raises for a failed check, only for bad input."""
    import torch

    from dtconvert.quantize import quantize_wire
    from dtconvert.targets.torchscript import load_decoder

    start = time.perf_counter()
    export_dir = Path(export_dir)
    manifest = load_manifest(export_dir)
    tolerances = load_tolerances(tolerance_file)
    evaluation = verification_data(manifest, data, digits, limit)
    report = Report(str(export_dir), len(evaluation.images), evaluation.description, sets=evaluation.counts())
    precision = manifest["precision"]
    tasks = [t["name"] for t in manifest["tasks"]]
    scale, zero_point = manifest["wire"]["scale"], manifest["wire"]["zero_point"]

    # 1. Integrity: every byte is what the manifest says, before anything runs.
    if not _check_integrity(report, export_dir, manifest):
        report.seconds = time.perf_counter() - start
        return report

    by_target = {e["target"]: e for e in manifest["artifacts"]}
    if "reference" not in by_target or "torchscript" not in by_target:
        raise UserError(f"{export_dir}: the manifest lists no reference model or cloud decoder to verify against")
    reference = _load(export_dir / by_target["reference"]["path"], "TorchScript", load_decoder)
    decoder = _load(export_dir / by_target["torchscript"]["path"], "TorchScript", load_decoder)
    with torch.no_grad():
        outputs = reference(torch.from_numpy(evaluation.images))
    reference_wire = outputs[0].numpy()
    reference_logits = {t: o.numpy() for t, o in zip(tasks, outputs[1:], strict=True)}
    _check_preprocessing(report, export_dir, manifest, evaluation, reference_logits, tolerances.get("torchscript", precision))

    def decode(wire_float: np.ndarray) -> dict[str, np.ndarray]:
        q = torch.from_numpy(quantize_wire(wire_float, scale, zero_point))
        with torch.no_grad():
            logits = decoder(q, torch.tensor([scale], dtype=torch.float32), torch.tensor([zero_point], dtype=torch.int32))
        return {t: o.numpy() for t, o in zip(tasks, logits, strict=True)}

    end_to_end = EndToEnd(report, evaluation, tasks, reference_logits)

    # 2. The cloud decoder alone: the int8 wire of the fp32 encoder, decoded.
    cloud_name = by_target["torchscript"]["path"]
    report.metrics[cloud_name] = {
        "TorchScript": {
            "tasks": end_to_end.check(cloud_name, "TorchScript", decode(reference_wire), tolerances.get("torchscript", precision))
        }
    }
    log(f"✓ cloud decoder on {len(evaluation.images)} images")

    # 3. Each device artifact: structure, then every runtime this host has.
    for entry in (e for e in manifest["artifacts"] if e["part"] == "device"):
        name, target = entry["path"], entry["target"]
        from dtconvert.mil_reference import UnknownMILOp, UnsupportedMILOp

        try:
            _check_structure(report, export_dir, entry, tolerances.get(target, precision))
            runners = device_runners(export_dir, entry)
        except (UnknownMILOp, UnsupportedMILOp) as e:  # a valid ML program using an op the interpreter lacks: a failed check
            report.add(name, "-", "load", False, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
            continue
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001  bytes that match the manifest but no runtime can read (it raises anything): a broken export
            raise unloadable(export_dir / name, target, e) from None
        for runtime, run, _ in runners:
            bounds = tolerances.get(target, precision, runtime)
            try:
                wire = _run_batched(run, evaluation.images)
            except Exception as e:  # noqa: BLE001  whatever the runtime raises while running is a reported failed check
                report.add(name, runtime, "run", False, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
                continue
            if wire.shape != reference_wire.shape:
                report.add(
                    name,
                    runtime,
                    "wire",
                    False,
                    f"wire tensor of shape {list(wire.shape)}, the fp32 model's is {list(reference_wire.shape)}",
                )
                continue
            wire_numbers = _check_wire(report, name, runtime, wire, reference_wire, bounds)
            numbers = end_to_end.check(name, runtime, decode(wire), bounds)
            report.metrics.setdefault(name, {})[runtime] = {"wire": wire_numbers, "tasks": numbers}
            log(f"✓ {runtime} on {len(evaluation.images)} images")
    report.seconds = time.perf_counter() - start
    return report


def _check_integrity(report: Report, export_dir: Path, manifest: dict) -> bool:
    """Every file's sha256 (and the golden files') against the manifest; False when any differs."""
    intact = True
    for entry in manifest["artifacts"]:
        path = export_dir / entry["path"]
        if not path.exists():
            raise UserError(f"{path}: artifact listed in the manifest is missing")
        fresh = describe_file(export_dir, entry["path"])
        if fresh["sha256"] == entry["sha256"]:
            report.add(entry["path"], "-", "sha256", True, entry["sha256"][:16])
            continue
        intact = False
        changed = [f for f, h in fresh.get("files", {}).items() if entry.get("files", {}).get(f) != h]
        where = f"{entry['path']}/{changed[0]}" if changed else entry["path"]
        report.add(
            entry["path"],
            "-",
            "sha256",
            False,
            f"{where}: sha256 {fresh['sha256'][:16]}… does not match the manifest's {entry['sha256'][:16]}…",
        )
    golden = manifest.get("golden")
    if golden is not None:
        from dtconvert.checkpoint import sha256_file

        for name, digest in golden["files"].items():
            path = export_dir / golden["path"] / name
            ok = path.is_file() and sha256_file(path) == digest
            intact &= ok
            report.add(
                f"{golden['path']}/{name}",
                "-",
                "sha256",
                ok,
                digest[:16] if ok else f"{path}: missing or its sha256 does not match the manifest",
            )
    return intact


def _check_wire(report: Report, name: str, runtime: str, wire: np.ndarray, reference_wire: np.ndarray, bounds: dict) -> dict:
    numbers = {
        "max_abs": max_abs_error(wire, reference_wire),
        "cosine": cosine_similarity(wire, reference_wire),
        "sqnr_db": sqnr_db(wire, reference_wire),
    }
    bound, floor, sqnr_floor = bounds["wire_max_abs"], bounds["min_wire_cosine"], bounds["min_wire_sqnr_db"]
    wire_ok = (
        (bound is None or numbers["max_abs"] <= bound)
        and (floor is None or numbers["cosine"] >= floor)
        and (sqnr_floor is None or numbers["sqnr_db"] >= sqnr_floor)
    )
    report.add(
        name,
        runtime,
        "wire",
        wire_ok,
        f"max abs {numbers['max_abs']:.3g}"
        + (f" (bound ≤ {bound})" if bound is not None else "")
        + f", cosine {numbers['cosine']:.5f}"
        + (f" (bound ≥ {floor})" if floor is not None else "")
        + f", SQNR {numbers['sqnr_db']:.1f} dB"
        + (f" (bound ≥ {sqnr_floor} dB)" if sqnr_floor is not None else "")
        + f", n = {len(wire)}",
        numbers={**{k: round(v, 6) for k, v in numbers.items()}, "n": len(wire)},
    )
    return {**{k: round(v, 6) for k, v in numbers.items()}, "n": len(wire)}


class EndToEnd:
    """The end-to-end checks of one artifact × runtime against the fp32 model, per task (see
    :mod:`dtconvert.gate` for how each decides)."""

    def __init__(self, report: Report, evaluation: VerificationData, tasks: list[str], reference_logits: dict) -> None:
        self.report, self.evaluation, self.tasks, self.reference_logits = report, evaluation, tasks, reference_logits

    def check(self, artifact: str, runtime: str, logits: dict, bounds: dict) -> dict:
        numbers = {}
        for t, task in enumerate(self.tasks):
            got, want = logits[task], self.reference_logits[task]
            if got.shape != want.shape:
                self.report.add(
                    artifact, runtime, f"logits [{task}]", False, f"shape {list(got.shape)}, the fp32 model's is {list(want.shape)}"
                )
                numbers[task] = {"logits_shape": list(got.shape)}
                continue
            numbers[task] = {
                **self._agreement(artifact, runtime, task, got, want, bounds),
                **self._fidelity(artifact, runtime, task, got, want, bounds),
                **self._collapse(artifact, runtime, task, got, want),
                **self._accuracy(artifact, runtime, task, t, got, want, bounds),
            }
        return numbers

    def _agreement(self, artifact: str, runtime: str, task: str, got: np.ndarray, want: np.ndarray, bounds: dict) -> dict:
        """Flips against the fp32 model on every set, each tested exactly; the check fails when
        any set's flip rate is shown to exceed the bound (Šidák-corrected over the sets)."""
        sets = self.evaluation.names()
        alpha = bounds["alpha"]
        per_set_alpha = gate.sidak_alpha(alpha, len(sets))
        max_rate = 1.0 - bounds["min_top1_agreement"]
        flipped = got.argmax(-1) != want.argmax(-1)
        tests = {
            s: gate.flip_test(
                int(flipped[self.evaluation.sets == s].sum()), int(np.sum(self.evaluation.sets == s)), max_rate, per_set_alpha
            )
            for s in sets
        }
        noise = gate.margin_noise(got, want)
        listed = gate.disagreements(got, want, self.evaluation.index, self.evaluation.sets, noise)
        near_ties = sum(d["near_tie"] for d in listed)
        passed = all(test.passed for test in tests.values())
        detail = "; ".join(
            f"{s} {test.flips}/{test.n} flips ({1 - test.rate:.2%} agree; {1 - per_set_alpha:.1%} CP [{test.lower:.2%}, {test.upper:.2%}], "
            f"p = {test.p_value:.3g})"
            for s, test in tests.items()
        )
        detail += f"; {near_ties} of {len(listed)} near-ties; fails when a flip rate > {max_rate:.2%} is shown at α = {alpha}"
        self.report.add(
            artifact,
            runtime,
            f"top-1 agreement [{task}]",
            passed,
            detail,
            numbers={"sets": {s: test.to_json() for s, test in tests.items()}, "alpha": alpha},
        )
        primary = tests.get(HELDOUT) or next(iter(tests.values()))
        return {
            "top1_agreement": round(1.0 - primary.rate, 6),
            "n": primary.n,
            "agreement": {s: test.to_json() for s, test in tests.items()},
            "margin_noise": round(noise, 6),
            "disagreements": listed,
        }

    def _fidelity(self, artifact: str, runtime: str, task: str, got: np.ndarray, want: np.ndarray, bounds: dict) -> dict:
        """Logit SQNR and the softmax's mean KL divergence on every image: n-robust numbers."""
        sqnr, kl = gate.logit_sqnr_db(got, want), gate.softmax_kl(got, want)
        floor, ceiling = bounds["min_logit_sqnr_db"], bounds["max_softmax_kl"]
        passed = (floor is None or sqnr >= floor) and (ceiling is None or kl <= ceiling)
        per_set = {
            s: {
                "logit_sqnr_db": round(gate.logit_sqnr_db(got[m], want[m]), 3),
                "softmax_kl": float(f"{gate.softmax_kl(got[m], want[m]):.4g}"),
            }
            for s in self.evaluation.names()
            for m in [self.evaluation.sets == s]
        }
        self.report.add(
            artifact,
            runtime,
            f"logit fidelity [{task}]",
            passed,
            f"logit SQNR {sqnr:.1f} dB"
            + (f" (bound ≥ {floor} dB)" if floor is not None else "")
            + f", softmax KL {kl:.2e}"
            + (f" (bound ≤ {ceiling:g})" if ceiling is not None else "")
            + f", n = {len(got)}",
            numbers={"logit_sqnr_db": round(sqnr, 3), "softmax_kl": float(f"{kl:.4g}"), "n": len(got)},
        )
        return {"logit_sqnr_db": round(sqnr, 3), "softmax_kl": float(f"{kl:.4g}"), "fidelity_by_set": per_set}

    def _collapse(self, artifact: str, runtime: str, task: str, got: np.ndarray, want: np.ndarray) -> dict:
        got_classes, want_classes = len(np.unique(got.argmax(-1))), len(np.unique(want.argmax(-1)))
        collapsed = got_classes == 1 and want_classes > 1
        self.report.add(
            artifact, runtime, f"no collapse [{task}]", not collapsed, f"{got_classes} distinct predictions (fp32 model: {want_classes})"
        )
        return {}

    def _accuracy(self, artifact: str, runtime: str, task: str, t: int, got: np.ndarray, want: np.ndarray, bounds: dict) -> dict:
        """Accuracy change on labelled held-out images (labelled ``--data`` images when there are
        none), decided by the exact McNemar test."""
        labels = self.evaluation.labels
        if labels is None:
            return {}
        labelled = labels[:, t] >= 0
        heldout = labelled & (self.evaluation.sets == HELDOUT)
        rows = heldout if heldout.any() else labelled & (self.evaluation.sets == FOLDER)
        if not rows.any():
            return {}
        truth = labels[rows, t]
        fp32_right, artifact_right = want[rows].argmax(-1) == truth, got[rows].argmax(-1) == truth
        test = gate.mcnemar_test(fp32_right, artifact_right, bounds["max_accuracy_drop"], bounds["alpha"])
        got_acc, want_acc = float(artifact_right.mean()), float(fp32_right.mean())
        self.report.add(
            artifact,
            runtime,
            f"accuracy drop [{task}]",
            test.passed,
            f"{test.drop_points:+.2f} points ({want_acc:.2%} → {got_acc:.2%}, n = {test.n}: "
            f"{test.worse} newly wrong, {test.better} newly right; McNemar p = {test.p_value:.3g}); "
            f"fails when significantly worse at α = {bounds['alpha']} and the drop > {bounds['max_accuracy_drop']}",
            numbers=test.to_json(),
        )
        return {
            "accuracy": round(got_acc, 6),
            "fp32_accuracy": round(want_acc, 6),
            "accuracy_change_points": round(-test.drop_points, 4),
            "accuracy_n": test.n,
            "mcnemar": test.to_json(),
        }


def _check_preprocessing(
    report: Report, export_dir: Path, manifest: dict, evaluation: VerificationData, reference_logits: dict, bounds: dict
) -> None:
    """The manifest's preprocessing is the one the model was trained with: the golden raw images
    preprocessed as the manifest says reproduce the golden inputs, and the fp32 reference on the
    held-out split reproduces the held-out accuracy the checkpoint recorded. (Both sides of every
    other check use the manifest's preprocessing, so a wrong mean or std would pass them all.)"""
    import torch

    from dtconvert.data import normalize, resize_unit_images

    problems, measured = [], []
    pre = manifest["device_input"]["preprocessing"]
    golden = manifest.get("golden") or {}
    raw_path = export_dir / golden.get("path", "golden") / "image_uint8.npy"
    if "image_uint8.npy" in golden.get("files", {}) and raw_path.is_file():
        try:  # the export is untrusted input: a golden file that is no plain numeric array is a failed check
            raw = np.load(raw_path, allow_pickle=False)
            inputs = np.load(export_dir / golden["path"] / "input.npy", allow_pickle=False)
            unit = torch.from_numpy(raw.astype(np.float32) / 255.0).reshape(len(raw), -1, *raw.shape[-2:])
            ours = normalize(resize_unit_images(unit, pre["size"][0], pre["resize"]), pre["mean"], pre["std"]).numpy()
            error = float(np.abs(ours - inputs).max()) if ours.shape == inputs.shape else float("inf")
        except (ValueError, TypeError, RuntimeError, OSError):
            error = float("inf")
        measured.append(f"golden raw images → manifest preprocessing: max abs {error:.2g} from golden/input.npy (bound ≤ 1e-5)")
        if not error <= 1e-5:
            problems.append(measured[-1])
    recorded = manifest["model"].get("heldout_metrics") or {}
    heldout = evaluation.sets == HELDOUT
    if evaluation.labels is not None and heldout.any():
        for t, task in enumerate(manifest["tasks"]):
            name = task["name"]
            if (
                name not in recorded
                or not (evaluation.labels[heldout, t] >= 0).all()
                or int(heldout.sum()) != len(manifest["data"]["heldout"])
            ):
                continue
            got = float(np.mean(reference_logits[name][heldout].argmax(-1) == evaluation.labels[heldout, t]))
            change = 100.0 * (got - recorded[name])
            measured.append(f"fp32 held-out accuracy [{name}] {got:.2%} (recorded at training {recorded[name]:.2%})")
            if abs(change) > bounds["max_accuracy_drop"]:
                problems.append(f"{measured[-1]}: {change:+.2f} points (bound ± {bounds['max_accuracy_drop']})")
    if measured:
        report.add("manifest", "-", "preprocessing", not problems, "; ".join(problems or measured))


def _check_structure(report: Report, export_dir: Path, entry: dict, bounds: dict) -> None:
    name, path = entry["path"], export_dir / entry["path"]
    if entry["target"] in ("executorch", "tflite"):
        _check_delegation(report, export_dir, entry, bounds)
    if entry["target"] == "tflite":
        from dtconvert.targets.tflite import io_details, non_builtin_ops, tflite_ops

        flex = non_builtin_ops(tflite_ops(path))
        io = io_details(path)
        mismatch = [k for k in ("inputs", "outputs") if io[k] != entry.get(k)]
        problems = ([f"non-builtin ops {flex}"] if flex else []) + [
            f"{k} {io[k]} differ from the manifest's {entry.get(k)}" for k in mismatch
        ]
        report.add(name, "-", "structure", not problems, "; ".join(problems) or "builtin ops only; I/O and quantization as in the manifest")
    elif entry["target"] == "coreml":
        from dtconvert.mil_reference import check_ops, io_signature

        unknown = check_ops(path)
        io = io_signature(path)
        declared = {k: [{f: t[f] for f in ("name", "shape", "dtype")} for t in entry.get(k, [])] for k in ("inputs", "outputs")}
        problems = ([f"ops outside the MIL reference allow-list: {unknown}"] if unknown else []) + (
            [f"I/O {io} differs from the manifest's {declared}"] if io != declared else []
        )
        report.add(name, "-", "structure", not problems, "; ".join(problems) or "all ops in the allow-list; I/O as in the manifest")


def measure_delegation(path: Path, target: str) -> dict:
    """How the runtime's XNNPACK delegate takes the artifact, read from the artifact itself:
    ``{"partitions": n, "ops_outside_delegate": {op: count}}`` (a .pte's partitions are its delegate calls)."""
    if target == "executorch":
        from dtconvert.targets.executorch import pte_kernel_ops

        kernels, delegates = pte_kernel_ops(path)
        return {"partitions": delegates, "ops_outside_delegate": kernels}
    from dtconvert.targets.tflite import delegation

    measured = delegation(path)
    return {"partitions": measured["partitions"], "ops_outside_delegate": measured["ops_outside_delegate"]}


def _check_delegation(report: Report, export_dir: Path, entry: dict, bounds: dict) -> None:
    """The delegate structure, measured now, against the tolerance table and against what the manifest claims."""
    measured = measure_delegation(export_dir / entry["path"], entry["target"])
    partitions, outside = measured["partitions"], measured["ops_outside_delegate"]
    n_outside = sum(outside.values())
    unit = "delegate calls" if entry["target"] == "executorch" else "partitions"
    max_partitions, max_outside = bounds["max_delegate_partitions"], bounds["max_ops_outside_delegate"]
    problems = []
    if partitions < 1:
        problems.append("nothing runs in the XNNPACK delegate")
    if max_partitions is not None and partitions > max_partitions:
        problems.append(f"{partitions} XNNPACK {unit} (bound ≤ {max_partitions})")
    if max_outside is not None and n_outside > max_outside:
        problems.append(f"{n_outside} ops outside the delegate (bound ≤ {max_outside}): {outside}")
    recorded = entry.get("delegation")
    if recorded is not None:
        claimed = recorded.get("delegate_calls", recorded.get("partitions"))
        if claimed != partitions or recorded.get("ops_outside_delegate") != outside:
            problems.append(
                f"the manifest records {claimed} {unit} and {recorded.get('ops_outside_delegate')} outside, "
                f"the artifact has {partitions} and {outside or {}}"
            )
    bound_text = "; ".join(
        f"{k.removeprefix('max_').replace('_', ' ')} ≤ {v}"
        for k, v in (("max_delegate_partitions", max_partitions), ("max_ops_outside_delegate", max_outside))
        if v is not None
    )
    summary = f"{partitions} XNNPACK {unit}, {n_outside} ops outside" + (f" ({bound_text})" if bound_text else " (reported, no bound)")
    report.add(entry["path"], "-", "delegation", not problems, "; ".join(problems) if problems else summary)
    report.structure[entry["path"]] = {"delegation": {"partitions": partitions, "ops_outside_delegate": outside}}


def write_reports(report: Report, json_path: Path | None, junit_path: Path | None) -> None:
    from dtconvert.checkpoint import atomic_write

    if json_path is not None:
        atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(report.to_json(), indent=2) + "\n"))
    if junit_path is not None:
        atomic_write(junit_path, lambda tmp: tmp.write_text(report.to_junit() + "\n"))
