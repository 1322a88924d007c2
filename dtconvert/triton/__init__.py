"""Triton: the repositories ``dtconvert cloud`` and ``export`` write (:mod:`.repository`), the model
Triton's Python backend runs (:mod:`.python_model`), and a local ``tritonserver`` from the
``nvidia-pytriton`` wheel (:mod:`.server`)."""

from __future__ import annotations

from dtconvert.triton.repository import (
    BACKENDS,
    DEFAULT_BACKEND,
    MODEL_IDS_KEY,
    TRUNK_KEY,
    TRUNK_MODEL,
    ensemble_name,
    head_model_name,
    infer_inputs,
    write_cloud,
    write_triton_repository,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "MODEL_IDS_KEY",
    "TRUNK_KEY",
    "TRUNK_MODEL",
    "ensemble_name",
    "head_model_name",
    "infer_inputs",
    "write_cloud",
    "write_triton_repository",
]
