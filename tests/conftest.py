"""Shared fixtures: a tiny model with fixed seeds, and checkpoints trained on the real digits."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from dtconvert.model import DeviceTuningModel, ModelConfig


def _share_the_cores() -> None:
    """Under pytest-xdist each worker (and every process it starts) gets cores ÷ workers intra-op
    threads: torch's and TensorFlow's default of one thread per core in every worker oversubscribes
    the machine, and their spinning thread pools then slow everything down."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2:
        return
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ.setdefault(name, threads)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


_share_the_cores()

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"

# The tiny configuration goes through exactly the code the big ones do.
TINY = ModelConfig(
    image_size=8, in_channels=1, patch_size=2, device_dim=16, device_depth=2, device_heads=2,
    pool_at=(0, 1), bottleneck=4, cloud_dim=16, cloud_depth=1, cloud_heads=2, mlp_ratio=2.0,
    tasks=(("digit", 10), ("odd", 2)),
)


# Another shape for the int8 fidelity checks: three tasks, 12×12 input, one pooling stage, width
# 32 (so that LiteRT's and Core ML's 1024-element weight threshold quantizes the FFN and the
# attention projections too).
OTHER = ModelConfig(
    image_size=12, in_channels=1, patch_size=2, device_dim=32, device_depth=2, device_heads=2,
    pool_at=(1,), bottleneck=8, cloud_dim=32, cloud_depth=1, cloud_heads=2, mlp_ratio=2.0,
    tasks=(("digit", 10), ("odd", 2), ("mod3", 3)),
)


def built_once(tmp_path_factory, name: str, build: Callable[[Path], Path]) -> Path:
    """Build an expensive artifact (a trained checkpoint, an export) once per test run, however many
    pytest-xdist workers ask for it.

    Each xdist worker is a process with its own session fixtures; the first worker to ask builds
    into the run's shared folder under a file lock, the others wait for it and reuse the result.
    Without xdist this is a plain session-scoped build. A build that fails leaves no marker, so
    the next worker to ask tries again (and fails the same way, with its own traceback)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # pytest-N/popen-gwK → pytest-N, shared by the run's workers
    folder = base / "built" / name
    marker = base / "built" / f"{name}.done"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(base / "built" / f"{name}.lock")):
        if not marker.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            result = build(folder)
            marker.write_text(result.relative_to(folder).as_posix())
    return folder / marker.read_text()


@pytest.fixture
def tiny_model() -> DeviceTuningModel:
    torch.manual_seed(0)
    return DeviceTuningModel(TINY).eval()


def dtconvert_exe() -> list[str]:
    """The console script as a user runs it (falls back to the module when not on PATH)."""
    exe = shutil.which("dtconvert", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "dtconvert.cli"]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The console script with stdout and stderr piped, as in a CI log: no terminal, no COLUMNS."""
    environment = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY")}
    return subprocess.run([*dtconvert_exe(), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**environment, **(env or {})})


