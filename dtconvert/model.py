"""The Device Tuning model: a pooling device encoder and a shared multi-task cloud decoder.

Follows "Device Tuning for Multi-Task Large Model" (Jiang et al., 2023):

* ``DeviceEncoder`` — a patch-embedding stem, then post-LayerNorm Transformer layers
  (Eq. 1–2). Before the layers named in ``pool_at`` the token sequence is pooled to half
  its length and attention runs on the pooled sequence (Eq. 3: Q, K and V all come from
  ``h'``), so what leaves the device is compressed. An optional linear bottleneck narrows
  the width of the wire tensor too.
* ``CloudDecoder`` — a shared Transformer trunk and one linear head per task.
* ``DeviceTuningModel`` — ``forward(x) == decode(encode(x))``; ``encode``/``decode`` are the
  public split boundary, so exporters never cut graphs.

Every op is written in the form that converts exactly to ExecuTorch/XNNPACK, Core ML and
TFLite via ONNX + onnx2tf (see TOOLCHAIN.md): separate q/k/v projections, 4-D reshapes,
explicit ``softmax(q @ kᵀ · scale) @ v``, pooling as the mean of the two halves of
``reshape(B, T//2, 2·D)`` and ReLU. ``scaled_dot_product_attention``, ``avg_pool1d``, fused
5-D qkv reshapes and both GELUs converted *silently wrong* or to Flex ops somewhere.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn


@dataclass(frozen=True)
class Architecture:
    """The architecture's fields, declared once: a recipe sets them, a :class:`ModelConfig` carries them."""

    image_size: int = 16
    in_channels: int = 1
    patch_size: int = 2
    device_dim: int = 64
    device_depth: int = 3
    device_heads: int = 4
    pool_at: tuple[int, ...] = (1, 2)  # device layers whose input is pooled (0-based)
    bottleneck: int = 0  # width of the wire tensor; 0 keeps device_dim
    cloud_dim: int = 64
    cloud_depth: int = 2
    cloud_heads: int = 4
    mlp_ratio: float = 2.0

    def __post_init__(self) -> None:
        # Normalise lists (from YAML or a checkpoint) to tuples so configs compare and hash.
        object.__setattr__(self, "pool_at", tuple(int(i) for i in self.pool_at))

    def architecture(self) -> dict:
        """The architecture's fields and their values."""
        return {f.name: getattr(self, f.name) for f in fields(Architecture)}


@dataclass(frozen=True)
class ModelConfig(Architecture):
    """Architecture of a Device Tuning model and its tasks; everything needed to rebuild it from a checkpoint."""

    tasks: tuple[tuple[str, int], ...] = (("digit", 10), ("odd", 2))  # (name, classes)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "tasks", tuple((str(n), int(c)) for n, c in self.tasks))

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def wire_tokens(self) -> int:
        """Token count of the tensor that leaves the device (halved once per pooling layer)."""
        return self.num_patches // (2 ** len(self.pool_at))

    @property
    def wire_dim(self) -> int:
        return self.bottleneck or self.device_dim

    @property
    def wire_shape(self) -> tuple[int, int]:
        """Per-image shape of the wire tensor: (tokens, width)."""
        return (self.wire_tokens, self.wire_dim)

    @property
    def task_names(self) -> list[str]:
        return [name for name, _ in self.tasks]

    def validate(self) -> list[str]:
        """Return human-readable problems with this config (empty when it is buildable)."""
        problems = []
        if self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        tokens = self.num_patches
        for layer in sorted(self.pool_at):
            if not 0 <= layer < self.device_depth:
                problems.append(f"pool_at layer {layer} is outside the device encoder's {self.device_depth} layers")
            elif tokens % 2:
                problems.append(f"pooling before device layer {layer} needs an even token count, got {tokens}")
            tokens //= 2
        if len(set(self.pool_at)) != len(self.pool_at):
            problems.append(f"pool_at {list(self.pool_at)} names a layer twice")
        for dim, heads, side in ((self.device_dim, self.device_heads, "device"), (self.cloud_dim, self.cloud_heads, "cloud")):
            if dim % heads:
                problems.append(f"{side}_dim {dim} is not divisible by {side}_heads {heads}")
        if not self.tasks:
            problems.append("no tasks")
        names = self.task_names
        if len(set(names)) != len(names):
            problems.append(f"task names repeat: {names}")
        for name, classes in self.tasks:
            if classes < 2:
                problems.append(f"task {name!r} needs at least 2 classes, got {classes}")
        if self.bottleneck < 0:
            problems.append(f"bottleneck must be ≥ 0, got {self.bottleneck}")
        return problems

    def to_dict(self) -> dict:
        """Plain-types form, safe for ``torch.load(weights_only=True)`` and JSON."""
        d = asdict(self)
        d["pool_at"] = list(self.pool_at)
        d["tasks"] = [[name, classes] for name, classes in self.tasks]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**{**d, "pool_at": tuple(d["pool_at"]), "tasks": tuple(tuple(t) for t in d["tasks"])})


class SelfAttention(nn.Module):
    """Multi-head self-attention in the conversion-safe form (4-D reshapes, explicit softmax)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        # Separate projections: a fused qkv + 5-D reshape converted wrongly through onnx2tf.
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.reshape(b, t, self.heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        q, k, v = self._split_heads(self.q(h)), self._split_heads(self.k(h)), self._split_heads(self.v(h))
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        out = (attn @ v).permute(0, 2, 1, 3).reshape(b, t, d)
        return self.proj(out)


class FeedForward(nn.Module):
    """Position-wise FFN with ReLU, the original Transformer's activation.

    GELU has no form that every runtime computes the same way: erf GELU becomes a Flex op in
    TFLite, and ExecuTorch's XNNPACK computes erf GELU even for ``approximate="tanh"`` (4.7e-4
    off, silently). ReLU is exact everywhere and fuses into the int8 matmul kernels.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(h)))


