"""Self-describing checkpoints: one file that ``torch.load(weights_only=True)`` reads.

Layout (plain dicts, lists, strings, numbers and tensors only)::

    format           "dtconvert-checkpoint"
    format_version   int (this release writes and reads FORMAT_VERSION)
    dtconvert_version, created (ISO 8601, UTC)
    model_config     ModelConfig.to_dict()
    state_dict       the DeviceTuningModel's weights
    tasks            [{"name": str, "labels": [str, ...]}, ...]
    preprocessing    {"size", "channels", "layout", "resize", "scale", "mean", "std"}
    data             {"source": {...}, "split": {"seed", "heldout_fraction", "train", "heldout"}}
    metrics          {"heldout": {task: accuracy}, "gradnorm_weights": [...], ...}
    recipe           the recipe the model was trained from
    init             null, or {"sha256", "tune"} of the checkpoint it was tuned from
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

from dtconvert.errors import UserError
from dtconvert.model import DeviceTuningModel, ModelConfig

FORMAT = "dtconvert-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("model_config", "state_dict", "tasks", "preprocessing", "data", "metrics")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_umask() -> int:
    mask = os.umask(0o022)  # read once, at import, before any thread exists
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path`` only if it succeeded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(staging: Path, out: Path) -> None:
    """Move a finished directory onto ``out``, replacing a previous one only at the end."""
    if out.exists():
        retired = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, retired)
        os.replace(staging, out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, out)


def save_checkpoint(path: str | Path, checkpoint: dict) -> None:
    checkpoint = {"format": FORMAT, "format_version": FORMAT_VERSION, **checkpoint}
    atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(path: str | Path) -> dict:
    """Load and check a checkpoint; any problem is a one-sentence :class:`UserError`."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise UserError(f"{path}: is not a file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any global it does not know; junk bytes fail as an unknown opcode.
        blocked = re.search(r"unsupported GLOBAL (\S+)", str(e), re.IGNORECASE)
        if blocked:
            raise UserError(
                f"{path}: refusing to load: the file needs the Python object {blocked.group(1)}, "
                "which could run arbitrary code (only weights_only checkpoints are accepted)"
            ) from None
        raise UserError(f"{path}: not a readable checkpoint (not a PyTorch file, or corrupted)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        raise UserError(f"{path}: not a readable checkpoint (truncated or not a PyTorch file: {_first_line(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path}: not a dtconvert checkpoint (no '{FORMAT}' header; was it written by 'dtconvert train'?)")
    version = ckpt.get("format_version")
    if not isinstance(version, int):
        raise UserError(f"{path}: checkpoint has no valid format_version")
    if version > FORMAT_VERSION:
        raise UserError(
            f"{path}: checkpoint format version {version} is newer than this dtconvert reads ({FORMAT_VERSION}); upgrade dtconvert"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"{path}: checkpoint is missing the key {missing[0]!r}")
    return ckpt


def model_config_of(ckpt: dict, path: str | Path = "checkpoint") -> ModelConfig:
    try:
        return ModelConfig.from_dict(ckpt["model_config"])
    except (TypeError, KeyError, ValueError) as e:
        raise UserError(f"{path}: invalid model_config ({_first_line(e)})") from None


def build_model(ckpt: dict, path: str | Path = "checkpoint") -> DeviceTuningModel:
    """Rebuild the model a checkpoint describes, weights loaded, in eval mode."""
    cfg = model_config_of(ckpt, path)
    try:
        model = DeviceTuningModel(cfg)
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, ValueError) as e:
        raise UserError(f"{path}: weights do not fit the model config ({_first_line(e)})") from None
    return model.eval()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
