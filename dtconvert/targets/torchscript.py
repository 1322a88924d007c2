"""The cloud half as TorchScript: the decoder taking the int8 wire, its trunk digest, and the fp32 reference model.

The TorchScript module takes the int8 wire tensor exactly as it arrives from the device, with
its scale and zero point, dequantizes it inside, and returns every task's logits in the
manifest's task order:

    forward(wire: int8 (B, T, D), scale: float32 (B, 1), zero_point: int32 (B, 1)) -> tuple[(B, classes_i)]
    shared_trunk(wire, scale, zero_point) -> float32 (B, cloud_dim)   # the trunk alone, for a shared cloud

(``scale``/``zero_point`` of shape (1,) broadcast over the batch.) Taking the int8 tensor keeps
one contract from the phone to the server, and lets Triton batch requests of any origin. The
heads are plain linear layers, ``heads.<i>.weight``/``heads.<i>.bias`` in task order, so a
shared cloud runs ``shared_trunk`` once for rows of several device variants and each variant's
heads on its own rows. :func:`cloud_identity` digests the trunk's tensors and each head, read
from the saved file, so that sharing is proven rather than assumed.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from dtconvert.model import CloudDecoder, DeviceTuningModel

WIRE_INPUTS = ("wire", "scale", "zero_point")


class QuantizedWireDecoder(nn.Module):
    def __init__(self, decoder: CloudDecoder, task_names: list[str]) -> None:
        super().__init__()
        self.input_proj, self.pos_embed, self.trunk = decoder.input_proj, decoder.pos_embed, decoder.trunk
        # A list in task order, not the ModuleDict: TorchScript names submodules after their
        # keys, and a task called "class" (a Python keyword) cannot be serialized.
        self.heads = nn.ModuleList(decoder.heads[name] for name in task_names)

    def features(self, wire_float: torch.Tensor) -> torch.Tensor:
        """The shared trunk, as CloudDecoder.features computes it."""
        h = self.input_proj(wire_float) + self.pos_embed
        for layer in self.trunk:
            h = layer(h)
        return h.mean(dim=1)

    def shared_trunk(self, wire: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
        """Dequantize each row with its own scale and zero point, then run the trunk."""
        wire_float = (wire.to(torch.float32) - zero_point.to(torch.float32).reshape(-1, 1, 1)) * scale.reshape(-1, 1, 1)
        return self.features(wire_float)

    def forward(self, wire: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feature = self.shared_trunk(wire, scale, zero_point)
        return tuple(head(feature) for head in self.heads)


def example_inputs(wire_shape: list[int], batch: int, scale: float, zero_point: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    wire = torch.randint(-128, 128, (batch, *wire_shape[1:]), dtype=torch.int8, generator=generator)
    return wire, torch.full((batch, 1), scale, dtype=torch.float32), torch.full((batch, 1), zero_point, dtype=torch.int32)


def export_decoder(decoder: CloudDecoder, task_names: list[str], wire_shape: list[int], scale: float, zero_point: int, path: Path) -> None:
    """Trace the decoder (``forward`` and ``shared_trunk``) and check both against eager at several batch sizes."""
    module = QuantizedWireDecoder(decoder, task_names).eval()
    example = example_inputs(wire_shape, 2, scale, zero_point)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 marks TorchScript deprecated; it still ships
        traced = torch.jit.trace_module(module, {"forward": example, "shared_trunk": example}, check_trace=False)
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        for batch in (1, 3, 8):
            inputs = example_inputs(wire_shape, batch, scale, zero_point)
            pairs = [*zip(loaded(*inputs), module(*inputs), strict=True), (loaded.shared_trunk(*inputs), module.shared_trunk(*inputs))]
            for got, want in pairs:
                if not torch.allclose(got, want, atol=1e-5, rtol=0):
                    raise RuntimeError(f"traced decoder disagrees with eager at batch {batch}")


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 over a tensor's dtype, shape and bytes: equal digests, bit-identical tensors."""
    data = tensor.detach().contiguous().cpu()
    digest = hashlib.sha256(f"{data.dtype} {list(data.shape)}\n".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def cloud_identity(decoder, task_names: list[str]) -> dict:
    """Digests of a loaded TorchScript decoder: every trunk tensor, the trunk as a whole, and each
    task's head. ``{"trunk_sha256", "trunk_tensors": {name: sha256}, "heads": {task: sha256}}``."""
    state = decoder.state_dict()
    trunk = {name: tensor_sha256(t) for name, t in state.items() if not name.startswith("heads.")}
    heads = {}
    for i, task in enumerate(task_names):
        digest = hashlib.sha256()
        for part in ("weight", "bias"):
            digest.update(tensor_sha256(state[f"heads.{i}.{part}"]).encode())
        heads[task] = digest.hexdigest()
    lines = "".join(f"{name} {sha}\n" for name, sha in trunk.items())
    return {"trunk_sha256": hashlib.sha256(lines.encode()).hexdigest(), "trunk_tensors": trunk, "heads": heads}


def load_decoder(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu").eval()


class ReferenceModel(nn.Module):
    """The whole fp32 model, for verification: image → (float wire tensor, logits per task)."""

    def __init__(self, model: DeviceTuningModel, task_names: list[str]) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.cloud = QuantizedWireDecoder(model.decoder, task_names)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        wire = self.encoder(image)
        feature = self.cloud.features(wire)
        return (wire, *(head(feature) for head in self.cloud.heads))


def export_reference(model: DeviceTuningModel, task_names: list[str], example: torch.Tensor, path: Path) -> None:
    """Trace the fp32 model as the export's own reference, checked against eager at two batch sizes."""
    module = ReferenceModel(model, task_names).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, (example.expand(2, *example.shape[1:]).contiguous(),), check_trace=False)
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        for batch in (1, 5):
            x = torch.randn(batch, *example.shape[1:], generator=torch.Generator().manual_seed(batch))
            wire = model.encode(x)
            logits = model.decode(wire)
            for got, want in zip(loaded(x), (wire, *(logits[n] for n in task_names)), strict=True):
                if not torch.allclose(got, want, atol=1e-5, rtol=0):
                    raise RuntimeError(f"traced reference model disagrees with eager at batch {batch}")
