"""Shared fixtures: a tiny model with fixed seeds, and checkpoints trained on the real digits."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dtconvert.model import DeviceTuningModel, ModelConfig

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"

# The tiny configuration goes through exactly the code the big ones do.
TINY = ModelConfig(
    image_size=8, in_channels=1, patch_size=2, device_dim=16, device_depth=2, device_heads=2,
    pool_at=(0, 1), bottleneck=4, cloud_dim=16, cloud_depth=1, cloud_heads=2, mlp_ratio=2.0,
    tasks=(("digit", 10), ("odd", 2)),
)


@pytest.fixture
def tiny_model() -> DeviceTuningModel:
    torch.manual_seed(0)
    return DeviceTuningModel(TINY).eval()


def dtconvert_exe() -> list[str]:
    """The console script as a user runs it (falls back to the module when not on PATH)."""
    exe = shutil.which("dtconvert", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "dtconvert.cli"]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run([*dtconvert_exe(), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def quick_ckpt(tmp_path_factory) -> Path:
    """A digits checkpoint after one epoch: real format, real data, seconds to make."""
    from dtconvert.recipe import load_recipe
    from dtconvert.train import train

    recipe = load_recipe(RECIPES / "digits.yaml")
    recipe.epochs = 1
    out = tmp_path_factory.mktemp("quick")
    train(recipe, out, show_progress=False)
    return out / "ckpt.pt"


@pytest.fixture(scope="session")
def digits_ckpt(tmp_path_factory) -> Path:
    """The digits recipe trained exactly as shipped (the accuracy claims are checked on it)."""
    from dtconvert.recipe import load_recipe
    from dtconvert.train import train

    out = tmp_path_factory.mktemp("digits")
    train(load_recipe(RECIPES / "digits.yaml"), out, show_progress=False)
    return out / "ckpt.pt"
