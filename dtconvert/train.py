"""Multi-task training with GradNorm, and device tuning against a frozen shared cloud.

``train(recipe, out_dir)`` trains every parameter. With ``init`` and ``tune="device"`` it
loads a trained checkpoint, freezes the whole cloud side (input projection, trunk and the
heads of tasks the checkpoint already serves) and trains only the device encoder and the
heads of new tasks, so one cloud decoder keeps serving every device variant bit for bit.
``tune="qat"`` does the same with int8-static's fake quantization in the loop, on the
recipe's short QAT schedule (:mod:`dtconvert.qat`); it adds no tasks.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in PyTorch's own
DistributedDataParallel; GradNorm's task weights are averaged across ranks after each update.
"""

from __future__ import annotations

import math
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.console import Console

from dtconvert import __version__
from dtconvert.checkpoint import load_checkpoint, model_config_of, save_checkpoint, sha256_file
from dtconvert.data import TaskData, load_task_data, normalize, stratified_split
from dtconvert.errors import UserError
from dtconvert.gradnorm import GradNorm
from dtconvert.model import DeviceTuningModel, ModelConfig, TransformerLayer
from dtconvert.output import console as make_console
from dtconvert.recipe import Recipe


class _Batches(torch.utils.data.Dataset):
    """Dataset indexed by a list of sample indices, so a DataLoader hands out whole batches."""

    def __init__(self, data: TaskData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.images01(index), torch.from_numpy(self.data.labels[np.asarray(index)])


def _random_shift(images01: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels, filling with black."""
    n, _, h, w = images01.shape
    padded = F.pad(images01, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


def _lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def evaluate(
    model: DeviceTuningModel, data: TaskData, index: list[int], recipe_mean, recipe_std, device, batch_size: int = 256
) -> dict[str, float]:
    """Top-1 accuracy per task on the given samples."""
    model.eval()
    correct = np.zeros(len(data.tasks), dtype=np.int64)
    for start in range(0, len(index), batch_size):
        batch = index[start : start + batch_size]
        x = normalize(data.images01(batch), recipe_mean, recipe_std).to(device)
        logits = model(x)
        labels = data.labels[np.asarray(batch)]
        for t, (name, _) in enumerate(data.tasks):
            correct[t] += int((logits[name].argmax(1).cpu().numpy() == labels[:, t]).sum())
    return {name: float(correct[t] / len(index)) for t, (name, _) in enumerate(data.tasks)}


def _distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _prepare_tuning(recipe: Recipe, cfg: ModelConfig, init_path: Path) -> tuple[dict, dict]:
    """Check an init checkpoint fits the recipe; return it and its state dict."""
    init = load_checkpoint(init_path)
    init_cfg = model_config_of(init, init_path)
    theirs, ours = init_cfg.to_dict(), cfg.to_dict()  # plain lists, as the message shows them
    differ = [k for k in cfg.architecture() if theirs[k] != ours[k]]
    if differ:
        k = differ[0]
        raise UserError(f"{init_path}: its {k} is {theirs[k]!r} but recipe {recipe.name} says {ours[k]!r}; tuning keeps the architecture")
    new_tasks = dict(cfg.tasks)
    for name, classes in init_cfg.tasks:
        if new_tasks.get(name) != classes:
            raise UserError(f"{init_path}: serves task {name!r} ({classes} classes) which recipe {recipe.name} does not keep unchanged")
    return init, init["state_dict"]


def train(
    recipe: Recipe,
    out_dir: str | Path,
    init: str | Path | None = None,
    tune: str | None = None,
    console: Console | None = None,
    show_progress: bool = True,
) -> dict:
    """Train ``recipe``; write ``out_dir/ckpt.pt`` atomically and return the checkpoint dict."""
    console = console or make_console(stderr=True)
    tune = tune or recipe.tune
    if tune != "none" and init is None:
        raise UserError(f"recipe {recipe.name}: tune '{tune}' needs --init CHECKPOINT (the model whose cloud half is kept)")
    if tune == "qat":
        recipe = _qat_schedule(recipe)
    cfg = recipe.model_config()
    init_ckpt, init_state = (None, None)
    if init is not None:
        init_ckpt, init_state = _prepare_tuning(recipe, cfg, Path(init))
    data = load_task_data(recipe)
    split = _split(recipe, data, init_ckpt, init)

    rank, world, device = _distributed()
    torch.manual_seed(recipe.seed)
    model = DeviceTuningModel(cfg)
    new_tasks, shared = _trainable(model, cfg, init_state, "device" if tune == "qat" else tune)
    frozen_cloud = {k: v.clone() for k, v in model.decoder.state_dict().items()} if tune in ("device", "qat") else None
    net: torch.nn.Module = model
    start = time.perf_counter()  # QAT's cost includes preparing the quantized graph
    if tune == "qat":
        net, shared = _qat_model(recipe, init, new_tasks, world, model, data, split)
    model.to(device)
    history = _Loop(recipe, cfg, net, data, split["train"][rank::world], split["heldout"], device, world, rank).run(
        shared, console, show_progress
    )
    train_seconds = time.perf_counter() - start
    model.cpu().eval()
    if frozen_cloud is not None:
        _check_cloud_unmoved(model, frozen_cloud, new_tasks)
    qat_record = None
    if tune == "qat":
        assert init_ckpt is not None
        qat_record = _finish_qat(net, model, recipe, init_ckpt, train_seconds, data, split)
        history[-1]["heldout_fp32"] = qat_record["heldout"]["fp32"]

    checkpoint: dict[str, Any] = {
        "dtconvert_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_config": cfg.to_dict(),
        "state_dict": model.state_dict(),
        "tasks": [{"name": name, "labels": list(labels)} for name, labels in data.tasks],
        "preprocessing": recipe.preprocessing(),
        "data": {"source": data.source, "split": split},
        "metrics": {
            "heldout": history[-1]["heldout"],
            "train_loss": history[-1]["loss"],
            "gradnorm_weights": history[-1]["weights"],
            "history": history,
            "epochs": recipe.epochs,
            "train_seconds": round(train_seconds, 2),
            "world_size": world,
        },
        "recipe": recipe.to_dict(),
        "init": None if init is None else {"sha256": sha256_file(init), "tune": tune, "new_tasks": new_tasks},
    }
    if qat_record is not None:
        checkpoint["qat"] = qat_record
        checkpoint["metrics"]["heldout"] = qat_record["heldout"]["fp32"]  # the checkpoint's fp32 model, as for every other
    if rank == 0:
        save_checkpoint(Path(out_dir) / "ckpt.pt", checkpoint)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return checkpoint


def _qat_schedule(recipe: Recipe) -> Recipe:
    """QAT trains on the recipe's short schedule: its own epochs and learning rate, no warm-up."""
    import dataclasses

    # gradnorm_alpha 0: every task starts at its optimum, which GradNorm's rate term misreads (see digits-tune.yaml).
    return dataclasses.replace(recipe, epochs=recipe.qat_epochs, lr=recipe.qat_lr, warmup_epochs=0, wire_noise=0.0, gradnorm_alpha=0.0)


def _qat_model(recipe: Recipe, init, new_tasks: list[str], world: int, model, data, split) -> tuple[torch.nn.Module, torch.Tensor]:
    """The encoder prepared for int8-static with fake quantization, ranges from the training images."""
    from dtconvert.qat import QATModel, calibration_batch

    if new_tasks:
        raise UserError(
            f"--tune qat keeps the tasks of {init}; recipe {recipe.name} adds {', '.join(new_tasks)} (tune with --tune device first)"
        )
    if world > 1:
        raise UserError("--tune qat runs in one process; run it without torchrun")
    images = normalize(data.images01(split["train"]), recipe.mean, recipe.std).numpy()
    qat = QATModel(model, calibration_batch(images), recipe.qat_consistency)
    return qat, qat.shared_weight(model.cfg)


def _finish_qat(net, model, recipe: Recipe, parent: dict, train_seconds: float, data, split) -> dict:
    """The trained float weights into the model; what the checkpoint records about its QAT."""
    net.write_back(model)
    heldout_images = normalize(data.images01(split["heldout"]), recipe.mean, recipe.std)
    simulated = evaluate(net, data, split["heldout"], recipe.mean, recipe.std, torch.device("cpu"))  # with the final ranges
    record = net.record(recipe, parent, train_seconds, {n: round(a, 4) for n, a in simulated.items()}, heldout_images)
    fp32 = evaluate(model, data, split["heldout"], recipe.mean, recipe.std, torch.device("cpu"))
    record["heldout"]["fp32"] = {n: round(a, 4) for n, a in fp32.items()}
    return record


def _split(recipe: Recipe, data, init_ckpt: dict | None, init) -> dict:
    """The stored split: a tuned model is evaluated on exactly the images its init checkpoint held out."""
    if init_ckpt is not None:
        split = init_ckpt["data"]["split"]
        if init_ckpt["data"]["source"].get("images") != len(data):
            raise UserError(
                f"{init}: was trained on {init_ckpt['data']['source'].get('images')} images, recipe {recipe.name}'s data has {len(data)}"
            )
        train_idx, heldout_idx = list(split["train"]), list(split["heldout"])
        split_seed, heldout_fraction = split["seed"], split["heldout_fraction"]
    else:
        split_seed, heldout_fraction = 0, recipe.heldout_fraction
        train_idx, heldout_idx = stratified_split(data.labels, heldout_fraction, split_seed)
    return {"seed": split_seed, "heldout_fraction": heldout_fraction, "train": train_idx, "heldout": heldout_idx}


def _trainable(model: DeviceTuningModel, cfg: ModelConfig, init_state: dict | None, tune: str) -> tuple[list[str], torch.Tensor]:
    """Load the init weights, freeze what device tuning keeps; return the new tasks and GradNorm's shared weight."""
    new_tasks = [name for name, _ in cfg.tasks]
    if init_state is not None:
        missing, unexpected = model.load_state_dict(init_state, strict=False)
        assert not unexpected, unexpected  # _prepare_tuning checked tasks are a superset
        new_tasks = sorted({k.split(".")[2] for k in missing})
    if tune == "device":
        for name, p in model.decoder.named_parameters():
            p.requires_grad_(name.startswith("heads.") and name.split(".")[1] in new_tasks)
        # Casts: nn.ModuleList and the Linear-or-Identity bottleneck lose their element types.
        if cfg.bottleneck:
            return new_tasks, cast(torch.nn.Linear, model.encoder.bottleneck).weight
        return new_tasks, cast(TransformerLayer, model.encoder.layers[-1]).ffn.fc2.weight
    if cfg.cloud_depth:
        return new_tasks, cast(TransformerLayer, model.decoder.trunk[-1]).ffn.fc2.weight
    return new_tasks, model.decoder.input_proj.weight


def _check_cloud_unmoved(model: DeviceTuningModel, frozen_cloud: dict, new_tasks: list[str]) -> None:
    changed = [
        k
        for k, v in model.decoder.state_dict().items()
        if k in frozen_cloud and not torch.equal(v, frozen_cloud[k]) and not (k.startswith("heads.") and k.split(".")[1] in new_tasks)
    ]
    if changed:  # a bug, not a user error: the shared cloud must not move during device tuning
        raise AssertionError(f"device tuning changed shared cloud weights: {changed[:3]}")


class _Loop:
    """The epochs: AdamW with warm-up and cosine decay, GradNorm weighting, held-out accuracy per epoch."""

    def __init__(
        self, recipe: Recipe, cfg: ModelConfig, model, data, rank_train: list[int], heldout: list[int], device, world: int, rank: int
    ):
        self.recipe, self.cfg, self.model, self.data, self.device = recipe, cfg, model, data, device
        self.rank_train, self.heldout, self.world, self.rank = rank_train, heldout, world, rank
        self.net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
        trainable = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in trainable if p.ndim >= 2]
        no_decay = [p for p in trainable if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr
        )
        self.gradnorm = GradNorm(len(cfg.tasks), alpha=recipe.gradnorm_alpha, lr=recipe.gradnorm_lr).to(device)
        self.generator = torch.Generator().manual_seed(recipe.seed)
        self.steps_per_epoch = math.ceil(len(rank_train) / recipe.batch_size)
        self.total_steps = self.steps_per_epoch * recipe.epochs
        self.warmup_steps = self.steps_per_epoch * recipe.warmup_epochs
        self.max_shift = max(1, recipe.image_size // 8)
        self.step = 0

    def run(self, shared: torch.Tensor, console: Console, show_progress: bool) -> list[dict]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        recipe, names = self.recipe, self.cfg.task_names
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not show_progress or self.rank != 0,
            transient=True,
        )
        history: list[dict] = []
        with progress:
            epoch_bar = progress.add_task("epochs", total=recipe.epochs)
            step_bar = progress.add_task("steps", total=self.steps_per_epoch)
            for epoch in range(recipe.epochs):
                loss_mean = self.epoch(shared, lambda total: progress.reset(step_bar, total=total), lambda: progress.advance(step_bar))
                accuracy = evaluate(self.model, self.data, self.heldout, recipe.mean, recipe.std, self.device)
                record: dict[str, Any] = {
                    "epoch": epoch + 1,
                    "loss": {n: round(v, 4) for n, v in zip(names, loss_mean, strict=True)},
                    "weights": dict(zip(names, self.gradnorm.current(), strict=True)),
                    "heldout": {n: round(a, 4) for n, a in accuracy.items()},
                }
                history.append(record)
                if self.rank == 0:
                    console.print(
                        f"epoch {epoch + 1:>3}/{recipe.epochs}  "
                        + "  ".join(
                            f"{n}: loss {record['loss'][n]:.3f} w {record['weights'][n]:.2f} held-out {accuracy[n]:.1%}" for n in names
                        ),
                        highlight=False,
                    )
                progress.advance(epoch_bar)
        return history

    def epoch(self, shared: torch.Tensor, start_bar, advance_bar) -> list[float]:
        """One pass over this rank's training images; the mean loss per task."""
        recipe, cfg = self.recipe, self.cfg
        self.net.train()
        order = torch.randperm(len(self.rank_train), generator=self.generator).tolist()
        batches = [[self.rank_train[i] for i in order[s : s + recipe.batch_size]] for s in range(0, len(order), recipe.batch_size)]
        loader = torch.utils.data.DataLoader(_Batches(self.data), sampler=batches, batch_size=None, num_workers=recipe.num_workers)
        loss_sum = torch.zeros(len(cfg.tasks))
        start_bar(len(batches))
        for images01, labels in loader:
            if recipe.augment:
                images01 = _random_shift(images01, self.max_shift, self.generator)
            x = normalize(images01, recipe.mean, recipe.std).to(self.device)
            labels = labels.to(self.device)
            for group in self.optimizer.param_groups:
                group["lr"] = recipe.lr * _lr_factor(self.step, self.warmup_steps, self.total_steps)
            logits = self.net(x, wire_noise=recipe.wire_noise)
            losses = torch.stack([F.cross_entropy(logits[name], labels[:, t]) for t, name in enumerate(cfg.task_names)])
            total = self.gradnorm.step(losses, shared)
            if hasattr(self.model, "regularizer"):  # QAT's consistency term (dtconvert/qat.py)
                total = total + self.model.regularizer()
            if self.world > 1:
                with torch.no_grad():
                    dist.all_reduce(self.gradnorm.weights.data, op=dist.ReduceOp.AVG)
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
            loss_sum += losses.detach().cpu()
            self.step += 1
            advance_bar()
        return [float(v) / len(batches) for v in loss_sum]
