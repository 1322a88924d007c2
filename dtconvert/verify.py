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

from dtconvert.errors import UserError, unloadable
from dtconvert.manifest import describe_file, load_manifest
from dtconvert.metrics import accuracy, cosine_similarity, max_abs_error, sqnr_db, top1_agreement
from dtconvert.tolerances import load_tolerances


@dataclass
class Check:
    artifact: str  # the artifact's path in the manifest, or "manifest"
    runtime: str  # what executed it ("ExecuTorch XNNPACK", "MIL reference", ...) or "-" for static checks
    check: str  # "sha256", "structure", "wire", "top-1 agreement [digit]", ...
    passed: bool
    detail: str  # the measured number next to its bound, or what is wrong


@dataclass
class Report:
    export_dir: str
    samples: int
    data: str
    checks: list[Check] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)  # artifact → runtime → numbers
    structure: dict = field(default_factory=dict)  # artifact → {"delegation": {...}}, measured from the artifact
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def add(self, artifact: str, runtime: str, check: str, passed: bool, detail: str) -> None:
        self.checks.append(Check(artifact, runtime, check, bool(passed), detail))

    def to_json(self) -> dict:
        return {
            "export_dir": self.export_dir,
            "passed": self.passed,
            "samples": self.samples,
            "data": self.data,
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
            "metrics": self.metrics,
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
            if not c.passed:
                ElementTree.SubElement(case, "failure", message=c.detail).text = c.detail
            else:
                ElementTree.SubElement(case, "system-out").text = c.detail
        root = ElementTree.Element("testsuites")
        root.append(suite)
        ElementTree.indent(root)
        return ElementTree.tostring(root, encoding="unicode", xml_declaration=True)


# ---- data ---------------------------------------------------------------------------------


def heldout_data(manifest: dict, data: Path | None, digits: bool, limit: int | None) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Preprocessed images, labels of the first task(s) or None, and a description."""
    from dtconvert.quantize import dataset_images, folder_images

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
    images, labels, description = heldout_data(manifest, data, digits, limit)
    report = Report(str(export_dir), len(images), description)
    precision = manifest["precision"]
    tasks = [t["name"] for t in manifest["tasks"]]
    scale, zero_point = manifest["wire"]["scale"], manifest["wire"]["zero_point"]

    # 1. Integrity: every byte is what the manifest says, before anything runs.
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
    if not intact:
        report.seconds = time.perf_counter() - start
        return report

    by_target = {e["target"]: e for e in manifest["artifacts"]}
    if "reference" not in by_target or "torchscript" not in by_target:
        raise UserError(f"{export_dir}: the manifest lists no reference model or cloud decoder to verify against")
    reference = _load(export_dir / by_target["reference"]["path"], "TorchScript", load_decoder)
    decoder = _load(export_dir / by_target["torchscript"]["path"], "TorchScript", load_decoder)
    with torch.no_grad():
        outputs = reference(torch.from_numpy(images))
    reference_wire = outputs[0].numpy()
    reference_logits = {t: o.numpy() for t, o in zip(tasks, outputs[1:], strict=True)}

    def decode(wire_float: np.ndarray) -> dict[str, np.ndarray]:
        q = torch.from_numpy(quantize_wire(wire_float, scale, zero_point))
        with torch.no_grad():
            logits = decoder(q, torch.tensor([scale], dtype=torch.float32), torch.tensor([zero_point], dtype=torch.int32))
        return {t: o.numpy() for t, o in zip(tasks, logits, strict=True)}

    def end_to_end(artifact: str, runtime: str, logits: dict, bounds: dict) -> dict:
        numbers = {}
        for t, task in enumerate(tasks):
            agreement = top1_agreement(logits[task], reference_logits[task])
            numbers[task] = {"top1_agreement": round(agreement, 6)}
            report.add(
                artifact,
                runtime,
                f"top-1 agreement [{task}]",
                agreement >= bounds["min_top1_agreement"],
                f"{agreement:.4f} (bound ≥ {bounds['min_top1_agreement']})",
            )
            got_classes, want_classes = len(np.unique(logits[task].argmax(-1))), len(np.unique(reference_logits[task].argmax(-1)))
            collapsed = got_classes == 1 and want_classes > 1
            report.add(
                artifact,
                runtime,
                f"no collapse [{task}]",
                not collapsed,
                f"{got_classes} distinct predictions (fp32 model: {want_classes})",
            )
            if labels is not None and (labels[:, t] >= 0).all():
                got, want = accuracy(logits[task], labels[:, t]), accuracy(reference_logits[task], labels[:, t])
                drop = 100.0 * (want - got)
                numbers[task].update(accuracy=round(got, 6), fp32_accuracy=round(want, 6), accuracy_change_points=round(-drop, 4))
                report.add(
                    artifact,
                    runtime,
                    f"accuracy drop [{task}]",
                    drop <= bounds["max_accuracy_drop"],
                    f"{drop:+.2f} points ({want:.2%} → {got:.2%}; bound ≤ {bounds['max_accuracy_drop']})",
                )
        return numbers

    # 2. The cloud decoder alone: the int8 wire of the fp32 encoder, decoded.
    cloud_name = by_target["torchscript"]["path"]
    report.metrics[cloud_name] = {
        "TorchScript": {"tasks": end_to_end(cloud_name, "TorchScript", decode(reference_wire), tolerances.get("torchscript", precision))}
    }
    log(f"✓ cloud decoder on {len(images)} images")

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
                wire = _run_batched(run, images)
            except Exception as e:  # noqa: BLE001  whatever the runtime raises while running is a reported failed check
                report.add(name, runtime, "run", False, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
                continue
            wire_numbers = {
                "max_abs": max_abs_error(wire, reference_wire),
                "cosine": cosine_similarity(wire, reference_wire),
                "sqnr_db": sqnr_db(wire, reference_wire),
            }
            bound, floor, sqnr_floor = bounds["wire_max_abs"], bounds["min_wire_cosine"], bounds["min_wire_sqnr_db"]
            wire_ok = (
                (bound is None or wire_numbers["max_abs"] <= bound)
                and (floor is None or wire_numbers["cosine"] >= floor)
                and (sqnr_floor is None or wire_numbers["sqnr_db"] >= sqnr_floor)
            )
            report.add(
                name,
                runtime,
                "wire",
                wire_ok,
                f"max abs {wire_numbers['max_abs']:.3g}"
                + (f" (bound ≤ {bound})" if bound is not None else "")
                + f", cosine {wire_numbers['cosine']:.5f}"
                + (f" (bound ≥ {floor})" if floor is not None else "")
                + f", SQNR {wire_numbers['sqnr_db']:.1f} dB"
                + (f" (bound ≥ {sqnr_floor} dB)" if sqnr_floor is not None else ""),
            )
            numbers = end_to_end(name, runtime, decode(wire), bounds)
            report.metrics.setdefault(name, {})[runtime] = {"wire": {k: round(v, 6) for k, v in wire_numbers.items()}, "tasks": numbers}
            log(f"✓ {runtime} on {len(images)} images")
    report.seconds = time.perf_counter() - start
    return report


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
