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

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dtconvert.errors import UserError, unloadable
from dtconvert.evaluation import verification_data
from dtconvert.manifest import load_manifest
from dtconvert.targets import RUNTIMES, Run, UnsupportedByRuntime, load_target, looped
from dtconvert.tolerances import bounds_row, load_tolerances
from dtconvert.verify.arm64 import Arm64Checks
from dtconvert.verify.checks import check_integrity, check_kept_float, check_preprocessing, check_structure, check_wire
from dtconvert.verify.end_to_end import EndToEnd
from dtconvert.verify.results import Check, Report, write_reports

__all__ = ["Check", "Report", "device_runners", "parse_arch", "verify_export", "write_reports"]


def parse_arch(arch: str | None, cpu: str) -> list[str] | None:
    """``--arch``/``--cpu``: the arm64 CPU profiles to verify on, or None for this machine only."""
    from dtconvert.targets.arm64 import parse_profiles

    if arch is None:
        return None
    if arch != "arm64":
        raise UserError(f"--arch {arch!r}: the one other architecture verify runs is arm64 (under QEMU)")
    return parse_profiles(cpu)


def device_runners(export_dir: Path, entry: dict) -> list[tuple[str, Run]]:
    """(runtime, run function) for every way this host can run an artifact, as its target says."""
    target = load_target(entry["target"])
    path = export_dir / entry["path"]
    return [(runtime, target.runner(path, runtime)) for runtime in target.runtimes()]


def _load(path: Path, runtime: str, load):
    try:
        return load(path)
    except Exception as e:  # noqa: BLE001  the runtime raises anything on bytes it cannot load: reported as a broken export
        raise unloadable(path, runtime, e) from None


def verify_export(
    export_dir: Path,
    data: Path | None = None,
    digits: bool = False,
    tolerance_file: Path | None = None,
    limit: int | None = None,
    log=print,
    explain: bool | None = None,
    arm64: list[str] | None = None,
) -> Report:
    """Run every check on an export directory; never raises for a failed check, only for bad input.

    ``explain``: also measure every point inside each device artifact (``verify --explain``);
    None (the default) does so when a check failed. ``arm64``: also run the ExecuTorch and
    LiteRT artifacts on arm64 under QEMU, once per CPU profile named (``verify --arch arm64``)."""
    start = time.perf_counter()
    export_dir = Path(export_dir)
    manifest = load_manifest(export_dir)
    evaluation = verification_data(manifest, data, digits, limit)
    report = Report(str(export_dir), len(evaluation.images), evaluation.description, sets=evaluation.counts())
    # 1. Integrity: every byte is what the manifest says, before anything runs.
    checks = Arm64Checks(arm64, log) if arm64 else None  # builds the root first: an unusable machine is one line, before any work
    if check_integrity(report, export_dir, manifest):
        run = _Verification(export_dir, manifest, load_tolerances(tolerance_file), evaluation, report, checks)
        run.cloud_decoder()  # 2. the cloud decoder alone: the int8 wire of the fp32 encoder, decoded
        log(f"✓ cloud decoder on {len(evaluation.images)} images")
        for entry in (e for e in manifest["artifacts"] if e["part"] == "device"):
            for runtime in run.device_artifact(entry):  # 3. each device artifact in every runtime this host has
                log(f"✓ {runtime} on {len(evaluation.images)} images")
        if explain or (explain is None and not report.passed):
            report.explanation = _explain(export_dir, manifest, evaluation.images, tolerance_file, log, asked=bool(explain))
    report.seconds = time.perf_counter() - start
    return report


def _explain(export_dir: Path, manifest: dict, images: np.ndarray, tolerance_file: Path | None, log, asked: bool) -> dict | None:
    """The explanation; asked for, its errors are the user's; automatic (a failed gate), a failure
    to explain is one logged line and never turns the gate's verdict into another exit status."""
    from dtconvert.verify.explain import explain_export

    try:
        return explain_export(export_dir, manifest, images, load_tolerances(tolerance_file), log=log).to_json()
    except Exception as e:  # automatic explanation: report it, keep the gate's own result
        if asked:
            raise
        log(f"✗ could not explain the failure: {_first_line(e)} (run 'dtconvert verify {export_dir} --explain')")
        return None


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


