"""The one pt2e quantization spec that ExecuTorch and Core ML's ``int8-static`` lower with.

Each target quantizes its own device artifact by the scheme its ``SCHEMES`` table names for
the precision (see ``dtconvert/targets/``); the ExecuTorch artifacts and Core ML's
``int8-static`` use :func:`pt2e_quantize` below, calibrated on the same images TFLite's
converter is given as representative data.
"""

from __future__ import annotations

import numpy as np
import torch

from dtconvert.rewrite import kept_float, layer_of


def pt2e_quantize(
    encoder: torch.nn.Module,
    example: torch.Tensor,
    calibration: np.ndarray,
    *,
    dynamic: bool,
    float_modules: tuple[type, ...] = (),
    keep_float: tuple[str, ...] = (),
    any_batch: bool = False,
) -> torch.nn.Module:
    """Post-training int8 quantization of the encoder with ExecuTorch's XNNPACK quantizer (pt2e).

    Weights are int8, symmetric, per output channel. ``dynamic`` quantizes the inputs of linear
    and conv layers per token at run time (ExecuTorch's own choice for transformers) and leaves
    everything else in float; otherwise activations are int8 per tensor with scales fixed by
    ``calibration`` (static). Modules of the types in ``float_modules``, and the modules that
    ``keep_float`` names (module names or globs, see :func:`~dtconvert.rewrite.kept_float`), stay
    in float either way.
    ``any_batch`` traces with a dynamic batch dimension, so the program can be lowered again at
    any fixed batch (``dtconvert bench``) with the same scales as the batch-1 export.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))
    if keep_float:
        # set_module_name(name, None) is not supported (ExecuTorch 1.5); a filter is.
        quantizer.set_filter_function(lambda node: _not_a_scalar_multiply(node) and not kept_float(layer_of(node), keep_float))
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
