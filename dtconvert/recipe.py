"""Recipes: flat YAML files read into one dataclass, from which the model config is built.

A recipe names its data source, its tasks, the architecture and the training schedule. Every
key is a field of :class:`Recipe`; an unknown key or a value of the wrong type is a
:class:`UserError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from dtconvert.errors import UserError
from dtconvert.model import Architecture, ModelConfig

# Class counts of the tasks the bundled digits source can label.
DIGITS_TASKS = {"digit": 10, "odd": 2, "mod3": 3, "high": 2}
DATA_SOURCES = ("digits", "imagefolder")
TUNE_MODES = ("none", "device", "qat")


@dataclass(frozen=True, kw_only=True)
class Recipe(Architecture):
    """A recipe: its data source and tasks, the preprocessing, the architecture (inherited: declared
    once, in :class:`~dtconvert.model.Architecture`) and the training schedule."""

    name: str
    # data
    data: str = "digits"
    data_dir: str | None = None  # imagefolder root: one sub-folder per class of the first task
    labels_csv: str | None = None  # imagefolder: file,<task>,<task>... columns for the other tasks
    tasks: list[str] = field(default_factory=lambda: ["digit", "odd"])
    task_classes: list[int] | None = None  # required for imagefolder; derived for digits
    heldout_fraction: float = 0.2
    # preprocessing (device input); image_size and in_channels are architecture fields
    resize: str = "bilinear"
    mean: list[float] = field(default_factory=lambda: [0.5])
    std: list[float] = field(default_factory=lambda: [0.5])
    # training
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    augment: bool = True  # random translation up to 1/8 of the image side
    wire_noise: float = 0.0  # training-only Gaussian noise on the wire tensor, as a fraction of its std
    gradnorm_alpha: float = 1.5
    gradnorm_lr: float = 0.025
    seed: int = 0
    num_workers: int = 0
    tune: str = "none"  # "device": freeze the cloud trunk, train the device half + new task heads; "qat": the same, int8-static in the loop
    # quantization-aware device tuning (tune: qat, dtconvert/qat.py): its own short schedule
    qat_epochs: int = 3  # ~25 % of the digits recipe's training time (benchmarks/qat.py)
    qat_lr: float = 3e-4
    qat_consistency: float = 100.0  # weight of ‖wire_int8 − wire_fp32‖² / ‖wire_fp32‖² beside the task losses

    def model_config(self) -> ModelConfig:
        return ModelConfig(**self.architecture(), tasks=tuple(zip(self.tasks, self.resolved_task_classes(), strict=True)))

    def resolved_task_classes(self) -> list[int]:
        if self.data == "digits" and self.task_classes is None:
            return [DIGITS_TASKS[t] for t in self.tasks]
        assert self.task_classes is not None  # checked in load_recipe
        return list(self.task_classes)

    def preprocessing(self) -> dict:
        """What the device must do to a uint8 image before the encoder (stored in checkpoints)."""
        return {
            "size": [self.image_size, self.image_size],
            "channels": self.in_channels,
            "layout": "NCHW",
            "resize": self.resize,
            "scale": 1.0 / 255.0,  # uint8 pixel → [0, 1], then (x - mean) / std per channel
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "pool_at": list(self.pool_at)}


def _type_ok(value: object, annotation: object) -> bool:
    """Check a YAML value against a field annotation (the few shapes recipes use)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is tuple:  # tuple[int, ...]: a YAML list
        item = typing.get_args(annotation)[0]
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    raise TypeError(f"unsupported recipe annotation {annotation!r}")


def _type_name(annotation: object) -> str:
    """How a recipe's author reads a field's type: YAML has lists, not tuples."""
    if typing.get_origin(annotation) is tuple:
        return f"list[{_type_name(typing.get_args(annotation)[0])}]"
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


def parse_recipe(raw: object, source: str, name: str) -> Recipe:
    """Validate a recipe mapping (from YAML or a checkpoint) and build the dataclass."""
    if not isinstance(raw, dict):
        raise UserError(f"{source}: a recipe must be a YAML mapping of keys to values")
    hints = typing.get_type_hints(Recipe)
    for key, value in raw.items():
        if key not in hints:
            raise UserError(f"{source}: unknown key {key!r} (known keys: {', '.join(sorted(hints))})")
        if not _type_ok(value, hints[key]):
            raise UserError(f"{source}: key {key!r} must be {_type_name(hints[key])}, got {value!r}")
    recipe = Recipe(**{"name": name, **raw})
    _check_values(recipe, source)
    return recipe


def _check_values(r: Recipe, source: str) -> None:
    if r.data not in DATA_SOURCES:
        raise UserError(f"{source}: key 'data' must be one of {', '.join(DATA_SOURCES)}, got {r.data!r}")
    if r.tune not in TUNE_MODES:
        raise UserError(f"{source}: key 'tune' must be one of {', '.join(TUNE_MODES)}, got {r.tune!r}")
    if r.data == "digits":
        unknown = [t for t in r.tasks if t not in DIGITS_TASKS]
        if unknown:
            raise UserError(f"{source}: the digits source has no task {unknown[0]!r} (it has {', '.join(DIGITS_TASKS)})")
        if r.in_channels != 1:
            raise UserError(f"{source}: the digits source is grayscale, so 'in_channels' must be 1")
    if r.task_classes is None and r.data != "digits":
        raise UserError(f"{source}: key 'task_classes' is required for data '{r.data}' (one class count per task)")
    if r.task_classes is not None and len(r.task_classes) != len(r.tasks):
        raise UserError(f"{source}: 'task_classes' has {len(r.task_classes)} entries but 'tasks' has {len(r.tasks)}")
    for key in ("mean", "std"):
        if len(getattr(r, key)) != r.in_channels:
            raise UserError(f"{source}: key {key!r} needs {r.in_channels} values (one per input channel)")
    if any(s <= 0 for s in r.std):
        raise UserError(f"{source}: key 'std' must be positive")
    if r.resize not in ("bilinear", "nearest"):
        raise UserError(f"{source}: key 'resize' must be 'bilinear' or 'nearest', got {r.resize!r}")
    if not 0.0 < r.heldout_fraction < 1.0:
        raise UserError(f"{source}: key 'heldout_fraction' must be between 0 and 1, got {r.heldout_fraction}")
    for key in ("epochs", "batch_size"):
        if getattr(r, key) < 1:
            raise UserError(f"{source}: key {key!r} must be at least 1")
    problems = r.model_config().validate()
    if problems:
        raise UserError(f"{source}: the model it describes is invalid: {'; '.join(problems)}")


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file; its name is the file's stem."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such recipe file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not valid YAML ({first})") from None
    if raw is None:
        raise UserError(f"{path}: the recipe is empty")
    if isinstance(raw, dict) and "name" in raw:
        name = raw.pop("name")
        if not isinstance(name, str):
            raise UserError(f"{path}: key 'name' must be str, got {name!r}")
    else:
        name = path.stem
    return parse_recipe(raw, str(path), name)


def bundled_recipe_dir() -> Path:
    from importlib.resources import files

    return Path(str(files("dtconvert.recipes")))


def resolve_recipe(arg: str) -> Path:
    """A path as given, or a bundled recipe by name ('digits' → recipes/digits.yaml)."""
    path = Path(arg)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in arg:
        return path
    bundled = bundled_recipe_dir() / f"{arg}.yaml"
    if bundled.is_file():
        return bundled
    names = ", ".join(sorted(p.stem for p in bundled_recipe_dir().glob("*.yaml")))
    raise UserError(f"{arg}: no such recipe file or bundled recipe (bundled: {names})")