class PairPool(nn.Module):
    """Halves the token sequence: the mean of adjacent token pairs (Eq. 3's pooling).

    Written as the two halves of a (B, T/2, 2D) view. Not avg_pool1d (onnx2tf mistranslated it)
    nor .mean(dim=2) (XNNPACK leaves that mean undelegated). A module without parameters, so that
    ``verify --explain`` and ``export --keep-float`` can name it (``layers.1.pool``)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        pairs = h.reshape(b, t // 2, 2 * d)
        return (pairs[..., :d] + pairs[..., d:]) * 0.5


class TransformerLayer(nn.Module):
    """Post-LN Transformer layer as in the paper's Eq. 1–2, optionally pooling first (Eq. 3)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, pool: bool = False) -> None:
        super().__init__()
        self.pool = PairPool() if pool else None
        self.attn = SelfAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, int(dim * mlp_ratio))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            h = self.pool(h)
        h = self.norm1(h + self.attn(h))  # Eq. 1 / Eq. 3: Q, K, V all from the pooled h'
        return self.norm2(h + self.ffn(h))  # Eq. 2


class DeviceEncoder(nn.Module):
    """Image (B, C, H, W) → wire tensor (B, wire_tokens, wire_dim)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(cfg.in_channels, cfg.device_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches, cfg.device_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.layers = nn.ModuleList(
            TransformerLayer(cfg.device_dim, cfg.device_heads, cfg.mlp_ratio, pool=i in cfg.pool_at) for i in range(cfg.device_depth)
        )
        self.bottleneck = nn.Linear(cfg.device_dim, cfg.bottleneck) if cfg.bottleneck else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch_embed(x)  # (B, D, H/p, W/p)
        b, d, gh, gw = h.shape
        h = h.reshape(b, d, gh * gw).transpose(1, 2) + self.pos_embed  # raster-order tokens
        for layer in self.layers:
            h = layer(h)
        return self.bottleneck(h)


class CloudDecoder(nn.Module):
    """Wire tensor → {task: logits}. The trunk is shared by every task; heads are per task."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_proj = nn.Linear(cfg.wire_dim, cfg.cloud_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.wire_tokens, cfg.cloud_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.trunk = nn.ModuleList(TransformerLayer(cfg.cloud_dim, cfg.cloud_heads, cfg.mlp_ratio) for _ in range(cfg.cloud_depth))
        self.heads = nn.ModuleDict({name: nn.Linear(cfg.cloud_dim, classes) for name, classes in cfg.tasks})

    def features(self, wire: torch.Tensor) -> torch.Tensor:
        """Shared trunk: wire tensor → pooled feature (B, cloud_dim)."""
        h = self.input_proj(wire) + self.pos_embed
        for layer in self.trunk:
            h = layer(h)
        return h.mean(dim=1)

    def forward(self, wire: torch.Tensor) -> dict[str, torch.Tensor]:
        feature = self.features(wire)
        return {name: head(feature) for name, head in self.heads.items()}


class DeviceTuningModel(nn.Module):
    """``forward(x) = decode(encode(x))``; the two halves are the deployment split."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        problems = cfg.validate()
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))
        self.cfg = cfg
        self.encoder = DeviceEncoder(cfg)
        self.decoder = CloudDecoder(cfg)
        self.apply(_init_weights)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Device half: images (B, C, H, W), preprocessed → wire tensor (B, T', D')."""
        return self.encoder(x)

    def decode(self, wire: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cloud half: wire tensor → {task name: logits (B, classes)}."""
        return self.decoder(wire)

    def forward(self, x: torch.Tensor, wire_noise: float = 0.0) -> dict[str, torch.Tensor]:
        """``decode(encode(x))``. In training, ``wire_noise`` > 0 adds Gaussian noise of that
        fraction of the wire tensor's std, so the cloud learns to tolerate the int8 device
        encoder's error (which reaches it as exactly such a perturbation)."""
        wire = self.encode(x)
        if wire_noise > 0.0 and self.training:
            wire = wire + torch.randn_like(wire) * (wire_noise * wire.detach().std())
        return self.decode(wire)

    def device_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def shared_cloud_parameters(self) -> list[nn.Parameter]:
        """Cloud parameters shared by all tasks (everything but the heads)."""
        heads = {id(p) for p in self.decoder.heads.parameters()}
        return [p for p in self.decoder.parameters() if id(p) not in heads]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        nn.init.trunc_normal_(module.weight, std=math.sqrt(1.0 / fan_in))
        if module.bias is not None:  # the patch embedding has one; a bias-free conv has nothing to zero
            nn.init.zeros_(module.bias)


def count_parameters(model: DeviceTuningModel) -> dict[str, int]:
    """Parameter counts of the device half, the cloud half and the whole model."""
    device = sum(p.numel() for p in model.encoder.parameters())
    cloud = sum(p.numel() for p in model.decoder.parameters())
    heads = sum(p.numel() for p in model.decoder.heads.parameters())
    return {"device": device, "cloud": cloud, "cloud_heads": heads, "total": device + cloud}


__all__ = [
    "CloudDecoder",
    "DeviceEncoder",
    "DeviceTuningModel",
    "ModelConfig",
    "count_parameters",
]
