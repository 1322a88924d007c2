"""Export-time module swaps (runtime-friendly equivalents of textbook modules) and the layer names of traced nodes.

Training and checkpoints keep ``nn.LayerNorm``; an exporter that needs another form swaps it
in on a copy of the encoder, never on the model it was given and never in a checkpoint. Each
swap is proven equal to what it replaces by ``tests/test_rewrite.py``.
"""

from __future__ import annotations

import copy
import fnmatch

import torch
import torch.nn.functional as F
from torch import nn


class LinearLayerNorm(nn.Module):
    """``nn.LayerNorm`` over the last dimension, with its mean and variance taken by ``F.linear``.

    ExecuTorch's XNNPACK delegate (1.5) has no layer-norm operator: ``native_layer_norm`` runs
    on ExecuTorch's portable kernels between two delegate calls, so every LayerNorm cuts the
    program. The mean as a product with a ``(1, D)`` row of ``1/D`` is a fully connected layer,
    and the rest (subtract, multiply, rsqrt, add) are element-wise ops XNNPACK takes, so the
    whole encoder becomes one delegate call. Equal to ``nn.LayerNorm`` to ~1e-6 (the float
    summation order differs).
    """

    average: torch.Tensor  # a buffer: registered in __init__, typed here for the checker

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        if len(norm.normalized_shape) != 1 or not norm.elementwise_affine:
            raise ValueError(f"LinearLayerNorm takes a LayerNorm over one dimension with weight and bias, got {norm}")
        dim = norm.normalized_shape[0]
        self.eps = norm.eps
        self.weight = norm.weight
        self.bias = norm.bias
        self.register_buffer("average", torch.full((1, dim), 1.0 / dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - F.linear(x, self.average)
        variance = F.linear(centred * centred, self.average)
        return centred * torch.rsqrt(variance + self.eps) * self.weight + self.bias


def with_linear_layer_norms(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every ``nn.LayerNorm`` replaced by :class:`LinearLayerNorm`."""
    swapped = copy.deepcopy(module)
    _swap_layer_norms(swapped)
    return swapped


def _swap_layer_norms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.LayerNorm):
            setattr(module, name, LinearLayerNorm(child))
        else:
            _swap_layer_norms(child)


def layer_of(node) -> str:
    """The model layer a torch.fx node came from, for error messages."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "?"
    path = list(stack.values())[-1][0]
    return path.replace("L['self'].", "").replace("L__self__.", "") or "?"


def kept_float(layer: str, patterns: tuple[str, ...]) -> bool:
    """Whether the module named ``layer`` (or a module inside it) is kept float by ``--keep-float``.

    A pattern is a module name of the device encoder or a glob over them (``layers.1.ffn``,
    ``layers.*.attn``); it keeps that module and everything inside it."""
    return any(fnmatch.fnmatchcase(prefix, pattern) for pattern in patterns for prefix in _prefixes(layer))


def _prefixes(layer: str) -> list[str]:
    parts = layer.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def weighted_modules(encoder: nn.Module) -> list[str]:
    """Names of the encoder's modules that a pattern can keep float: every module that holds
    linear or conv weights, and the parameter-free pooling steps."""
    from dtconvert.model import PairPool

    names = []
    for name, module in encoder.named_modules():
        if not name:
            continue
        if isinstance(module, PairPool) or any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in module.modules()):
            names.append(name)
    return names


def check_keep_float(encoder: nn.Module, patterns: tuple[str, ...]) -> None:
    """Raise :class:`~dtconvert.errors.UserError` for a ``--keep-float`` pattern that names no module."""
    from dtconvert.errors import UserError

    names = weighted_modules(encoder)
    for pattern in patterns:
        if not any(kept_float(name, (pattern,)) for name in names):
            raise UserError(f"--keep-float {pattern!r}: the device encoder has no such module; its modules are {', '.join(names)}")


def kept_modules(encoder: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """The linear and conv layers that ``patterns`` keep float, by name."""
    return [name for name, module in encoder.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d)) and kept_float(name, patterns)]


def within(layer: str, module: str) -> bool:
    """Whether the layer path ``layer`` (from :func:`layer_of`) is ``module`` or inside it."""
    return layer == module or layer.startswith(module + ".")