def assert_one_line_error(done: subprocess.CompletedProcess, *needles: str) -> None:
    """A user's mistake: exit 2, one 'error: ...' line naming the problem, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="session")
def quick_ckpt(tmp_path_factory) -> Path:
    """A digits checkpoint after one epoch: real format, real data, seconds to make."""
    from dtconvert.recipe import load_recipe
    from dtconvert.train import train

    def build(out: Path) -> Path:
        recipe = dataclasses.replace(load_recipe(RECIPES / "digits.yaml"), epochs=1)
        train(recipe, out, show_progress=False)
        return out / "ckpt.pt"

    return built_once(tmp_path_factory, "quick", build)


@pytest.fixture(scope="session")
def digits_ckpt(tmp_path_factory) -> Path:
    """The digits recipe trained exactly as shipped (the accuracy claims are checked on it)."""
    from dtconvert.recipe import load_recipe
    from dtconvert.train import train

    def build(out: Path) -> Path:
        train(load_recipe(RECIPES / "digits.yaml"), out, show_progress=False)
        return out / "ckpt.pt"

    return built_once(tmp_path_factory, "digits", build)


@pytest.fixture(scope="session")
def tuned_ckpt(digits_ckpt, tmp_path_factory) -> Path:
    """digits-tune exactly as shipped: device tuning from digits_ckpt, the cloud trunk bit-identical."""
    from dtconvert.recipe import load_recipe
    from dtconvert.train import train

    def build(out: Path) -> Path:
        train(load_recipe(RECIPES / "digits-tune.yaml"), out, init=digits_ckpt, show_progress=False)
        return out / "ckpt.pt"

    return built_once(tmp_path_factory, "tuned", build)


@pytest.fixture(scope="session")
def other_shape_ckpt(tmp_path_factory) -> Path:
    """The OTHER shape after one epoch on the digits (seconds), as quick_ckpt is for the digits shape.

    Not random weights: an untrained model has no margin between its classes, so its top-1
    flips under any perturbation at all (the fp32 encoder with only the int8 wire agreed 99.7 %)."""
    from dtconvert.recipe import load_recipe
    from dtconvert.train import train

    recipe = dataclasses.replace(
        load_recipe(RECIPES / "digits.yaml"), **OTHER.architecture(), name="other", tasks=[name for name, _ in OTHER.tasks], epochs=1
    )

    def build(out: Path) -> Path:
        train(recipe, out, show_progress=False)
        return out / "ckpt.pt"

    return built_once(tmp_path_factory, "other", build)


# ---- export fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def int8_export(digits_ckpt, tmp_path_factory) -> Path:
    """The shipped digits recipe exported exactly as `dtconvert export` does by default."""
    from dtconvert.export import run_export

    return built_once(tmp_path_factory, "export-int8",
                      lambda folder: run_export(digits_ckpt, ["executorch", "coreml", "tflite"], out=folder / "int8")[0])


@pytest.fixture(scope="session")
def fp32_export(quick_ckpt, tmp_path_factory) -> Path:
    from dtconvert.export import run_export

    return built_once(tmp_path_factory, "export-fp32",
                      lambda folder: run_export(quick_ckpt, ["executorch", "coreml", "tflite"], precision="fp32", calib="32",
                        out=folder / "fp32")[0])


@pytest.fixture(scope="session")
def tuned_export(tuned_ckpt, tmp_path_factory) -> Path:
    """The device-tuned variant (digit, odd, mod3) exported for the two runtimes the client runs."""
    from dtconvert.export import run_export

    return built_once(tmp_path_factory, "export-digits-tune",
                      lambda folder: run_export(tuned_ckpt, ["executorch", "tflite"], out=folder / "digits-tune")[0])


@pytest.fixture(scope="session")
def quick_int8_export(quick_ckpt, tmp_path_factory) -> Path:
    """The one-epoch digits model (barely better than chance: the least confident there is)
    exported with the default int8 to every target, and verified as export does."""
    from dtconvert.export import run_export

    return built_once(tmp_path_factory, "export-quick-int8",
                      lambda folder: run_export(quick_ckpt, ["executorch", "coreml", "tflite"], calib="32", out=folder / "quick-int8")[0])


@pytest.fixture(scope="session")
def other_int8_export(other_shape_ckpt, tmp_path_factory) -> Path:
    from dtconvert.export import run_export

    return built_once(tmp_path_factory, "export-other-int8",
                      lambda folder: run_export(other_shape_ckpt, ["executorch", "coreml", "tflite"], calib="32", out=folder / "other-int8")[0])


@pytest.fixture(scope="session")
def static_export(quick_ckpt, tmp_path_factory) -> Path:
    """``--precision int8-static`` (full-integer, calibrated activation scales) of the one-epoch model."""
    from dtconvert.export import run_export

    return built_once(tmp_path_factory, "export-int8-static",
                      lambda folder: run_export(quick_ckpt, ["executorch", "coreml", "tflite"], precision="int8-static", calib="32",
                        out=folder / "int8-static")[0])


class Reference:
    """Held-out images of a checkpoint with the fp32 torch model's wire tensors and logits."""

    def __init__(self, ckpt_path: Path) -> None:
        from dtconvert.checkpoint import build_model, load_checkpoint
        from dtconvert.data import checkpoint_images

        self.ckpt = load_checkpoint(ckpt_path)
        self.model = build_model(self.ckpt)
        self.images, self.labels = checkpoint_images(self.ckpt, "heldout")
        with torch.no_grad():
            x = torch.from_numpy(self.images)
            self.wire = self.model.encode(x).numpy()
            self.logits = {k: v.numpy() for k, v in self.model(x).items()}


@pytest.fixture(scope="session")
def int8_reference(digits_ckpt) -> Reference:
    return Reference(digits_ckpt)


@pytest.fixture(scope="session")
def fp32_reference(quick_ckpt) -> Reference:
    return Reference(quick_ckpt)


def manifest_of(export_dir: Path) -> dict:
    import json

    return json.loads((export_dir / "manifest.json").read_text())


def artifact(export_dir: Path, target: str) -> tuple[Path, dict]:
    entry = next(a for a in manifest_of(export_dir)["artifacts"] if a["target"] == target)
    return export_dir / entry["path"], entry


def run_device(runner, images) -> np.ndarray:
    return np.concatenate([runner(images[i : i + 1]) for i in range(len(images))])