class _Verification:
    """The fp32 reference's outputs on every image, the cloud decoder, and the checks of each artifact."""

    def __init__(self, export_dir: Path, manifest: dict, tolerances, evaluation, report: Report, arm64=None) -> None:
        import torch

        from dtconvert.targets.torchscript import load_decoder

        self.export_dir, self.manifest, self.tolerances, self.evaluation, self.report = export_dir, manifest, tolerances, evaluation, report
        self.arm64 = arm64  # verify --arch arm64: an Arm64Checks
        self.precision = manifest["precision"]
        self.tasks = [t["name"] for t in manifest["tasks"]]
        by_target = {e["target"]: e for e in manifest["artifacts"]}
        if "reference" not in by_target or "torchscript" not in by_target:
            raise UserError(f"{export_dir}: the manifest lists no reference model or cloud decoder to verify against")
        self.cloud_name = by_target["torchscript"]["path"]
        reference = _load(export_dir / by_target["reference"]["path"], "TorchScript", load_decoder)
        self.reference_state = reference.state_dict()
        self.decoder = _load(export_dir / self.cloud_name, "TorchScript", load_decoder)
        with torch.no_grad():
            outputs = reference(torch.from_numpy(evaluation.images))
        self.reference_wire = outputs[0].numpy()
        reference_logits = {t: o.numpy() for t, o in zip(self.tasks, outputs[1:], strict=True)}
        check_preprocessing(report, export_dir, manifest, evaluation, reference_logits, tolerances.get("torchscript", self.precision))
        self.end_to_end = EndToEnd(report, evaluation, self.tasks, reference_logits)

    def decode(self, wire_float: np.ndarray) -> dict[str, np.ndarray]:
        """The wire as the device sends it (int8, the manifest's scale and zero point) through the cloud decoder."""
        import torch

        from dtconvert.wire import quantize_wire

        scale, zero_point = self.manifest["wire"]["scale"], self.manifest["wire"]["zero_point"]
        q = torch.from_numpy(quantize_wire(wire_float, scale, zero_point))
        with torch.no_grad():
            logits = self.decoder(q, torch.tensor([scale], dtype=torch.float32), torch.tensor([zero_point], dtype=torch.int32))
        return {t: o.numpy() for t, o in zip(self.tasks, logits, strict=True)}

    def cloud_decoder(self) -> None:
        bounds = self.tolerances.get("torchscript", self.precision)
        numbers = self.end_to_end.check(self.cloud_name, "TorchScript", self.decode(self.reference_wire), bounds)
        self.report.metrics[self.cloud_name] = {"TorchScript": {"tasks": numbers}}

    def device_artifact(self, entry: dict) -> Iterator[str]:
        """Structure, then every runtime this host has; yields each runtime once checked."""
        name, target, report = entry["path"], entry["target"], self.report
        try:
            check_structure(report, self.export_dir, entry, self.tolerances.get(target, bounds_row(entry, self.precision)))
            check_kept_float(report, self.export_dir, entry, self.reference_state)
            runners = device_runners(self.export_dir, entry)
        except UnsupportedByRuntime as e:
            report.add(name, "-", "load", False, str(e))
            return
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001  bytes that match the manifest but no runtime can read (it raises anything): a broken export
            raise unloadable(self.export_dir / name, target, e) from None
        host: dict[str, np.ndarray] = {}
        for key, run in runners:
            wire = self.check_runtime(entry, key, RUNTIMES[key], looped(run))  # device artifacts take batch 1, as phones run them
            if wire is not None:
                host[key] = wire
                yield RUNTIMES[key]
        if self.arm64 is not None:
            yield from self.arm64.check(self, entry, host)

    def check_runtime(self, entry: dict, key: str, runtime: str, run) -> np.ndarray | None:
        """Run every image through ``run`` and check the wire and the end-to-end results; the wire, or
        None when it could not be had. ``key``: the runtime whose bounds apply; ``runtime``: its label here."""
        name, report = entry["path"], self.report
        bounds = self.tolerances.get(entry["target"], bounds_row(entry, self.precision), key)
        try:
            wire = run(self.evaluation.images)
        except Exception as e:  # noqa: BLE001  whatever the runtime raises while running is a reported failed check
            report.add(name, runtime, "run", False, _first_line(e))
            return None
        if wire.shape != self.reference_wire.shape:
            detail = f"wire tensor of shape {list(wire.shape)}, the fp32 model's is {list(self.reference_wire.shape)}"
            report.add(name, runtime, "wire", False, detail)
            return None
        wire_numbers = check_wire(report, name, runtime, wire, self.reference_wire, bounds)
        numbers = self.end_to_end.check(name, runtime, self.decode(wire), bounds)
        report.metrics.setdefault(name, {})[runtime] = {"wire": wire_numbers, "tasks": numbers}
        return wire
