"""Write the wire quantization golden vector (run from the repository root; the output is committed).

    python tests/golden/wire/make_quantize_golden.py

``quantize/quantize.json`` holds cases of ``dtconvert.wire.quantize_wire``: float32 encoder outputs
(as bit patterns, so no language has to round a decimal), a scale (also as float32 bits) and a
zero point, and the int8 values every client must produce. The cases cover round-half-to-even
ties, clamping at both ends (infinities included), and values whose float32 quotient ``x / scale``
rounds differently from the float64 one, so a client that divides in double fails them. It sits
in a subfolder because every ``*.json`` directly in this folder is a wire vector with a ``.bin``.
"""

import json
from pathlib import Path

import numpy as np

from dtconvert.wire import quantize_wire

HERE = Path(__file__).parent


def bits(values) -> list[str]:
    return [f"0x{int(b):08x}" for b in np.asarray(values, dtype=np.float32).view(np.uint32)]


def _quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    with np.errstate(over="ignore"):  # the overflow cases divide to ±inf on purpose
        return quantize_wire(x, scale, zero_point)


def case(name: str, x, scale: float, zero_point: int) -> dict:
    x = np.asarray(x, dtype=np.float32)
    scale32 = np.float32(scale)
    return {
        "name": name,
        "scale": float(scale32),
        "scale_float32_bits": bits([scale32])[0],
        "zero_point": zero_point,
        "x_float32_bits": bits(x),
        "x": [repr(float(v)) for v in x],  # for reading only; the bits are the input
        "q": _quantize(x, float(scale32), zero_point).tolist(),
    }


def float32_division_cases(scale: float, zero_point: int, count: int) -> np.ndarray:
    """Values whose int8 differs when the quotient x / scale is computed in float64 instead of float32."""
    rng = np.random.default_rng(20261121)
    s = np.float32(scale)
    found: list[np.float32] = []
    while len(found) < count:
        # Near-ties k + 0.5 steps of the scale, nudged one float32 ulp either way, inside the int8 range.
        k = rng.integers(-120, 120, 4096)
        x = ((k + 0.5) * s).astype(np.float32)
        x = np.nextafter(x, np.where(rng.random(4096) < 0.5, np.inf, -np.inf).astype(np.float32))
        q32 = quantize_wire(x, float(s), zero_point)
        q64 = np.clip(np.round(x.astype(np.float64) / np.float64(s)) + zero_point, -128, 127).astype(np.int8)
        found.extend(x[q32 != q64][: count - len(found)])
    return np.array(found, dtype=np.float32)


def main() -> None:
    rng = np.random.default_rng(20261121)
    cases = [
        # x / 0.5 lands exactly on .5: ties go to the even integer, on both sides of zero.
        case("ties_to_even", [0.25, 0.75, 1.25, 1.75, -0.25, -0.75, -1.25, -1.75, 0.0, -0.0], 0.5, 0),
        case("ties_to_even_with_zero_point", [0.25, 0.75, -0.25, -0.75, 63.25, -64.25], 0.5, -3),
        # Clamping after adding the zero point, and the infinities an overflowing encoder gives.
        case("clamp", [1000.0, -1000.0, 63.0, 63.5, 64.0, -64.0, -64.5, -65.0, np.inf, -np.inf], 0.5, 0),
        case("clamp_with_zero_point", [1.4, 1.5, -1.6, -1.7, 3.0e38, -3.0e38], 0.0125, 7),
        # A realistic digits wire tensor with the scale and zero point of a digits export.
        case("digits_like", rng.normal(0.0, 1.5, 64), 0.028273, 4),
        case("float32_division", float32_division_cases(0.028273, 4, 16), 0.028273, 4),
    ]
    text = json.dumps({
        "rule": "q = clamp(round_half_even(float32(x) / float32(scale)) + zero_point, -128, 127)",
        "source": "dtconvert.wire.quantize_wire",
        "cases": cases,
    }, indent=1) + "\n"
    (HERE / "quantize").mkdir(exist_ok=True)
    (HERE / "quantize" / "quantize.json").write_text(text)


if __name__ == "__main__":
    main()
