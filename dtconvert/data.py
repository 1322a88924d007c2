"""Multi-task data: scikit-learn's bundled digits, or an image folder of the user's own.

Every sample carries one label per task. Images are handed out as float tensors in [0, 1],
already resized to the recipe's input size; normalisation ((x - mean) / std) is applied by
:func:`normalize` so the same code serves training, evaluation and calibration.

Preprocessing is defined so a phone can reproduce it exactly: uint8 pixels → ``x / 255`` →
``torch.nn.functional.interpolate(mode=resize, align_corners=False, antialias=False)`` to
``size`` → ``(x - mean) / std`` per channel.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dtconvert.errors import UserError
from dtconvert.recipe import Recipe, parse_recipe

DEFAULT_CALIBRATION_IMAGES = 128
MIN_CALIBRATION_IMAGES = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DIGIT_LABELS = {
    "digit": [str(d) for d in range(10)],
    "odd": ["even", "odd"],
    "mod3": ["0", "1", "2"],
    "high": ["0-4", "5-9"],
}


def digits_task_label(task: str, digit: np.ndarray) -> np.ndarray:
    return {"digit": digit, "odd": digit % 2, "mod3": digit % 3, "high": (digit >= 5).astype(digit.dtype)}[task]


def resize_unit_images(images01: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Resize (N, C, h, w) images in [0, 1] to (N, C, size, size) the way the device must."""
    if images01.shape[-2:] == (size, size):
        return images01
    kwargs = {"align_corners": False, "antialias": False} if mode == "bilinear" else {}
    return F.interpolate(images01, size=(size, size), mode=mode, **kwargs)


def normalize(images01: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=images01.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images01.dtype).view(1, -1, 1, 1)
    return (images01 - m) / s


def digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 bundled 8×8 digits as uint8 images (N, 8, 8) in 0..255, and their digits."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # The source pixels are 0..16; map them onto the 0..255 range a camera image has.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


@dataclass
class TaskData:
    """All samples of a data source, with one label column per task."""

    tasks: list[tuple[str, list[str]]]  # (task name, label names)
    labels: np.ndarray  # (N, tasks) int64
    source: dict  # how to find the data again (stored in checkpoints)
    _images01: torch.Tensor | None = None  # in-memory sources: (N, C, S, S) in [0, 1]
    _files: list[Path] | None = None  # file sources
    _size: int = 0
    _channels: int = 1
    _resize: str = "bilinear"

    def __len__(self) -> int:
        return len(self.labels)

    def images01(self, index: np.ndarray | list[int]) -> torch.Tensor:
        """Resized images in [0, 1] for the given sample indices, (len(index), C, S, S)."""
        index = np.asarray(index, dtype=np.int64)
        if self._images01 is not None:
            return self._images01[torch.from_numpy(index)]
        assert self._files is not None
        return torch.cat([self._load_file(self._files[i]) for i in index])

    def _load_file(self, path: Path) -> torch.Tensor:
        return load_image_file(path, self._size, self._channels, self._resize)


def load_image_file(path: Path, size: int, channels: int, resize: str) -> torch.Tensor:
    """One image file → (1, C, size, size) float in [0, 1], resized as the device does."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as e:
        raise UserError(f"{path}: not a readable image ({e.__class__.__name__})") from None
    t = torch.from_numpy(arr.copy()).float().div(255.0)
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    return resize_unit_images(t.unsqueeze(0), size, resize)


def image_files(root: Path) -> list[Path]:
    """Image files under ``root``, recursively, in a stable order."""
    return [f for f in sorted(root.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]


def load_task_data(recipe: Recipe) -> TaskData:
    """Load the recipe's data source with a label column for each of its tasks."""
    if recipe.data == "digits":
        images, digits = digits_uint8()
        unit = torch.from_numpy(images).float().div(255.0).unsqueeze(1)
        labels = np.stack([digits_task_label(t, digits) for t in recipe.tasks], axis=1)
        return TaskData(
            tasks=[(t, DIGIT_LABELS[t]) for t in recipe.tasks],
            labels=labels,
            source={"kind": "digits", "images": len(digits)},
            _images01=resize_unit_images(unit, recipe.image_size, recipe.resize),
        )
    return _load_imagefolder(recipe)


