"""Export targets: the only place that knows a runtime, one module per target behind one protocol.

A target writes its artifact (``export``) and runs it (``runtimes`` and ``runner``): verify,
client, bench and sweep ask the target instead of loading a runtime themselves, and report
each runtime under its label in :data:`RUNTIMES`. A target's heavy library (executorch,
coremltools, tensorflow) is imported only when that target is used: the table maps names to
``"module:Class"`` strings.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: a runtime's runner needs no torch (the LiteRT memory probe)
    import torch

DEVICE_TARGETS = {
    "executorch": "dtconvert.targets.executorch:ExecuTorchTarget",
    "coreml": "dtconvert.targets.coreml:CoreMLTarget",
    "tflite": "dtconvert.targets.tflite:TFLiteTarget",
}
# int8: per runtime, the int8 scheme that its CPU delegate runs whole and most faithfully;
# int8-static: full-integer weights and activations (static scales), for NPUs; fp32: no quantization.
PRECISIONS = ("int8", "int8-static", "fp32")
INPUT_NAME, OUTPUT_NAME = "image", "wire"
# The one table of runtime labels: every report names a runtime by its label here.
RUNTIMES = {
    "executorch": "ExecuTorch XNNPACK",
    "litert": "LiteRT XNNPACK",
    "litert-reference": "LiteRT reference kernels",
    "coreml-cpu": "Core ML CPU",
    "coreml-all": "Core ML all units",
    "mil-reference": "MIL reference",
}
# What each target runs on first: the runtime that times, serves and stands for the target.
PRIMARY_RUNTIME = {"executorch": "executorch", "tflite": "litert", "coreml": "coreml-cpu"}
# Weights of fewer elements stay float32 on every target: LiteRT's converter fixes this threshold
# for dynamic-range quantization, and the same rule elsewhere keeps the same layers int8 on every
# runtime. Quantizing them saves a few KB and costs fidelity where it shows most: a small last
# layer (the bottleneck) writes the wire tensor itself (ExecuTorch's wire SQNR on a one-epoch
# model: 45.8 dB with it in int8, 55.8 dB with it in float).
WEIGHT_THRESHOLD = 1024
INT8_WEIGHTS = "int8, symmetric, per output channel"
INT8_LARGE_WEIGHTS = f"{INT8_WEIGHTS}, for weights of at least {WEIGHT_THRESHOLD} elements (smaller ones float32)"


def small_weight_layers(module: torch.nn.Module) -> set[str]:
    """Names of the linear and conv layers whose weights stay float32 (below WEIGHT_THRESHOLD)."""
    import torch

    return {
        name
        for name, m in module.named_modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and m.weight.numel() < WEIGHT_THRESHOLD
    }


@dataclass(frozen=True)
class Scheme:
    """How a precision is realised on one runtime; recorded in the artifact's manifest entry."""

    name: str  # "dynamic", "static", "weight-only" or "none"
    weights: str  # how the weights are stored
    activations: str  # how activations are computed
    why: str  # one line: why this is the choice for the precision on this runtime

    def describe(self) -> dict:
        return {"scheme": self.name, "weights": self.weights, "activations": self.activations, "why": self.why}


FP32 = Scheme("none", "float32", "float32", "no quantization")


class ExportError(Exception):
    """A target could not be produced (an unsupported op, a converter failure, a structural check)."""


class UnsupportedByRuntime(Exception):
    """A valid artifact that uses something this runtime does not implement (an op the MIL reference
    lacks): a failed check, not a broken export. The message names it."""


class RunnerUnavailable(Exception):
    """This host cannot execute the artifact (for example Core ML on Linux); the message says why."""


