"""``dtconvert export``: checkpoint → int8 device artifacts + TorchScript cloud decoder + manifest.

One straight pipeline: load the checkpoint → split at encode()/decode() → calibrate the wire
tensor's int8 parameters → export each device target (each quantizes by its own scheme for the
precision, see ``dtconvert/targets/``) → export the cloud decoder and its Triton repository →
write the manifest → verify → move the directory into place.

Everything is written into a temporary directory beside ``--out`` and renamed onto it only when
every requested target succeeded, so a failure leaves a previous export untouched. The
converters' own chatter goes to ``export.log`` (kept in the export, or beside ``--out`` as
``<out>.export-error.log`` when the export fails).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from rich.console import Console

from dtconvert import __version__
from dtconvert.checkpoint import build_model, load_checkpoint, replace_dir, sha256_file
from dtconvert.data import calibration_images
from dtconvert.errors import UserError
from dtconvert.manifest import SCHEMA_VERSION, describe_file, write_manifest
from dtconvert.output import logged_fds, progress_console
from dtconvert.qat import check_cloud_kept
from dtconvert.rewrite import check_keep_float, kept_modules
from dtconvert.targets import (
    DEVICE_TARGETS,
    INPUT_NAME,
    OUTPUT_NAME,
    PRECISIONS,
    ExportJob,
    artifact_name,
    load_target,
)
from dtconvert.targets.torchscript import cloud_identity, export_decoder, export_reference, load_decoder
from dtconvert.triton.repository import write_triton_repository
from dtconvert.wire import wire_qparams

TOOLS = ("torch", "executorch", "coremltools", "tensorflow", "onnx", "onnxruntime", "onnx2tf", "ai-edge-litert")


class ExportFailed(Exception):
    """A target failed; the message is one line, the log file has the rest."""

    def __init__(self, message: str, log: Path | None) -> None:
        super().__init__(message)
        self.log = log


def parse_targets(target: str) -> list[str]:
    names = list(DEVICE_TARGETS) if target == "all" else [t.strip() for t in target.split(",") if t.strip()]
    unknown = [t for t in names if t not in DEVICE_TARGETS]
    if unknown or not names:
        raise UserError(
            f"--target {target!r}: unknown target {unknown[0] if unknown else ''!r}; choose from {', '.join(DEVICE_TARGETS)} or all"
        )
    return names


def default_out(checkpoint: Path) -> Path:
    return Path("export") / checkpoint.stem


@dataclass
class _Stages:
    """Prints one line per finished stage; converters' stdout/stderr go to the log file."""

    console: Console
    log_path: Path

    @contextlib.contextmanager
    def stage(self, label: str):
        start = time.perf_counter()
        with self.console.status(f"{label}…"), logged_fds(self.log_path, label):
            yield
        self.console.print(f"[green]✓[/] {label} [dim]({time.perf_counter() - start:.1f} s)[/]", highlight=False)


def _tool_versions() -> dict[str, str]:
    versions = {"dtconvert": __version__, "python": sys.version.split()[0]}
    for name in TOOLS:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions


