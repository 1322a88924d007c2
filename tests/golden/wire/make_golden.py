"""Write the wire-format golden vectors (run from the repository root; the output is committed).

    python tests/golden/wire/make_golden.py

Each vector is a JSON file describing a tensor and the exact bytes that encode it (.bin). The
Python, Kotlin and Swift implementations must all reproduce the .bin byte for byte; the scale is
given both as a decimal and as its float32 bit pattern so no language has to round a decimal.
"""

import json
from pathlib import Path

import numpy as np

from dtconvert.wire import encode_payload

HERE = Path(__file__).parent


def vector(name: str, tensor: np.ndarray, scale: float, zero_point: int, model_id: str, task_mask: int) -> None:
    scale32 = np.float32(scale)
    data = encode_payload(tensor, float(scale32), zero_point, model_id, task_mask)
    (HERE / f"{name}.bin").write_bytes(data)
    (HERE / f"{name}.json").write_text(json.dumps({
        "model_id": model_id, "task_mask": task_mask, "scale": float(scale32),
        "scale_float32_bits": f"0x{scale32.view(np.uint32):08x}", "zero_point": zero_point,
        "dtype": "int8", "shape": list(tensor.shape), "values": tensor.ravel().tolist(), "bytes": len(data),
    }, indent=1) + "\n")


def main() -> None:
    rng = np.random.default_rng(20261121)
    # A digits-sized message: one image, 8 tokens × 8 channels, all tasks.
    vector("digits_b1", rng.integers(-128, 128, (1, 8, 8), dtype=np.int8), 0.028273, 4, "0123456789abcdef", 0)
    # Batch of two, second task only, the int8 extremes, a negative zero point.
    extremes = np.array([[-128, 127, 0, -1], [1, -127, 126, 5]], dtype=np.int8).reshape(2, 1, 4)
    vector("batch2_extremes", extremes, 1.5e-3, -7, "ffeeddccbbaa9988", 0b10)


if __name__ == "__main__":
    main()
