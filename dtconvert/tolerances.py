"""Parity bounds per target and precision: one table, overridable by a YAML file (verify)."""

from __future__ import annotations

# wire_max_abs: bound on |artifact wire - fp32 torch wire| (None: not checked at this precision)
# min_top1_agreement: end-to-end top-1 agreement with the fp32 model, per task
# max_accuracy_drop: held-out accuracy lost against the fp32 model, per task, in points
DEFAULT_TOLERANCES: dict[tuple[str, str], dict[str, float | None]] = {
    ("executorch", "fp32"): {"wire_max_abs": 1e-4, "min_top1_agreement": 0.995, "max_accuracy_drop": 0.5},
    ("tflite", "fp32"): {"wire_max_abs": 1e-4, "min_top1_agreement": 0.995, "max_accuracy_drop": 0.5},
    ("coreml", "fp32"): {"wire_max_abs": 1e-2, "min_top1_agreement": 0.995, "max_accuracy_drop": 0.5},  # fp16 on device
    ("executorch", "int8"): {"wire_max_abs": None, "min_top1_agreement": 0.995, "max_accuracy_drop": 0.5},
    ("tflite", "int8"): {"wire_max_abs": None, "min_top1_agreement": 0.995, "max_accuracy_drop": 0.5},
    ("coreml", "int8"): {"wire_max_abs": None, "min_top1_agreement": 0.995, "max_accuracy_drop": 0.5},
}


def tolerance(target: str, precision: str) -> dict[str, float | None]:
    return dict(DEFAULT_TOLERANCES[(target, precision)])