def run_export(
    checkpoint: Path,
    targets: list[str],
    precision: str = "int8",
    calib: str | None = None,
    out: Path | None = None,
    console: Console | None = None,
    verify: bool = True,
    keep_float: tuple[str, ...] = (),
    arm64: list[str] | None = None,
) -> tuple[Path, dict]:
    """Export ``checkpoint`` for ``targets``; return the export directory and its manifest.

    ``keep_float``: module names or globs of the device encoder (``layers.1.ffn``) that stay float
    on every target; an int8 precision only.

    With ``verify`` (the default) ``dtconvert verify`` runs on the finished export before it is
    moved into place, and its results are recorded in the manifest's ``verification``; ``arm64``
    (CPU profiles) verifies on emulated arm64 too, and the manifest records those rows and profiles."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    out = Path(out) if out is not None else default_out(checkpoint)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out exists and is not a directory")
    # Open the terminal before any redirection so progress still reaches the user.
    console = console or progress_console()

    # 1. Load and split (the split is the model's own encode()/decode() boundary).
    ckpt = load_checkpoint(checkpoint)
    check_cloud_kept(ckpt, checkpoint)
    model = build_model(ckpt, checkpoint)
    model.encoder.eval()
    model.decoder.eval()
    if keep_float:
        if precision == "fp32":
            raise UserError("--keep-float applies to the int8 precisions; fp32 keeps everything float already")
        check_keep_float(model.encoder, keep_float)
    calibration, calibration_info = calibration_images(ckpt, calib)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    work = Path(tempfile.mkdtemp(prefix="dtconvert-work-"))
    run = _Export(checkpoint, ckpt, model, precision, calibration, staging, work, _Stages(console, staging / "export.log"))
    run.keep_float = tuple(keep_float)
    run.qat = qat_of(ckpt, precision, keep_float)
    run.arm64 = arm64
    try:
        run.calibrate(calibration_info)  # 2. the wire tensor's int8 parameters
        artifacts = run.device_artifacts(targets)  # 3. device targets, one module each
        artifacts += run.cloud_artifacts()  # 4. the TorchScript decoder and a Triton repository around it
        artifacts.append(run.reference_and_golden())  # 5. the fp32 reference model, golden files
        manifest = run.manifest(artifacts)  # 6. manifest, verification, then move into place
        write_manifest(staging, manifest)
        if verify:
            manifest["verification"] = run.verify(out)
            write_manifest(staging, manifest)
        replace_dir(staging, out)
        return out, manifest
    except Exception as e:
        if isinstance(e, UserError):
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log = out.parent / f"{out.name}.export-error.log"
        with open(staging / "export.log", "a", encoding="utf-8") as fh:
            fh.write(f"\n===== failure in {run.current} =====\n{traceback.format_exc()}")
        shutil.copyfile(staging / "export.log", log)
        shutil.rmtree(staging, ignore_errors=True)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportFailed(f"target {run.current} failed: {reason}", log) from e
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _Export:
    """One export in progress: each step writes into ``staging`` and returns its manifest entries;
    ``current`` names the step running, for the failure message."""

    def __init__(self, checkpoint: Path, ckpt: dict, model, precision: str, calibration, staging: Path, work: Path, stages: _Stages):
        self.checkpoint, self.ckpt, self.model, self.precision = checkpoint, ckpt, model, precision
        self.calibration, self.staging, self.work, self.stages = calibration, staging, work, stages
        self.name = ckpt["recipe"]["name"]
        self.tasks = ckpt["tasks"]
        self.example = torch.from_numpy(calibration[:1].copy())
        self.wire_shape = [1, *model.cfg.wire_shape]
        self.current = "load"
        self.keep_float: tuple[str, ...] = ()
        self.arm64: list[str] | None = None  # verify on these emulated arm64 CPU profiles too
        self.qat: dict | None = None  # int8-static of a quantization-aware trained checkpoint: its ckpt["qat"]

    def calibrate(self, calibration_info: dict) -> None:
        """The wire tensor's int8 parameters (static activation scales, where a precision has them,
        are each target's own business)."""
        self.current = "calibrate"
        with self.stages.stage(f"calibrate on {len(self.calibration)} images"):
            with torch.no_grad():
                wire_calibration = self.model.encoder(torch.from_numpy(self.calibration)).numpy()
            self.scale, self.zero_point = wire_qparams(wire_calibration)
        sha = sha256_file(self.checkpoint)
        self.info = _wire_and_input(self.ckpt, self.model.cfg, sha, self.wire_shape, self.scale, self.zero_point, calibration_info)

    def device_artifacts(self, targets: list[str]) -> list[dict]:
        name, precision, example = self.name, self.precision, self.example
        scale, zero_point = self.scale, self.zero_point
        job = ExportJob(
            name=name,
            precision=precision,
            encoder=self.model.encoder,
            example=example,
            calibration=self.calibration,
            workdir=self.work,
            keep_float=self.keep_float,
            qat_ranges=None if self.qat is None else self.qat["ranges"],
            metadata={
                "author": "dtconvert",
                "version": __version__,
                "description": f"Device Tuning encoder of {name!r} ({precision}): image → wire tensor",
                "input_description": f"preprocessed image {list(example.shape)} NCHW float32 (see manifest.json)",
                "output_description": f"wire tensor {self.wire_shape} float32; "
                f"quantize to int8 with scale {scale:.6g}, zero point {zero_point}",
                "user_defined": {"model_id": self.info["model_id"], "wire_scale": scale, "wire_zero_point": zero_point},
            },
        )
        artifacts = []
        for target_name in targets:
            self.current = target_name
            target = load_target(target_name)
            filename = artifact_name(name, "encoder", target_name, precision, target.extension)
            with self.stages.stage(f"{target_name} ({precision})"):
                details = target.export(job, self.staging / filename)
            inputs, outputs = details.pop("inputs", None), details.pop("outputs", None)
            entry = {**describe_file(self.staging, filename), "part": "device", "target": target_name, "precision": precision}
            entry["inputs"] = inputs or [{"name": INPUT_NAME, "shape": list(example.shape), "dtype": "float32"}]
            entry["outputs"] = outputs or [{"name": OUTPUT_NAME, "shape": self.wire_shape, "dtype": "float32"}]
            entry["quantization"] = details.pop("quantization")
            if self.qat is not None:
                learned = getattr(target, "takes_learned_ranges", False)
                entry["quantization"]["qat"] = {
                    "ranges": "learned" if learned else "calibrated on the QAT weights",
                    "activations": len(self.qat["ranges"]) if learned else 0,
                    "epochs": self.qat["epochs"],
                    "consistency": self.qat["consistency"],
                }
            if self.keep_float:
                entry["keep_float"] = {"patterns": list(self.keep_float), "modules": kept_modules(self.model.encoder, self.keep_float)}
            if "delegation" in details:
                entry["delegation"] = details.pop("delegation")
            entry["details"] = details
            artifacts.append(entry)
        return artifacts

    def cloud_artifacts(self) -> list[dict]:
        """The TorchScript decoder, its identity read back from the file that ships, and its Triton repository."""
        self.current = "torchscript"
        names = [t["name"] for t in self.tasks]
        with self.stages.stage("cloud decoder (TorchScript) and Triton repository"):
            self.decoder_file = artifact_name(self.name, "decoder", "torchscript", "fp32", "pt")
            path = self.staging / self.decoder_file
            export_decoder(self.model.decoder, names, self.wire_shape, self.scale, self.zero_point, path)
            write_triton_repository(self.staging / "triton", f"{self.name}_decoder", path, self.wire_shape, self.tasks)
            # What a shared cloud proves identity with, read back from the file that ships.
            self.cloud = cloud_identity(load_decoder(path), names)
            init = self.ckpt.get("init")
            self.cloud["tuned_from"] = (
                None
                if not init
                else {"checkpoint_sha256": init["sha256"], "tune": init["tune"], "new_tasks": list(init.get("new_tasks") or [])}
            )
        cloud_inputs = [
            {"name": "wire", "shape": self.wire_shape, "dtype": "int8"},
            {"name": "scale", "shape": [1, 1], "dtype": "float32"},
            {"name": "zero_point", "shape": [1, 1], "dtype": "int32"},
        ]
        self.cloud_outputs = [{"name": t["name"], "shape": [1, len(t["labels"])], "dtype": "float32"} for t in self.tasks]
        decoder = {
            **describe_file(self.staging, self.decoder_file),
            "part": "cloud",
            "target": "torchscript",
            "precision": "fp32",
            "inputs": cloud_inputs,
            "outputs": self.cloud_outputs,
            "details": {"signature": "forward(wire, scale, zero_point) -> tuple of logits in task order"},
        }
        triton = {
            **describe_file(self.staging, "triton"),
            "part": "cloud",
            "target": "triton",
            "precision": "fp32",
            "details": {"backend": "pytorch_libtorch", "model_name": f"{self.name}_decoder", "dynamic_batching": True},
        }
        return [decoder, triton]

    def reference_and_golden(self) -> dict:
        """The fp32 model as the export's own reference (verify needs no checkpoint), and golden
        inputs and outputs for the apps' tests and the macOS Core ML job."""
        self.current = "reference"
        names = [t["name"] for t in self.tasks]
        with self.stages.stage("fp32 reference model and golden files"):
            reference_file = artifact_name(self.name, "reference", "torchscript", "fp32", "pt")
            export_reference(self.model, names, self.example, self.staging / reference_file)
            self.golden = write_golden(
                self.staging / "golden",
                self.ckpt,
                self.calibration,
                self.staging / reference_file,
                self.staging / self.decoder_file,
                names,
                self.scale,
                self.zero_point,
            )
        return {
            **describe_file(self.staging, reference_file),
            "part": "reference",
            "target": "reference",
            "precision": "fp32",
            "inputs": [{"name": INPUT_NAME, "shape": list(self.example.shape), "dtype": "float32"}],
            "outputs": [{"name": OUTPUT_NAME, "shape": self.wire_shape, "dtype": "float32"}, *self.cloud_outputs],
            "details": {"signature": "forward(image) -> (wire, *logits in task order)"},
        }

    def manifest(self, artifacts: list[dict]) -> dict:
        self.current = "manifest"
        ckpt, info = self.ckpt, self.info
        return {
            "schema_version": SCHEMA_VERSION,
            "model": {
                "name": self.name,
                "id": info["model_id"],
                "checkpoint": {"file": self.checkpoint.name, "sha256": info["checkpoint_sha256"]},
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "heldout_metrics": ckpt["metrics"]["heldout"],
                "cloud": self.cloud,
            },
            "precision": self.precision,
            "device_input": info["device_input"],
            "wire": info["wire"],
            "communication": info["communication"],
            "tasks": [{"name": t["name"], "labels": list(t["labels"])} for t in self.tasks],
            "artifacts": artifacts,
            "data": {"source": ckpt["data"]["source"], "recipe": ckpt["recipe"], "heldout": list(ckpt["data"]["split"]["heldout"])},
            "tools": _tool_versions(),
            "golden": self.golden,
            "verification": None,
        }

    def verify(self, out: Path) -> dict:
        """``dtconvert verify`` on the staged export; its summary for the manifest."""
        self.current = "verify"
        from dtconvert.verify import verify_export

        with self.stages.stage("verify"):
            try:
                report = verify_export(self.staging, log=lambda line: None, arm64=self.arm64)
            except UserError as e:
                raise UserError(
                    f"cannot verify the export: {e}. Export with --no-verify, then run "
                    f"'dtconvert verify {out} --data DIR' on images you have"
                ) from None
        return report.summary()


