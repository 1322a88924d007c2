"""The one pt2e quantization spec that ExecuTorch and Core ML's ``int8-static`` lower with.

Each target quantizes its own device artifact by the scheme its ``SCHEMES`` table names for
the precision (see ``dtconvert/targets/``); the ExecuTorch artifacts and Core ML's
``int8-static`` use :func:`pt2e_quantize` below, calibrated on the same images TFLite's
converter is given as representative data, or, for a checkpoint trained quantization-aware
(``dtconvert train --tune qat``, :mod:`dtconvert.qat`), with the activation ranges it learned.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from dtconvert.errors import UserError
from dtconvert.rewrite import kept_float, layer_of


def xnnpack_quantizer(
    *,
    dynamic: bool,
    qat: bool = False,
    learn_ranges: bool = False,
    float_modules: tuple[type, ...] = (),
    keep_float: tuple[str, ...] = (),
):
    """ExecuTorch's XNNPACK quantizer as dtconvert configures it: int8 weights, symmetric, per
    output channel; activations int8 per tensor with fixed scales, or per token at run time
    (``dynamic``). ``qat`` puts fake quantization where the static scheme quantizes, for
    training; ``learn_ranges`` makes the activations' scale and zero point trainable (LSQ,
    torchao's ``LearnableFakeQuantize``)."""
    import dataclasses

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic, is_qat=qat)
    if learn_ranges:
        from torchao.quantization.pt2e.learnable_fake_quantize import LearnableFakeQuantize
        from torchao.quantization.pt2e.observer import MinMaxObserver

        spec = config.input_activation
        learnable = LearnableFakeQuantize.with_args(
            observer=MinMaxObserver,
            quant_min=spec.quant_min,
            quant_max=spec.quant_max,
            dtype=spec.dtype,
            qscheme=spec.qscheme,
            use_grad_scaling=True,
        )
        config = dataclasses.replace(
            config,
            input_activation=dataclasses.replace(spec, observer_or_fake_quant_ctr=learnable),
            output_activation=dataclasses.replace(config.output_activation, observer_or_fake_quant_ctr=learnable),
        )
    quantizer = XNNPACKQuantizer().set_global(config)
    if keep_float:
        # set_module_name(name, None) is not supported (ExecuTorch 1.5); a filter is.
        quantizer.set_filter_function(lambda node: _not_a_scalar_multiply(node) and not kept_float(layer_of(node), keep_float))
    else:
        quantizer.set_filter_function(_not_a_scalar_multiply)
    for module_type in float_modules:
        quantizer.set_module_type(module_type, None)
    return quantizer


def export_any_batch(encoder: torch.nn.Module, images: np.ndarray) -> torch.export.ExportedProgram:
    """``torch.export`` with a dynamic batch dimension (an example batch of 2: torch.export
    specialises a dimension it sees as 1)."""
    pair = torch.from_numpy(np.ascontiguousarray(np.resize(images, (2, *images.shape[1:]))))
    return torch.export.export(encoder, (pair,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))


