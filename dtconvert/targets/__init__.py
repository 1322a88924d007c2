"""Export targets: one module per runtime, behind one small protocol.

A target's heavy library (executorch, coremltools, tensorflow) is imported only when that
target is used: the table maps names to ``"module:Class"`` strings.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
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


class Target(Protocol):
    name: str
    extension: str
    schemes: dict[str, Scheme]  # precision → how this runtime realises it

    def export(self, job: ExportJob, path: Path) -> dict:
        """Write the artifact to ``path``; return details for its manifest entry, with
        ``quantization`` (the scheme and which op kinds are int8 or float, read from what was
        produced) and, for a delegating runtime, ``delegation`` (calls or partitions, ops outside)."""

    def runner(self, path: Path) -> Callable[[np.ndarray], np.ndarray]:
        """A function from a preprocessed (1, C, H, W) batch to the float wire tensor,
        or raise :class:`RunnerUnavailable` saying why this host cannot run it."""


def load_target(name: str) -> Target:
    module, _, cls = DEVICE_TARGETS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


def artifact_name(model: str, part: str, target: str, precision: str, extension: str) -> str:
    """``{model}_{part}_{target}_{precision}.{ext}``: the file name says what it is."""
    return f"{model}_{part}_{target}_{precision}.{extension}"


def layer_of(node) -> str:
    """The model layer a torch.fx node came from, for error messages."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "?"
    path = list(stack.values())[-1][0]
    return path.replace("L['self'].", "").replace("L__self__.", "") or "?"
