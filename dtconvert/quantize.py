"""Calibration data, the int8 wire tensor's quantization, and the one pt2e quantization spec.

The wire tensor leaves the device as int8 with one per-tensor scale and zero point, fixed at
export time from the fp32 encoder's outputs on the calibration images:

    q = clamp(round(x / scale) + zero_point, -128, 127)        x ≈ (q - zero_point) * scale

Device artifacts output the float wire tensor; the app (or `dtconvert client`) quantizes it
with the manifest's scale and zero point, so every runtime sends identical bytes for
identical encoder outputs.

Each target quantizes its own device artifact by the scheme its ``SCHEMES`` table names for
the precision (see ``dtconvert/targets/``); the ExecuTorch artifacts and Core ML's
``int8-static`` use :func:`pt2e_quantize` below, calibrated on the same images TFLite's
converter is given as representative data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dtconvert.errors import UserError

DEFAULT_CALIBRATION_IMAGES = 128
MIN_CALIBRATION_IMAGES = 32
INT8_MIN, INT8_MAX = -128, 127


def wire_qparams(wire: np.ndarray) -> tuple[float, int]:
    """Asymmetric per-tensor int8 parameters covering ``wire``'s range (and zero)."""
    low = min(float(wire.min()), 0.0)
    high = max(float(wire.max()), 0.0)
    scale = (high - low) / (INT8_MAX - INT8_MIN)
    if scale <= 0.0 or not np.isfinite(scale):
        return 1.0, 0
    zero_point = int(np.clip(INT8_MIN - round(low / scale), INT8_MIN, INT8_MAX))
    return float(np.float32(scale)), zero_point