def end_to_end(export_dir: Path, wire, decode_scale: float | None = None) -> dict[str, np.ndarray]:
    """Quantize a float wire tensor with the manifest's parameters and run the TorchScript decoder
    (told ``decode_scale`` instead of the manifest's scale, to show a mismatch is caught)."""
    from dtconvert.targets.torchscript import load_decoder
    from dtconvert.wire import quantize_wire

    manifest = manifest_of(export_dir)
    s, z = manifest["wire"]["scale"], manifest["wire"]["zero_point"]
    told = s if decode_scale is None else decode_scale
    decoder = load_decoder(artifact(export_dir, "torchscript")[0])
    with torch.no_grad():
        outs = decoder(torch.from_numpy(quantize_wire(wire, s, z)), torch.tensor([[told]]), torch.tensor([[z]], dtype=torch.int32))
    return {t["name"]: o.numpy() for t, o in zip(manifest["tasks"], outs)}


# ---- the fast lane ---------------------------------------------------------------------------------

# Fixtures that train a shipped recipe in full (tens of seconds to minutes on 2 cores), build the
# Swift toolchain, or run a training sweep: a test that uses one is in the slow lane, so that
# `pytest -m "not slow"` runs in minutes and still runs every command on the one-epoch model.
SLOW_FIXTURES = frozenset({"digits_ckpt", "tuned_ckpt", "swift_toolchain", "dtcore_build", "sweep_run"})
# Fixtures built on those, as tests name them in parameters and fetch with request.getfixturevalue
# (which item.fixturenames cannot see).
SLOW_BY_NAME = SLOW_FIXTURES | {"int8_export", "tuned_export", "int8_reference", "int8_package"}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        named = {v for v in callspec.params.values() if isinstance(v, str)} if callspec else set()
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or SLOW_BY_NAME & named:
            item.add_marker(pytest.mark.slow)


# ---- both cores busy from the start ----------------------------------------------------------------

# The expensive session artifacts, as chains that share a checkpoint, with rough seconds on 2 cores.
# Under xdist every worker splits the chains the selected tests need between the workers (longest
# first, each to the least loaded) and builds its share before its first test; built_once makes
# the other worker wait for, and reuse, anything it needs from the other's share. Without this,
# both workers start on modules that need the same export, and one idles for minutes.
PREBUILD_CHAINS = (
    (("int8_export", "tuned_export"), 170),
    (("static_export",), 60),
    (("other_int8_export",), 50),
    (("quick_int8_export",), 45),
    (("fp32_export",), 35),
)


@pytest.fixture(scope="session", autouse=True)
def _prebuild_my_share(request) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker or workers < 2:
        return
    needed = set().union(*(set(getattr(item, "fixturenames", ())) for item in request.session.items))
    load = [0] * workers
    mine = []
    for names, seconds in PREBUILD_CHAINS:  # already longest first
        wanted = [name for name in names if name in needed]
        if not wanted:
            continue
        least = load.index(min(load))
        load[least] += seconds
        if least == int(worker.removeprefix("gw")):
            mine.extend(wanted)
    for name in mine:
        request.getfixturevalue(name)


def plant_outlier(checkpoint: Path, out: Path, layer: int = 1, factor: float = 1000.0, compensate: bool = True) -> Path:
    """A copy of ``checkpoint`` whose device layer ``layer`` feeds an outlier channel into its MLP's
    second linear layer, the fp32 function unchanged.

    The busiest hidden channel c of the MLP (largest mean activation on the training images):
    fc1's row c and bias ×K, fc2's column c ÷K. ReLU(Kx) = K·ReLU(x), so the product is the same
    (to float rounding), while fc2's input now holds one channel K times larger than the rest,
    which one int8 scale per token cannot hold. ``compensate=False`` skips fc2's ÷K: a planted
    fault that does change the function (the twin of the check that it is unchanged)."""
    from dtconvert.checkpoint import build_model, load_checkpoint, save_checkpoint
    from dtconvert.data import checkpoint_images

    ckpt = load_checkpoint(checkpoint)
    model = build_model(ckpt, checkpoint)
    images, _ = checkpoint_images(ckpt, "train", 256)
    ffn = model.encoder.layers[layer].ffn
    seen = []
    hook = ffn.act.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    with torch.no_grad():
        model.encoder(torch.from_numpy(images))
    hook.remove()
    channel = int(seen[0].reshape(-1, seen[0].shape[-1]).mean(0).argmax())
    with torch.no_grad():
        ffn.fc1.weight[channel] *= factor
        ffn.fc1.bias[channel] *= factor
        if compensate:
            ffn.fc2.weight[:, channel] /= factor
    planted = dict(ckpt)
    planted["state_dict"] = {k: v.clone() for k, v in model.state_dict().items()}
    save_checkpoint(out, planted)
    return out
