"""Quantization-aware device tuning for ``int8-static`` (``dtconvert train --init CKPT --tune qat``).

The paper's device tuning trains the device half while the shared cloud stays bit for bit; QAT is
the same move with the static quantizer's fake quantization in the loop. The device encoder is
prepared exactly as ``export --precision int8-static`` quantizes it (LayerNorms in linear form,
ExecuTorch's XNNPACK quantizer with ``prepare_qat_pt2e``, :mod:`dtconvert.quantize`), the cloud
decoder is frozen, and each step trains on the fake-quantized wire with GradNorm as usual plus a
consistency term, ``consistency · ‖wire_int8 − wire_fp32‖² / ‖wire_fp32‖²``: the task loss alone
does not make the integer program agree with its own float twin (measured: 30.4 dB either way),
and the checkpoint's fp32 model is what ``verify`` holds every artifact to.

Activation ranges start as min/max over one large batch of training images (image-by-image
moving averages gave 19.6 dB) and are then learned with the weights (LSQ: each activation's scale
and zero point are trainable, torchao's ``LearnableFakeQuantize``; measured on digits, +1 dB over
min/max ranges re-taken every epoch, though no better than the histogram calibration export does
without them: benchmarks/qat.py).
They are stored in the checkpoint (``qat.ranges``) so that export quantizes with exactly them.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from dtconvert.errors import UserError
from dtconvert.quantize import activation_quantizers, export_any_batch, learned_ranges, xnnpack_quantizer

SCHEME = "int8-static"
QUANTIZER = (
    "ExecuTorch XNNPACKQuantizer (pt2e prepare_qat_pt2e): int8 weights symmetric per output channel, "
    "int8 activations per tensor with static ranges; LayerNorm in linear form, kept float"
)


def cloud_sha256(state_dict: dict) -> str:
    """Digest of the cloud decoder's weights in a model state dict (keys ``decoder.*``), in key order."""
    digest = hashlib.sha256()
    for key in sorted(k for k in state_dict if k.startswith("decoder.")):
        digest.update(key.encode())
        digest.update(state_dict[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_cloud_kept(ckpt: dict, path) -> None:
    """A quantization-aware trained checkpoint must still carry the cloud it was tuned against."""
    qat = ckpt.get("qat")
    if not qat:
        return
    found = cloud_sha256(ckpt["state_dict"])
    if found != qat["cloud_sha256"]:
        raise UserError(
            f"{path}: its cloud decoder is not the one it was quantization-aware trained against "
            f"(weights sha256 {found[:12]}…, recorded {qat['cloud_sha256'][:12]}…); "
            "a QAT checkpoint keeps its parent's cloud bit for bit"
        )


class QATModel(nn.Module):
    """The device encoder with fake quantization, in front of the frozen cloud decoder.

    In training, ``forward`` runs the encoder twice, float and fake-quantized, keeps the
    consistency term for :meth:`regularizer` and returns the logits of the fake-quantized wire;
    in evaluation it returns those logits only (the int8-static program, simulated)."""

    def __init__(self, model, calibration: torch.Tensor, consistency: float) -> None:
        super().__init__()
        from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

        from dtconvert.rewrite import LinearLayerNorm, with_linear_layer_norms

        swapped = with_linear_layer_norms(model.encoder)
        quantizer = xnnpack_quantizer(dynamic=False, qat=True, learn_ranges=True, float_modules=(LinearLayerNorm,))
        self.encoder = prepare_qat_pt2e(export_any_batch(swapped, calibration.numpy()).module(), quantizer)
        for p in self.encoder.parameters():
            p.requires_grad_(True)
        self.decoder = model.decoder
        self.calibration, self.consistency = calibration, consistency
        self.fake_quantizers = [m for m in self.encoder.modules() if hasattr(m, "activation_post_process")]
        self.penalty = torch.zeros(())
        self.calibrate()

    def train(self, mode: bool = True):  # exported graphs refuse train()/eval(); nothing here depends on the mode
        self.training = mode
        return self

    def _fake_quant(self, enabled: bool) -> None:
        for module in self.fake_quantizers:
            module.enable_fake_quant(enabled)

    def forward(self, x: torch.Tensor, wire_noise: float = 0.0) -> dict[str, torch.Tensor]:
        if self.training:
            self._fake_quant(False)
            wire_float = self.encoder(x)
            self._fake_quant(True)
            wire = self.encoder(x)
            self.penalty = self.consistency * ((wire - wire_float) ** 2).mean() / (wire_float.detach() ** 2).mean()
            return self.decoder(wire)
        self._fake_quant(True)
        return self.decoder(self.encoder(x))

    def regularizer(self) -> torch.Tensor:
        return self.penalty

    @torch.no_grad()
    def calibrate(self) -> None:
        """Every range from min/max over the calibration batch; from then on the activations' ranges
        are learned and the weights' per-channel ranges follow the weights at every step."""
        self._fake_quant(True)
        self.encoder(self.calibration)
        for module, _ in activation_quantizers(self.encoder).values():
            module.enable_range_learning()

    def shared_weight(self, cfg) -> torch.Tensor:
        """GradNorm's last shared layer on the device side, as in device tuning."""
        name = "bottleneck.weight" if cfg.bottleneck else f"layers.{cfg.device_depth - 1}.ffn.fc2.weight"
        return dict(self.encoder.named_parameters())[name]

    @torch.no_grad()
    def write_back(self, model) -> None:
        """Copy the trained float weights into ``model.encoder`` (the checkpoint's fp32 model)."""
        trained = self.encoder.state_dict()
        model.encoder.load_state_dict({k: trained[k] for k in model.encoder.state_dict()})

    @torch.no_grad()
    def wire_sqnr_db(self, images: torch.Tensor) -> float:
        """The fake-quantized wire against the float one, in dB."""
        from dtconvert.metrics import sqnr_db

        self._fake_quant(False)
        wire_float = self.encoder(images).numpy()
        self._fake_quant(True)
        return round(sqnr_db(self.encoder(images).numpy(), wire_float), 2)

    def record(self, recipe, parent: dict, train_seconds: float, heldout: dict, heldout_images: torch.Tensor) -> dict:
        """What the checkpoint says about its quantization-aware training (``ckpt["qat"]``)."""
        parent_seconds = parent["metrics"].get("train_seconds")
        return {
            "scheme": SCHEME,
            "quantizer": QUANTIZER,
            "epochs": recipe.epochs,
            "lr": recipe.lr,
            "consistency": self.consistency,
            "calibration_images": len(self.calibration),
            "ranges": learned_ranges(self.encoder),
            "cloud_sha256": cloud_sha256({f"decoder.{k}": v for k, v in self.decoder.state_dict().items()}),
            "train_seconds": round(train_seconds, 2),
            "parent_train_seconds": parent_seconds,
            "cost_vs_parent": None if not parent_seconds else round(train_seconds / parent_seconds, 3),
            "heldout": {"int8_static_simulated": heldout, "wire_sqnr_db": self.wire_sqnr_db(heldout_images)},
        }


def calibration_batch(images: np.ndarray, count: int = 1024) -> torch.Tensor:
    """The first ``count`` of a fixed shuffle: one large batch, so every range sees the same images."""
    order = np.random.default_rng(0).permutation(len(images))[:count]
    return torch.from_numpy(np.ascontiguousarray(images[order]))
