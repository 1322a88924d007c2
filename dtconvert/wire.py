"""The wire format: what a device sends to the cloud decoder (see docs/wire-format.md), and its int8 quantization.

The wire tensor leaves the device as int8 with one per-tensor scale and zero point, fixed at
export time from the fp32 encoder's outputs on the calibration images:

    q = clamp(round(x / scale) + zero_point, -128, 127)        x ≈ (q - zero_point) * scale

Device artifacts output the float wire tensor; the app (or ``dtconvert client``) quantizes it
with the manifest's scale and zero point, so every runtime sends identical bytes for
identical encoder outputs.

Little-endian, language-neutral, so Kotlin and Swift can write it byte for byte::

    offset  size  field
    0       4     magic            b"DTW1"
    4       2     version          uint16, 1
    6       2     header_bytes     uint16, 32 + 4·rank (the offset of the payload)
    8       8     model_id         the manifest's model.id (16 hex digits) as 8 raw bytes
    16      4     task_mask        uint32, bit i requests the manifest's task i; 0 means all
    20      1     dtype            uint8, 1 = int8
    21      1     rank             uint8, 1..8
    22      2     reserved         zero
    24      4     scale            float32, finite and > 0
    28      4     zero_point       int32, −128..127
    32      4·r   shape            uint32 each, ≥ 1, batch first
    h       n     payload          prod(shape) int8 values, row-major

:func:`decode_payload` validates every byte it reads and raises :class:`WireFormatError`, whose
message says what is wrong, for anything else; a server turns that into a 4xx.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"DTW1"
VERSION = 1
FIXED = struct.Struct("<4sHH8sIBBHfi")  # 32 bytes
DTYPES = {1: np.int8}
MAX_RANK = 8
CONTENT_TYPE = "application/octet-stream"  # the HTTP media type of a wire message
INT8_MIN, INT8_MAX = -128, 127


def header_size(rank: int) -> int:
    """Bytes before the payload of a message whose tensor has ``rank`` dimensions."""
    return FIXED.size + 4 * rank


class WireFormatError(ValueError):
    """A payload that is not a valid wire message; the text names the field and the problem."""


@dataclass(frozen=True)
class WirePayload:
    model_id: str  # 16 lowercase hex digits
    task_mask: int
    scale: float
    zero_point: int
    tensor: np.ndarray  # int8, shape as sent


def encode_payload(tensor: np.ndarray, scale: float, zero_point: int, model_id: str, task_mask: int = 0) -> bytes:
    """Serialize an int8 wire tensor (batch first) with its quantization and model id."""
    tensor = np.asarray(tensor)
    if tensor.dtype != np.int8:
        raise WireFormatError(f"tensor dtype must be int8, got {tensor.dtype}")
    if not 1 <= tensor.ndim <= MAX_RANK:
        raise WireFormatError(f"tensor rank must be 1..{MAX_RANK}, got {tensor.ndim}")
    model = _model_id_bytes(model_id)
    header_bytes = header_size(tensor.ndim)
    header = FIXED.pack(MAGIC, VERSION, header_bytes, model, task_mask, 1, tensor.ndim, 0, scale, zero_point)
    shape = struct.pack(f"<{tensor.ndim}I", *tensor.shape)
    return header + shape + np.ascontiguousarray(tensor).tobytes()


def decode_payload(data: bytes, max_bytes: int | None = None) -> WirePayload:
    """Parse and validate a wire message; raise WireFormatError naming the first problem."""
    if max_bytes is not None and len(data) > max_bytes:
        raise WireFormatError(f"payload is {len(data)} bytes, more than the limit of {max_bytes}")
    if len(data) < FIXED.size:
        raise WireFormatError(f"payload is {len(data)} bytes, shorter than the {FIXED.size}-byte header")
    magic, version, header_bytes, model, task_mask, dtype, rank, reserved, scale, zero_point = FIXED.unpack_from(data)
    if magic != MAGIC:
        raise WireFormatError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise WireFormatError(f"unsupported wire format version {version} (this reader speaks {VERSION})")
    if dtype not in DTYPES:
        raise WireFormatError(f"unknown dtype code {dtype} (1 = int8)")
    if not 1 <= rank <= MAX_RANK:
        raise WireFormatError(f"rank must be 1..{MAX_RANK}, got {rank}")
    if reserved != 0:
        raise WireFormatError("reserved header bytes must be zero")
    if header_bytes != header_size(rank):
        raise WireFormatError(f"header_bytes is {header_bytes}, expected {header_size(rank)} for rank {rank}")
    if not math.isfinite(scale) or scale <= 0.0:
        raise WireFormatError(f"scale must be finite and positive, got {scale}")
    if not -128 <= zero_point <= 127:
        raise WireFormatError(f"zero_point must be in -128..127, got {zero_point}")
    if len(data) < header_bytes:
        raise WireFormatError(f"payload is {len(data)} bytes, shorter than its {header_bytes}-byte header")
    shape = struct.unpack_from(f"<{rank}I", data, FIXED.size)
    if any(d == 0 for d in shape):
        raise WireFormatError(f"shape {list(shape)} has a zero dimension")
    count = math.prod(shape)
    body = len(data) - header_bytes
    if body != count:
        problem = "truncated" if body < count else "has trailing bytes"
        raise WireFormatError(f"tensor data {problem}: shape {list(shape)} needs {count} bytes, got {body}")
    tensor = np.frombuffer(data, dtype=DTYPES[dtype], count=count, offset=header_bytes).reshape(shape)
    return WirePayload(model.hex(), task_mask, float(scale), int(zero_point), tensor)


def _model_id_bytes(model_id: str) -> bytes:
    try:
        raw = bytes.fromhex(model_id)
    except ValueError:
        raw = b""
    if len(raw) != 8:
        raise WireFormatError(f"model id must be 16 hex digits, got {model_id!r}")
    return raw


# ---- quantization of the wire tensor ----------------------------------------------------------


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