def quantize_wire(wire: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    q = np.round(wire.astype(np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, INT8_MIN, INT8_MAX).astype(np.int8)


def dequantize_wire(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)


def dataset_images(recipe: dict, index: list[int], preprocessing: dict) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed images (N, C, H, W) float32 and their labels (N, tasks) for sample indices
    of the data source a recipe names (as stored in a checkpoint or a manifest)."""
    from dtconvert.data import load_task_data, normalize
    from dtconvert.recipe import parse_recipe

    parsed = parse_recipe({k: v for k, v in recipe.items() if k != "name"}, "stored recipe", recipe["name"])
    data = load_task_data(parsed)
    rows = np.asarray(index, dtype=np.int64)
    images = normalize(data.images01(rows), preprocessing["mean"], preprocessing["std"]).numpy().astype(np.float32)
    return images, data.labels[rows]


def checkpoint_images(ckpt: dict, split: str, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed images and labels from the checkpoint's own data.

    ``split`` is "train" or "heldout"; ``count`` takes the first N of a fixed shuffle of it.
    """
    index = np.asarray(ckpt["data"]["split"][split], dtype=np.int64)
    if count is not None:
        index = np.random.default_rng(0).permutation(index)[:count]
    return dataset_images(ckpt["recipe"], index.tolist(), ckpt["preprocessing"])


def folder_images(root: Path, preprocessing: dict) -> np.ndarray:
    """Every image under ``root``, preprocessed as the checkpoint says."""
    from dtconvert.data import image_files, load_image_file, normalize

    if not root.is_dir():
        raise UserError(f"{root}: calibration folder does not exist")
    files = image_files(root)
    if len(files) < MIN_CALIBRATION_IMAGES:
        found = "no images" if not files else f"only {len(files)} images"
        raise UserError(f"{root}: calibration folder has {found}; at least {MIN_CALIBRATION_IMAGES} are needed")
    size, channels = preprocessing["size"][0], preprocessing["channels"]
    unit = torch.cat([load_image_file(f, size, channels, preprocessing["resize"]) for f in files])
    return normalize(unit, preprocessing["mean"], preprocessing["std"]).numpy().astype(np.float32)


def calibration_images(ckpt: dict, calib: str | None) -> tuple[np.ndarray, dict]:
    """Resolve ``--calib`` (None, a count, or a folder) to images and a description for the manifest."""
    if calib is None or calib.isdigit():
        count = DEFAULT_CALIBRATION_IMAGES if calib is None else int(calib)
        if count < MIN_CALIBRATION_IMAGES:
            raise UserError(f"--calib {count}: at least {MIN_CALIBRATION_IMAGES} calibration images are needed")
        available = len(ckpt["data"]["split"]["train"])
        if count > available:
            raise UserError(f"--calib {count}: the checkpoint's training split has only {available} images")
        try:
            images, _ = checkpoint_images(ckpt, "train", count)
        except UserError as e:
            raise UserError(f"cannot read the checkpoint's own training data for calibration ({e}); pass --calib DIR") from None
        return images, {"source": "checkpoint training split", "images": count}
    images = folder_images(Path(calib), ckpt["preprocessing"])
    return images, {"source": "folder", "path": str(calib), "images": len(images)}


def pt2e_quantize(
    encoder: torch.nn.Module,
    example: torch.Tensor,
    calibration: np.ndarray,
    *,
    dynamic: bool,
    float_modules: tuple[type, ...] = (),
    float_layers: frozenset[str] = frozenset(),
    any_batch: bool = False,
) -> torch.nn.Module:
    """Post-training int8 quantization of the encoder with ExecuTorch's XNNPACK quantizer (pt2e).

    Weights are int8, symmetric, per output channel. ``dynamic`` quantizes the inputs of linear
    and conv layers per token at run time (ExecuTorch's own choice for transformers) and leaves
    everything else in float; otherwise activations are int8 per tensor with scales fixed by
    ``calibration`` (static). Modules of the types in ``float_modules``, and the layers named in
    ``float_layers``, stay in float either way.
    ``any_batch`` traces with a dynamic batch dimension, so the program can be lowered again at
    any fixed batch (``dtconvert bench``) with the same scales as the batch-1 export.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))
    if float_layers:
        from dtconvert.targets import layer_of

        # set_module_name(name, None) is not supported (ExecuTorch 1.5); a filter is.
        quantizer.set_filter_function(lambda node: _not_a_scalar_multiply(node) and layer_of(node) not in float_layers)
    else:
        quantizer.set_filter_function(_not_a_scalar_multiply)
    for module_type in float_modules:
        quantizer.set_module_type(module_type, None)
    if any_batch:
        # An example batch of 2: torch.export specialises a dimension it sees as 1.
        pair = torch.from_numpy(np.ascontiguousarray(np.resize(calibration, (2, *calibration.shape[1:]))))
        program = torch.export.export(encoder, (pair,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    else:
        program = torch.export.export(encoder, (example,))
    prepared = prepare_pt2e(program.module(), quantizer)
    # Static scales come from these images, one at a time in a fixed order (the same scales at
    # every batch size); dynamic quantization needs only one pass to trace the observers.
    with torch.no_grad():
        for i in range(len(calibration) if not dynamic else 1):
            prepared(torch.from_numpy(calibration[i : i + 1]))
    return convert_pt2e(prepared)


def _not_a_scalar_multiply(node) -> bool:
    """Leave multiplications by a constant scalar (attention scale, pooling's ½) in float.

    Quantized, such a constant is stored as q=127, zero point −128; coremltools 9.0 folds it as
    ``scale * (q - zero_point)`` in int8 arithmetic, which wraps to −1, so the Core ML program's
    attention scale became −0.25/255 and its pooling factor −0.5/255: an ML program whose output
    ignored its input, converted without a word. Kept in float, both are exact everywhere.
    """
    if node.target not in (torch.ops.aten.mul.Tensor, torch.ops.aten.mul_.Tensor, torch.ops.aten.mul.Scalar):
        return True
    module = node.graph.owning_module
    for arg in node.args:
        if isinstance(arg, (int, float)):
            return False
        if getattr(arg, "op", None) == "get_attr":
            value = getattr(module, arg.target, None)
            if isinstance(value, torch.Tensor) and value.ndim == 0:
                return False
    return True