def qat_of(ckpt: dict, precision: str, keep_float: tuple[str, ...]) -> dict | None:
    """A checkpoint's quantization-aware training, where this export uses it (int8-static only)."""
    qat = ckpt.get("qat")
    if not qat or precision != qat["scheme"]:
        return None
    if keep_float:
        raise UserError(
            "--keep-float cannot be combined with a QAT checkpoint's int8-static: its ranges were learned with every layer quantized"
        )
    return qat


def _wire_and_input(
    ckpt: dict, cfg, checkpoint_sha: str, wire_shape: list[int], scale: float, zero_point: int, calibration_info: dict
) -> dict:
    pre = ckpt["preprocessing"]
    tokens, width = cfg.wire_shape
    communication = {
        "wire_int8_bytes": tokens * width,
        "device_input_uint8_bytes": cfg.image_size * cfg.image_size * cfg.in_channels,
        "unpooled_fp32_token_bytes": cfg.num_patches * cfg.device_dim * 4,
    }
    if ckpt["data"]["source"].get("kind") == "digits":
        communication["source_image_uint8_bytes"] = 8 * 8
    return {
        "model_id": checkpoint_sha[:16],
        "checkpoint_sha256": checkpoint_sha,
        "device_input": {
            "name": INPUT_NAME,
            "shape": [1, cfg.in_channels, cfg.image_size, cfg.image_size],
            "dtype": "float32",
            "layout": "NCHW",
            "preprocessing": {k: pre[k] for k in ("size", "channels", "resize", "scale", "mean", "std")},
        },
        "wire": {
            "name": OUTPUT_NAME,
            "shape": wire_shape,
            "dtype": "int8",
            "scale": scale,
            "zero_point": zero_point,
            "bytes_per_image": tokens * width,
            "formula": "q = clamp(round(x / scale) + zero_point, -128, 127); x = (q - zero_point) * scale",
            "calibration": calibration_info,
        },
        "communication": communication,
    }