@dataclass
class ExportJob:
    """Everything a device target needs; built once by the export pipeline."""

    name: str  # model name, used in file names
    precision: str  # one of PRECISIONS
    encoder: torch.nn.Module  # fp32 device encoder, eval mode
    example: torch.Tensor  # (1, C, H, W) preprocessed input
    calibration: np.ndarray  # (N, C, H, W) preprocessed calibration images
    workdir: Path = Path(".")  # scratch space for intermediate files
    metadata: dict = field(default_factory=dict)  # description, version, tasks, wire spec
    keep_float: tuple[str, ...] = ()  # --keep-float: module names or globs of the encoder that stay float
    qat_ranges: dict | None = None  # int8-static of a QAT checkpoint: the activation ranges it learned (dtconvert/qat.py)


Run = Callable[[np.ndarray], np.ndarray]


def cache_dir() -> Path:
    """Where runtimes dtconvert downloads once are kept (the arm64 root, tritonserver): ``DTCONVERT_CACHE``
    or ``~/.cache/dtconvert``."""
    return Path(os.environ.get("DTCONVERT_CACHE") or Path.home() / ".cache" / "dtconvert")


def runtime_label(runtime: str) -> str:
    """How reports name ``runtime`` (a key of :data:`RUNTIMES`)."""
    return RUNTIMES[runtime]


def looped(run: Run) -> Run:
    """``run`` called once per image: a batch-1 artifact applied to a batch of any size."""
    return lambda x: np.concatenate([run(x[i : i + 1]) for i in range(len(x))])


class Target(Protocol):
    name: str
    extension: str
    schemes: dict[str, Scheme]  # precision → how this runtime realises it

    def export(self, job: ExportJob, path: Path) -> dict:
        """Write the artifact to ``path``; return details for its manifest entry, with
        ``quantization`` (the scheme and which op kinds are int8 or float, read from what was
        produced) and, for a delegating runtime, ``delegation`` (calls or partitions, ops outside)."""

    def runtimes(self) -> list[str]:
        """Keys of :data:`RUNTIMES` that can run this target's artifacts on this host, best first
        (empty when none can: Core ML on Linux has only the MIL reference, which is a runtime here)."""

    def look_inside(
        self, path: Path, runtime: str, encoder: torch.nn.Module, images: np.ndarray, points: list[str], precision: str, keep_float=()
    ) -> dict[str, np.ndarray] | str:
        """The artifact's output at each of the encoder's modules named in ``points`` (and ``"wire"``)
        on ``images`` as ``runtime`` computes them, or one line saying why ``runtime`` cannot show
        them (``verify --explain``). ``encoder`` is the fp32 device encoder the artifact came from."""

    def runner(self, path: Path, runtime: str | None = None, *, threads: int | None = None, batch: int = 1) -> Run:
        """Load the artifact in ``runtime`` (default: the target's first) and return a function from
        a preprocessed (``batch``, C, H, W) float32 array to the float wire tensor; raise
        :class:`RunnerUnavailable` saying why this host cannot run it.

        ``batch``: LiteRT resizes its interpreter to it (check the numbers before trusting that);
        an ExecuTorch program runs the batch it was lowered at, whatever ``batch`` says; a Core ML
        encoder takes batch 1 only (``ValueError`` otherwise). ``threads``: the runtime's own
        thread count where it has one per model (LiteRT); ExecuTorch's threadpool is
        process-wide (``dtconvert.targets.executorch.set_threads``)."""


def load_target(name: str) -> Target:
    module, _, cls = DEVICE_TARGETS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


def measure_delegation(path: Path, target: str) -> dict:
    """How the runtime's XNNPACK delegate takes the artifact, read from the artifact itself:
    ``{"partitions": n, "ops_outside_delegate": {op: count}}`` (a .pte's partitions are its
    delegate calls). Only delegating targets (ExecuTorch, LiteRT) have one."""
    return load_target(target).delegation(path)  # type: ignore[attr-defined]


def artifact_name(model: str, part: str, target: str, precision: str, extension: str) -> str:
    """``{model}_{part}_{target}_{precision}.{ext}``: the file name says what it is."""
    return f"{model}_{part}_{target}_{precision}.{extension}"
