"""Parity metrics between an artifact's outputs and the fp32 PyTorch reference."""

from __future__ import annotations

import numpy as np


def max_abs_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())


def cosine_similarity(got: np.ndarray, want: np.ndarray) -> float:
    a, b = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denominator) if denominator else float("nan")


def sqnr_db(got: np.ndarray, want: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio: 10·log10(‖want‖² / ‖got − want‖²)."""
    noise = float(np.sum((got.astype(np.float64) - want.astype(np.float64)) ** 2))
    signal = float(np.sum(want.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else 10.0 * float(np.log10(signal / noise))


def top1_agreement(got_logits: np.ndarray, want_logits: np.ndarray) -> float:
    return float(np.mean(got_logits.argmax(-1) == want_logits.argmax(-1)))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(-1) == labels))
