"""Export targets: one module per runtime, behind one small protocol.

A target's heavy library (executorch, coremltools, tensorflow) is imported only when that
target is used: the table maps names to ``"module:Class"`` strings.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

DEVICE_TARGETS = {
    "executorch": "dtconvert.targets.executorch:ExecuTorchTarget",
    "coreml": "dtconvert.targets.coreml:CoreMLTarget",
    "tflite": "dtconvert.targets.tflite:TFLiteTarget",
}
PRECISIONS = ("int8", "fp32")
INPUT_NAME, OUTPUT_NAME = "image", "wire"


class ExportError(Exception):
    """A target could not be produced (an unsupported op, a converter failure, a structural check)."""


class RunnerUnavailable(Exception):
    """This host cannot execute the artifact (for example Core ML on Linux); the message says why."""


@dataclass
class ExportJob:
    """Everything a device target needs; built once by the export pipeline."""

    name: str  # model name, used in file names
    precision: str  # "int8" or "fp32"
    encoder: torch.nn.Module  # fp32 device encoder, eval mode
    example: torch.Tensor  # (1, C, H, W) preprocessed input
    calibration: np.ndarray  # (N, C, H, W) preprocessed calibration images
    quantized_encoder: torch.nn.Module | None = None  # the shared pt2e int8 program
    workdir: Path = Path(".")  # scratch space for intermediate files
    metadata: dict = field(default_factory=dict)  # description, version, tasks, wire spec


class Target(Protocol):
    name: str
    extension: str

    def export(self, job: ExportJob, path: Path) -> dict:
        """Write the artifact to ``path``; return details for its manifest entry."""

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