GOLDEN_COUNT = 8


def write_golden(
    folder: Path, ckpt: dict, calibration, reference_file: Path, decoder_file: Path, tasks: list[str], scale: float, zero_point: int
) -> dict:
    """Golden inputs and outputs: the same numbers for the apps' tests and the macOS Core ML job.

    ``input.npy`` (preprocessed images), ``wire_fp32.npy`` (fp32 encoder), ``wire_int8.npy``
    (quantized with the manifest's parameters), ``logits_<task>.npy`` (the cloud decoder on
    ``wire_int8``), and for the bundled digits ``image_uint8.npy``, the raw 8×8 images the
    preprocessing starts from.
    """
    import numpy as np

    from dtconvert.data import dataset_images
    from dtconvert.manifest import tree_files
    from dtconvert.targets.torchscript import load_decoder
    from dtconvert.wire import quantize_wire

    folder.mkdir()
    index = list(ckpt["data"]["split"]["heldout"])[:GOLDEN_COUNT]
    try:
        images, _ = dataset_images(ckpt["recipe"], index, ckpt["preprocessing"]) if index else (calibration[:GOLDEN_COUNT], None)
    except UserError:  # the training data is not on this machine: calibration images serve as well
        images, index = calibration[:GOLDEN_COUNT], []
    with torch.no_grad():
        wire = load_decoder(reference_file)(torch.from_numpy(images))[0].numpy()
        wire_q = quantize_wire(wire, scale, zero_point)
        logits = load_decoder(decoder_file)(torch.from_numpy(wire_q), torch.tensor([scale]), torch.tensor([zero_point], dtype=torch.int32))
    np.save(folder / "input.npy", images)
    np.save(folder / "wire_fp32.npy", wire)
    np.save(folder / "wire_int8.npy", wire_q)
    for task, values in zip(tasks, logits, strict=True):
        np.save(folder / f"logits_{task}.npy", values.numpy())
    if index and ckpt["data"]["source"].get("kind") == "digits":
        from dtconvert.data import digits_uint8

        np.save(folder / "image_uint8.npy", digits_uint8()[0][index])
    return {"path": folder.name, "count": len(images), "files": tree_files(folder)}
