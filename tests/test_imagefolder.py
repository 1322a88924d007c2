"""The imagefolder source on real images (PNG files written from the bundled digits)."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dtconvert.checkpoint import load_checkpoint
from dtconvert.data import digits_uint8
from dtconvert.errors import UserError
from dtconvert.recipe import parse_recipe
from dtconvert.train import train

CLASSES = ["zero", "one", "two"]


def _make_folder(root, per_class=20):
    images, digits = digits_uint8()
    rows = ["file,parity"]
    for digit, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(digits == digit)[:per_class]):
            rel = f"{name}/{i:03d}.png"
            Image.fromarray(images[index]).save(root / rel)
            rows.append(f"{rel},{'odd' if digit % 2 else 'even'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _recipe(root, **overrides):
    raw = {
        "data": "imagefolder", "data_dir": str(root), "labels_csv": str(root / "labels.csv"),
        "tasks": ["class", "parity"], "task_classes": [3, 2], "image_size": 16, "patch_size": 4,
        "pool_at": [1], "device_depth": 2, "cloud_depth": 1, "epochs": 1, "batch_size": 16,
        **overrides,
    }
    return parse_recipe(raw, "test.yaml", "folder")


def test_imagefolder_trains_with_csv_tasks(tmp_path):
    root = _make_folder(tmp_path / "data")
    train(_recipe(root), tmp_path / "run", show_progress=False)
    ckpt = load_checkpoint(tmp_path / "run" / "ckpt.pt")
    assert ckpt["tasks"] == [{"name": "class", "labels": sorted(CLASSES)}, {"name": "parity", "labels": ["even", "odd"]}]
    assert ckpt["data"]["source"]["kind"] == "imagefolder" and ckpt["data"]["source"]["images"] == 60


def test_folder_with_no_images(tmp_path):
    root = tmp_path / "empty"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / "readme.txt").write_text("not an image")
    with pytest.raises(UserError, match="no images found"):
        train(_recipe(root, tasks=["class"], task_classes=[2], labels_csv=None), tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


def test_csv_missing_a_row(tmp_path):
    root = _make_folder(tmp_path / "data")
    lines = (root / "labels.csv").read_text().splitlines()
    (root / "labels.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(UserError, match="no row for image 'two/019.png'"):
        train(_recipe(root), tmp_path / "run", show_progress=False)


def test_class_count_must_match_recipe(tmp_path):
    root = _make_folder(tmp_path / "data")
    with pytest.raises(UserError, match="has 3 class folders"):
        train(_recipe(root, task_classes=[4, 2]), tmp_path / "run", show_progress=False)


@pytest.mark.slow
def test_torchrun_ddp_two_processes(tmp_path):
    """Multi-process training goes through PyTorch's own DDP (gloo on CPU) under torchrun."""
    import yaml

    root = _make_folder(tmp_path / "data")
    recipe = _recipe(root).to_dict()
    recipe.pop("name")
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump(recipe))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run([*torchrun, "-m", "dtconvert.cli", "train", str(path), "--out", str(tmp_path / "ddp"), "-q"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ckpt = load_checkpoint(tmp_path / "ddp" / "ckpt.pt")
    assert ckpt["metrics"]["world_size"] == 2
