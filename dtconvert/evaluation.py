"""The images an export is judged on: its held-out split, the rest of its data, a user's folder.

Every image is preprocessed as the manifest says, so verify and the reference client see what
a phone would feed the device encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dtconvert.data import dataset_images, folder_images, image_files, load_task_data, normalize
from dtconvert.errors import UserError
from dtconvert.recipe import parse_recipe

HELDOUT, REST, FOLDER = "held-out", "rest", "folder"


@dataclass
class VerificationData:
    """Every image verify can reach, concatenated, with the set each came from.

    ``held-out`` is the checkpoint's held-out split (the only unbiased sample of unseen images,
    and the only one whose labels judge accuracy); ``rest`` is every other image of the data
    source (training and calibration images: agreement with the fp32 model needs no labels);
    ``folder`` is ``--data DIR``."""

    images: np.ndarray  # (N, C, H, W) float32, preprocessed as the manifest says
    labels: np.ndarray | None  # (N, tasks) int64, -1 where unknown; None when nothing is labelled
    index: np.ndarray  # (N,) the image's index in its source (data set index, or file number)
    sets: np.ndarray  # (N,) HELDOUT, REST or FOLDER
    description: str

    def names(self) -> list[str]:
        return [s for s in (HELDOUT, REST, FOLDER) if np.any(self.sets == s)]

    def counts(self) -> dict[str, int]:
        return {s: int(np.sum(self.sets == s)) for s in self.names()}


def verification_data(manifest: dict, data: Path | None, digits: bool, limit: int | None) -> VerificationData:
    """Every image of the export's own data source (held-out split and the rest), plus ``data``'s.

    ``limit`` takes the first N of each set."""
    pre = manifest["device_input"]["preprocessing"]
    source = manifest["data"]["source"].get("kind")
    if digits and source != "digits":
        raise UserError(f"--digits: this model was trained on {source!r} data, not the bundled digits; pass --data DIR")
    parts: list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray]] = []  # (set, images, labels, index)
    described = []
    recipe = manifest["data"]["recipe"]
    try:
        parsed = parse_recipe({k: v for k, v in recipe.items() if k != "name"}, "stored recipe", recipe["name"])
        task_data = load_task_data(parsed)
    except UserError as e:
        if data is None:
            raise UserError(f"cannot read the held-out data the manifest names ({e}); pass --data DIR") from None
        task_data = None
    if task_data is not None:
        heldout = np.asarray(manifest["data"]["heldout"], dtype=np.int64)
        if len(heldout) and (heldout.max() >= len(task_data) or heldout.min() < 0):
            raise UserError(f"manifest.json: data.heldout names image {int(heldout.max())}, but the data source has {len(task_data)}")
        rest = np.setdiff1d(np.arange(len(task_data)), heldout)
        for name, rows in ((HELDOUT, heldout), (REST, rest)):
            rows = rows[:limit] if limit is not None else rows
            if len(rows):
                images = normalize(task_data.images01(rows), pre["mean"], pre["std"]).numpy().astype(np.float32)
                parts.append((name, images, task_data.labels[rows], rows))
        described.append(f"{source} ({len(task_data)} images)")
    if data is not None:
        images = folder_images(data, pre)
        labels = folder_labels(data, manifest)
        rows = np.arange(len(images))
        if limit is not None:
            images, rows, labels = images[:limit], rows[:limit], None if labels is None else labels[:limit]
        parts.append((FOLDER, images, labels, rows))
        described.append(f"folder {data}")
    if not parts or sum(len(p[1]) for p in parts) == 0:
        raise UserError("no images to verify on")
    n_tasks = len(manifest["tasks"])
    label_parts = [p[2] if p[2] is not None else np.full((len(p[1]), n_tasks), -1, dtype=np.int64) for p in parts]
    return VerificationData(
        images=np.concatenate([p[1] for p in parts]),
        labels=np.concatenate(label_parts) if any(p[2] is not None for p in parts) else None,
        index=np.concatenate([p[3] for p in parts]),
        sets=np.concatenate([np.full(len(p[1]), p[0]) for p in parts]),
        description=" + ".join(described),
    )


def heldout_images(manifest: dict, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` (all if None) held-out images of the bundled digits and their labels."""
    source = manifest["data"]["source"].get("kind")
    if source != "digits":
        raise UserError(f"--digits: this model was trained on {source!r} data, not the bundled digits; pass --data DIR")
    index = manifest["data"]["heldout"][:limit] if limit is not None else manifest["data"]["heldout"]
    try:
        images, labels = dataset_images(manifest["data"]["recipe"], index, manifest["device_input"]["preprocessing"])
    except UserError as e:
        raise UserError(f"cannot read the held-out data the manifest names ({e}); pass --data DIR") from None
    if len(images) == 0:
        raise UserError("no held-out images to verify on")
    return images, labels


def folder_labels(root: Path, manifest: dict) -> np.ndarray | None:
    """Labels of the first task when ``root`` has one sub-folder per label name, else None."""
    names = manifest["tasks"][0]["labels"]
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders or any(f not in names for f in folders):
        return None
    labels = [names.index(f.relative_to(root).parts[0]) for f in image_files(root)]
    column = np.full((len(labels), len(manifest["tasks"])), -1, dtype=np.int64)
    column[:, 0] = labels
    return column
