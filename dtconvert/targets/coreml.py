"""Core ML ``.mlpackage`` (ML program, iOS 17+), fp32 or W8A8 from the shared pt2e program.

Core ML runs only on Apple platforms: on Linux the artifact is converted, saved, reloaded and
inspected (I/O names, shapes, op list); prediction is left to macOS (see ``dtconvert verify``).
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import torch

from dtconvert.targets import INPUT_NAME, OUTPUT_NAME, ExportError, ExportJob, RunnerUnavailable

# ct.convert on a torch.export program drops a debugging aid into the package root; the
# package's own Manifest.json does not list it and Core ML never reads it.
DEBUG_FILES = ("executorch_debug_handle_mapping.json",)


def mil_ops(path: Path) -> dict[str, int]:
    """Op types and counts of a saved ML program (works on Linux)."""
    from dtconvert.mil_reference import program_ops

    return dict(sorted(program_ops(path).items()))


def io_spec(path: Path) -> dict:
    """Input and output names, shapes and dtypes as the saved package declares them."""
    from dtconvert.mil_reference import io_signature

    return io_signature(path)


class CoreMLTarget:
    name = "coreml"
    extension = "mlpackage"

    def export(self, job: ExportJob, path: Path) -> dict:
        import coremltools as ct

        module = job.quantized_encoder if job.precision == "int8" else job.encoder
        program = torch.export.export(module, (job.example,)).run_decompositions({})
        # fp32 keeps float32 compute; int8 computes its float parts in fp16, Core ML's default.
        precision = ct.precision.FLOAT32 if job.precision == "fp32" else ct.precision.FLOAT16
        try:
            model = ct.convert(
                program,
                inputs=[ct.TensorType(name=INPUT_NAME, shape=tuple(job.example.shape), dtype=np.float32)],
                outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
                minimum_deployment_target=ct.target.iOS17,
                compute_precision=precision,
                convert_to="mlprogram",
            )
        except (NotImplementedError, ValueError, RuntimeError) as e:
            raise ExportError(f"coremltools could not convert the encoder: {str(e).strip().splitlines()[0]}") from e
        meta = job.metadata
        model.author = meta.get("author", "dtconvert")
        model.version = meta.get("version", "")
        model.short_description = meta.get("description", "Device Tuning encoder")
        model.input_description[INPUT_NAME] = meta.get("input_description", "preprocessed image")
        model.output_description[OUTPUT_NAME] = meta.get("output_description", "wire tensor (float)")
        for key, value in meta.get("user_defined", {}).items():
            model.user_defined_metadata[key] = str(value)
        model.save(str(path))
        for name in DEBUG_FILES:
            (path / name).unlink(missing_ok=True)
        io = io_spec(path)  # reload from disk: what ships is what we describe
        if [i["name"] for i in io["inputs"]] != [INPUT_NAME] or [o["name"] for o in io["outputs"]] != [OUTPUT_NAME]:
            raise ExportError(f"Core ML model reloaded with unexpected I/O: {io}")
        return {"compute_precision": "float32" if job.precision == "fp32" else "float16",
                "deployment_target": "iOS17", "ops": mil_ops(path), **io}

    def runner(self, path: Path):
        if platform.system() != "Darwin":
            raise RunnerUnavailable("Core ML prediction runs only on macOS; on Linux the MIL program is checked instead")
        import coremltools as ct

        model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
        return lambda x: model.predict({INPUT_NAME: x.astype(np.float32)})[OUTPUT_NAME]


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


__all__ = ["CoreMLTarget", "directory_bytes", "io_spec", "mil_ops"]