def pt2e_quantize(
    encoder: torch.nn.Module,
    example: torch.Tensor,
    calibration: np.ndarray,
    *,
    dynamic: bool,
    float_modules: tuple[type, ...] = (),
    keep_float: tuple[str, ...] = (),
    any_batch: bool = False,
    ranges: dict | None = None,
) -> torch.nn.Module:
    """Post-training int8 quantization of the encoder with ExecuTorch's XNNPACK quantizer (pt2e).

    Weights are int8, symmetric, per output channel. ``dynamic`` quantizes the inputs of linear
    and conv layers per token at run time (ExecuTorch's own choice for transformers) and leaves
    everything else in float; otherwise activations are int8 per tensor with scales fixed by
    ``calibration`` (static), or by ``ranges``, the activation ranges a quantization-aware
    training learned (a checkpoint's ``qat.ranges``; the graph is then prepared exactly as
    training prepared it). Modules of the types in ``float_modules``, and the modules that
    ``keep_float`` names (module names or globs, see :func:`~dtconvert.rewrite.kept_float`), stay
    in float either way.
    ``any_batch`` traces with a dynamic batch dimension, so the program can be lowered again at
    any fixed batch (``dtconvert bench``) with the same scales as the batch-1 export.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e

    if ranges is not None:
        quantizer = xnnpack_quantizer(dynamic=False, qat=True, float_modules=float_modules)
        prepared = prepare_qat_pt2e(export_any_batch(encoder, calibration).module(), quantizer)
        with torch.no_grad():
            prepared(torch.from_numpy(calibration[:1]))  # the weights' per-channel ranges
        load_ranges(prepared, ranges)
        return convert_pt2e(prepared)
    quantizer = xnnpack_quantizer(dynamic=dynamic, float_modules=float_modules, keep_float=keep_float)
    program = export_any_batch(encoder, calibration) if any_batch else torch.export.export(encoder, (example,))
    prepared = prepare_pt2e(program.module(), quantizer)
    # Static scales come from these images, one at a time in a fixed order (the same scales at
    # every batch size); dynamic quantization needs only one pass to trace the observers.
    with torch.no_grad():
        for i in range(len(calibration) if not dynamic else 1):
            prepared(torch.from_numpy(calibration[i : i + 1]))
    return convert_pt2e(prepared)


def activation_quantizers(prepared: torch.fx.GraphModule) -> dict[str, tuple[Any, str]]:
    """The activation fake quantizers of a QAT-prepared graph: module name → (module, the node it
    observes). Weights' quantizers (per channel) are left out: their ranges follow the weights."""
    found: dict[str, tuple[Any, str]] = {}
    for node in prepared.graph.nodes:
        if node.op != "call_module":
            continue
        module = prepared.get_submodule(node.target)
        if not hasattr(module, "activation_post_process") or module.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine):
            continue
        source = node.args[0]
        found[node.target] = (module, getattr(source, "name", str(source)))
    return found


def learned_ranges(prepared: torch.fx.GraphModule) -> dict[str, dict]:
    """Each learned activation quantizer's range: {name: {"observes", "min", "max"}}. The learned
    scale and zero point are written as the range whose min/max observer gives exactly them back:
    [(qmin − zp)·scale, (qmax − zp)·scale]."""
    ranges = {}
    for name, (module, observes) in activation_quantizers(prepared).items():
        scale, zero_point = (float(v) for v in module.calculate_qparams())
        ranges[name] = {
            "observes": observes,
            "min": (module.quant_min - zero_point) * scale,
            "max": (module.quant_max - zero_point) * scale,
        }
    return ranges


def load_ranges(prepared: torch.fx.GraphModule, ranges: dict) -> None:
    """Set every activation quantizer of ``prepared`` to the checkpoint's learned range, or say
    in one sentence why the checkpoint's ranges do not fit this graph."""
    quantizers = activation_quantizers(prepared)
    if set(quantizers) != set(ranges):
        raise UserError(
            f"the checkpoint's QAT ranges cover {len(ranges)} activations, this dtconvert's int8-static graph has "
            f"{len(quantizers)}: retrain with 'dtconvert train … --tune qat' on this version"
        )
    for name, (module, observes) in quantizers.items():
        if _kind(ranges[name]["observes"]) != _kind(observes):
            raise UserError(f"the checkpoint's QAT range {name} was learned on {ranges[name]['observes']!r}, here it observes {observes!r}")
        observer = module.activation_post_process
        observer.min_val.copy_(torch.tensor(ranges[name]["min"]))
        observer.max_val.copy_(torch.tensor(ranges[name]["max"]))
        module.disable_observer()


def _kind(node_name: str) -> str:
    """The op a traced node name stands for (``linear_7`` → ``linear``). A LayerNorm's output is an
    ``add`` in its linear form (ExecuTorch's graph, where QAT trains) and a ``layer_norm`` in Core
    ML's: the same tensor, quantized by the same quantizer."""
    kind = re.sub(r"_\d+$", "", node_name)
    return "add" if kind == "layer_norm" else kind


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