def _load_imagefolder(recipe: Recipe) -> TaskData:
    if recipe.data_dir is None:
        raise UserError(f"recipe {recipe.name}: data 'imagefolder' needs the key 'data_dir'")
    root = Path(recipe.data_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: image folder does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files, first_labels = [], []
    for label, name in enumerate(classes):
        for f in image_files(root / name):
            files.append(f)
            first_labels.append(label)
    if not files:
        raise UserError(f"{root}: no images found (expected one sub-folder per class holding {', '.join(IMAGE_SUFFIXES)} files)")
    expected = recipe.resolved_task_classes()
    if len(classes) != expected[0]:
        raise UserError(
            f"{root}: has {len(classes)} class folders but the recipe's task {recipe.tasks[0]!r} declares {expected[0]} classes"
        )
    columns = [np.asarray(first_labels, dtype=np.int64)]
    tasks = [(recipe.tasks[0], classes)]
    if len(recipe.tasks) > 1:
        extra_columns, extra_tasks = _read_labels_csv(recipe, root, files)
        columns += extra_columns
        tasks += extra_tasks
    return TaskData(
        tasks=tasks,
        labels=np.stack(columns, axis=1),
        source={"kind": "imagefolder", "root": str(root), "images": len(files)},
        _files=files,
        _size=recipe.image_size,
        _channels=recipe.in_channels,
        _resize=recipe.resize,
    )


def _read_labels_csv(recipe: Recipe, root: Path, files: list[Path]) -> tuple[list[np.ndarray], list[tuple[str, list[str]]]]:
    """Labels of the tasks after the first from a CSV: a ``file`` column (relative to the root)."""
    if recipe.labels_csv is None:
        raise UserError(f"recipe {recipe.name}: tasks {recipe.tasks[1:]} need a 'labels_csv' with their labels")
    path = Path(recipe.labels_csv).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: labels CSV does not exist")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in ["file", *recipe.tasks[1:]] if c not in header]
        if missing:
            raise UserError(f"{path}: missing column {missing[0]!r} (header: {', '.join(header)})")
        rows = {row["file"]: row for row in reader}
    columns, tasks = [], []
    for task, classes in zip(recipe.tasks[1:], recipe.resolved_task_classes()[1:], strict=True):
        values = []
        for f in files:
            rel = f.relative_to(root).as_posix()
            if rel not in rows:
                raise UserError(f"{path}: no row for image {rel!r}")
            values.append(rows[rel][task])
        names = sorted(set(values))
        if len(names) != classes:
            raise UserError(f"{path}: column {task!r} has {len(names)} distinct labels but the recipe declares {classes}")
        lookup = {n: i for i, n in enumerate(names)}
        columns.append(np.asarray([lookup[v] for v in values], dtype=np.int64))
        tasks.append((task, names))
    return columns, tasks


def stratified_split(labels: np.ndarray, heldout_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Fixed stratified train/held-out split on the first task's labels."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    try:
        train, heldout = train_test_split(index, test_size=heldout_fraction, stratify=labels[:, 0], random_state=seed)
    except ValueError as e:  # too few images of some class to stratify
        raise UserError(f"cannot split the data {heldout_fraction:.0%} held out: {e}") from None
    return sorted(int(i) for i in train), sorted(int(i) for i in heldout)


# ---- images as the exported model sees them (calibration, verification) ---------------------


def dataset_images(recipe: dict, index: list[int], preprocessing: dict) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed images (N, C, H, W) float32 and their labels (N, tasks) for sample indices
    of the data source a recipe names (as stored in a checkpoint or a manifest)."""
    parsed = parse_recipe({k: v for k, v in recipe.items() if k != "name"}, "stored recipe", recipe["name"])
    data = load_task_data(parsed)
    rows = np.asarray(index, dtype=np.int64)
    images = normalize(data.images01(rows), preprocessing["mean"], preprocessing["std"]).numpy().astype(np.float32)
    return images, data.labels[rows]


def checkpoint_images(ckpt: dict, split: str, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed images and labels from the checkpoint's own data.

    ``split`` is "train" or "heldout"; ``count`` takes the first N of a fixed shuffle of it.
    """
    index = np.asarray(ckpt["data"]["split"][split], dtype=np.int64)
    if count is not None:
        index = np.random.default_rng(0).permutation(index)[:count]
    return dataset_images(ckpt["recipe"], index.tolist(), ckpt["preprocessing"])


def folder_images(root: Path, preprocessing: dict) -> np.ndarray:
    """Every image under ``root``, preprocessed as the checkpoint says."""
    if not root.is_dir():
        raise UserError(f"{root}: calibration folder does not exist")
    files = image_files(root)
    if len(files) < MIN_CALIBRATION_IMAGES:
        found = "no images" if not files else f"only {len(files)} images"
        raise UserError(f"{root}: calibration folder has {found}; at least {MIN_CALIBRATION_IMAGES} are needed")
    size, channels = preprocessing["size"][0], preprocessing["channels"]
    unit = torch.cat([load_image_file(f, size, channels, preprocessing["resize"]) for f in files])
    return normalize(unit, preprocessing["mean"], preprocessing["std"]).numpy().astype(np.float32)


def calibration_images(ckpt: dict, calib: str | None) -> tuple[np.ndarray, dict]:
    """Resolve ``--calib`` (None, a count, or a folder) to images and a description for the manifest."""
    if calib is None or calib.isdigit():
        count = DEFAULT_CALIBRATION_IMAGES if calib is None else int(calib)
        if count < MIN_CALIBRATION_IMAGES:
            raise UserError(f"--calib {count}: at least {MIN_CALIBRATION_IMAGES} calibration images are needed")
        available = len(ckpt["data"]["split"]["train"])
        if count > available:
            raise UserError(f"--calib {count}: the checkpoint's training split has only {available} images")
        try:
            images, _ = checkpoint_images(ckpt, "train", count)
        except UserError as e:
            raise UserError(f"cannot read the checkpoint's own training data for calibration ({e}); pass --calib DIR") from None
        return images, {"source": "checkpoint training split", "images": count}
    images = folder_images(Path(calib), ckpt["preprocessing"])
    return images, {"source": "folder", "path": str(calib), "images": len(images)}
