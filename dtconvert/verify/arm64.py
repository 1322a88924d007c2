"""``verify --arch arm64``: the ExecuTorch and LiteRT artifacts on emulated phone CPUs, same checks as on x86.

For each CPU profile (``--cpu a53,a76``) each artifact runs on every verification image in the
arm64 root (:mod:`dtconvert.targets.arm64`) and goes through the same wire and end-to-end checks,
under the same bounds, as its x86 run; its rows are labelled with the profile's CPU
("ExecuTorch XNNPACK · arm64 cortex-a53"). Beside the checks, each row records how far the arm64
wire is from the x86 wire of the same runtime (max abs, SQNR, and how many int8 wire values
moved): ExecuTorch against the same C++ runner built for x86-64 (runner against runner; that
runner's own distance from ExecuTorch's Python runtime is in ``platforms``), LiteRT against the
host's LiteRT run. ``report.platforms`` names each profile, its QEMU CPU and the CPU features the
emulated process saw (AT_HWCAP), so a profile is shown to change what XNNPACK sees.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from dtconvert.targets import RUNTIMES
from dtconvert.targets.arm64 import PROFILES, QEMU_VERSION, arm64_root
from dtconvert.wire import quantize_wire

# target → the runtime key whose bounds an arm64 run is held to
ARM64_RUNTIMES = {"executorch": "executorch", "tflite": "litert"}


def label(key: str, profile: str) -> str:
    return f"{RUNTIMES[key]} · arm64 {PROFILES[profile][0]}"


def distance(arm: np.ndarray, x86: np.ndarray, scale: float, zero_point: int) -> dict:
    """How far an arm64 wire is from the x86 one: max abs, SQNR (dB; None when identical), int8 values moved."""
    noise = float(((arm.astype(np.float64) - x86) ** 2).sum())
    moved = int((quantize_wire(arm, scale, zero_point) != quantize_wire(x86, scale, zero_point)).sum())
    sqnr = None if noise == 0 else round(10 * np.log10(float((x86.astype(np.float64) ** 2).sum()) / noise), 2)
    return {"max_abs": float(np.abs(arm - x86).max()), "sqnr_db": sqnr, "int8_values_moved": moved, "int8_values": int(arm.size)}


class Arm64Checks:
    def __init__(self, profiles: list[str], log=print) -> None:
        self.profiles = profiles
        self.root = arm64_root(log=log)
        shown = {p: {"cpu": PROFILES[p][0], "stands_for": PROFILES[p][1], "features": self.root.features(p)} for p in profiles}
        self.platform: dict[str, object] = {"emulator": f"qemu-aarch64 {QEMU_VERSION}", "profiles": shown}
        self.runner_vs_python: dict[str, dict] = {}  # artifact → the x86 C++ runner against ExecuTorch's Python runtime
        log("✓ arm64 root: " + "; ".join(f"{p} ({v['cpu']}): {' '.join(v['features'])}" for p, v in shown.items()))

    def check(self, verification, entry: dict, host: dict[str, np.ndarray]) -> Iterator[str]:
        """Each profile's run of one artifact through ``verification``'s checks; yields each label checked."""
        verification.report.platforms["arm64"] = self.platform
        key = ARM64_RUNTIMES.get(entry["target"])
        if key is None:
            return
        path = verification.export_dir / entry["path"]
        wire = verification.manifest["wire"]
        images = verification.evaluation.images
        x86: np.ndarray | None
        if key == "executorch":
            x86 = self.root.executorch_x86(path, images)
            if "executorch" in host:
                runner_vs_python = distance(x86, host["executorch"], wire["scale"], wire["zero_point"])
                self.runner_vs_python[entry["path"]] = runner_vs_python
                self.platform["x86_64_runner_vs_python_runtime"] = self.runner_vs_python
        else:
            x86 = host.get("litert")
        for profile in self.profiles:
            run = (
                (lambda x, p=profile: self.root.executorch(path, x, p))
                if key == "executorch"
                else (lambda x, p=profile: self.root.litert(path, x, p))
            )
            arm = verification.check_runtime(entry, key, label(key, profile), run)
            if arm is None:
                continue
            if x86 is not None:
                verification.report.metrics[entry["path"]][label(key, profile)]["vs_x86"] = distance(
                    arm, x86, wire["scale"], wire["zero_point"]
                )
            yield label(key, profile)
