"""The wire format: golden vectors byte for byte, every malformed field rejected, and a fuzzed parser."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtconvert.wire import WireFormatError, decode_payload, encode_payload

GOLDEN = Path(__file__).parent / "golden" / "wire"
VECTORS = sorted(p.stem for p in GOLDEN.glob("*.json"))


def _load(name: str) -> tuple[dict, bytes]:
    return json.loads((GOLDEN / f"{name}.json").read_text()), (GOLDEN / f"{name}.bin").read_bytes()


@pytest.mark.parametrize("name", VECTORS)
def test_golden_vectors_encode_byte_for_byte(name):
    spec, data = _load(name)
    tensor = np.array(spec["values"], dtype=np.int8).reshape(spec["shape"])
    assert np.float32(spec["scale"]).view(np.uint32) == int(spec["scale_float32_bits"], 16)
    assert encode_payload(tensor, spec["scale"], spec["zero_point"], spec["model_id"], spec["task_mask"]) == data
    decoded = decode_payload(data)
    assert np.array_equal(decoded.tensor, tensor) and decoded.model_id == spec["model_id"]
    assert (decoded.scale, decoded.zero_point, decoded.task_mask) == (spec["scale"], spec["zero_point"], spec["task_mask"])


def test_layout_by_hand():
    """The documented layout, read with offsets rather than the implementation's struct format."""
    _, data = _load("batch2_extremes")
    assert data[0:4] == b"DTW1"
    assert data[4:6] == (1).to_bytes(2, "little")
    assert data[6:8] == (32 + 4 * 3).to_bytes(2, "little")
    assert data[8:16] == bytes.fromhex("ffeeddccbbaa9988")
    assert data[16:20] == (2).to_bytes(4, "little")
    assert data[20] == 1 and data[21] == 3 and data[22:24] == b"\0\0"
    assert data[24:28] == struct.pack("<f", 1.5e-3)
    assert data[28:32] == (-7).to_bytes(4, "little", signed=True)
    assert [int.from_bytes(data[32 + 4 * i : 36 + 4 * i], "little") for i in range(3)] == [2, 1, 4]
    assert list(np.frombuffer(data[44:], dtype=np.int8)) == [-128, 127, 0, -1, 1, -127, 126, 5]


def _patched(data: bytes, offset: int, fmt: str, value) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


_, BASE = _load("digits_b1")


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "shorter than the 32-byte header"),
        (BASE[:20], "shorter than the 32-byte header"),
        (b"XXXX" + BASE[4:], "bad magic"),
        (_patched(BASE, 4, "<H", 2), "unsupported wire format version 2"),
        (_patched(BASE, 6, "<H", 40), "header_bytes is 40"),
        (_patched(BASE, 20, "<B", 9), "unknown dtype code 9"),
        (_patched(BASE, 21, "<B", 0), "rank must be 1..8"),
        (_patched(BASE, 22, "<H", 1), "reserved header bytes"),
        (_patched(BASE, 24, "<f", float("nan")), "scale must be finite and positive"),
        (_patched(BASE, 24, "<f", float("inf")), "scale must be finite and positive"),
        (_patched(BASE, 24, "<f", -1.0), "scale must be finite and positive"),
        (_patched(BASE, 28, "<i", 300), "zero_point must be in -128..127"),
        (_patched(BASE, 36, "<I", 0), "zero dimension"),
        (BASE[:-1], "truncated"),
        (BASE + b"\0", "trailing bytes"),
        (BASE[:40], "shorter than its 44-byte header"),
    ],
)
def test_each_malformed_field_is_named(data, message):
    with pytest.raises(WireFormatError, match=message):
        decode_payload(data)


def test_oversized_payload_is_refused_before_parsing():
    with pytest.raises(WireFormatError, match="more than the limit of 100"):
        decode_payload(BASE, max_bytes=100)
    assert decode_payload(BASE, max_bytes=len(BASE)).tensor.shape == (1, 8, 8)


def test_encoder_refuses_bad_tensors():
    with pytest.raises(WireFormatError, match="int8"):
        encode_payload(np.zeros((1, 2), dtype=np.float32), 0.1, 0, "0123456789abcdef")
    with pytest.raises(WireFormatError, match="16 hex digits"):
        encode_payload(np.zeros((1, 2), dtype=np.int8), 0.1, 0, "not-hex")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes_only_raise_wire_format_errors(data):
    try:
        decode_payload(data)
    except WireFormatError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    scale=st.floats(min_value=float(np.float32(1e-6)), max_value=1024.0, width=32, allow_nan=False, allow_infinity=False),
    zero_point=st.integers(-128, 127),
    mask=st.integers(0, 2**32 - 1),
    seed=st.integers(0, 2**31),
)
def test_fuzz_round_trip(shape, scale, zero_point, mask, seed):
    tensor = np.random.default_rng(seed).integers(-128, 128, shape, dtype=np.int8)
    decoded = decode_payload(encode_payload(tensor, scale, zero_point, "00112233aabbccdd", mask))
    assert np.array_equal(decoded.tensor, tensor)
    assert (decoded.scale, decoded.zero_point, decoded.task_mask) == (scale, zero_point, mask)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(BASE) - 1), st.integers(1, 255))
def test_fuzz_single_byte_corruption_never_crashes(position, flip):
    corrupted = bytearray(BASE)
    corrupted[position] ^= flip
    try:
        decoded = decode_payload(bytes(corrupted))
    except WireFormatError:
        return
    assert decoded.tensor.size == 64  # a flip in the model id, mask or data still parses as a tensor
