"""Export-time module swaps (runtime-friendly equivalents of textbook modules) and the layer names of traced nodes.

Training and checkpoints keep ``nn.LayerNorm``; an exporter that needs another form swaps it
in on a copy of the encoder, never on the model it was given and never in a checkpoint. Each
swap is proven equal to what it replaces by ``tests/test_rewrite.py``.
"""

from __future__ import annotations

import copy

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
