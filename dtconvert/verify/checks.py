"""verify's checks of one artifact that do not decode: integrity, wire fidelity, preprocessing, structure, delegation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dtconvert.errors import UserError
from dtconvert.evaluation import HELDOUT, VerificationData
from dtconvert.manifest import describe_file
from dtconvert.metrics import cosine_similarity, max_abs_error, sqnr_db
from dtconvert.targets import load_target, measure_delegation
from dtconvert.verify.results import Report


def check_integrity(report: Report, export_dir: Path, manifest: dict) -> bool:
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


def check_wire(report: Report, name: str, runtime: str, wire: np.ndarray, reference_wire: np.ndarray, bounds: dict) -> dict:
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


def check_preprocessing(
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


def check_structure(report: Report, export_dir: Path, entry: dict, bounds: dict) -> None:
    """The artifact's shape as its target reads it (delegation, ops, I/O) against the bounds and the manifest."""
    target = load_target(entry["target"])
    if hasattr(target, "delegation"):
        check_delegation(report, export_dir, entry, bounds)
    if hasattr(target, "structure"):
        problems, fine = target.structure(export_dir / entry["path"], entry)
        report.add(entry["path"], "-", "structure", not problems, "; ".join(problems) or fine)


def check_delegation(report: Report, export_dir: Path, entry: dict, bounds: dict) -> None:
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


def check_kept_float(report: Report, export_dir: Path, entry: dict, reference_state: dict) -> None:
    """``--keep-float``: each kept layer's fp32 weights are in the artifact's bytes, as float.

    Read from the artifact itself: the weights of the export's fp32 reference, in every layout and
    float width a runtime stores them (float32 in a .pte's XNNPACK blob and in a .tflite; float16
    in a Core ML program computing in float16; conv weights also channels-last), must occur
    verbatim. An int8 layer stores none of these."""
    kept = entry.get("keep_float")
    if not kept:
        return
    path = export_dir / entry["path"]
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    blob = b"".join(f.read_bytes() for f in files)
    missing = []
    for name in kept["modules"]:
        weight = reference_state.get(f"encoder.{name}.weight")
        if weight is None:
            missing.append(f"{name} (not in the reference model)")
            continue
        w = weight.detach().numpy()
        forms = [w, w.transpose(0, 2, 3, 1)] if w.ndim == 4 else [w]
        if not any(np.ascontiguousarray(f, dtype=dtype).tobytes() in blob for f in forms for dtype in (np.float32, np.float16)):
            missing.append(name)
    detail = (
        f"no float weights of {', '.join(missing)} in the artifact"
        if missing
        else f"{len(kept['modules'])} layers float as the manifest records ({', '.join(kept['patterns'])})"
    )
    report.add(entry["path"], "-", "kept float", not missing, detail)
