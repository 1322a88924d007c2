"""The CLI as a user runs it: a real subprocess for the console script, CliRunner for the rest."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from dtconvert.cli import app
from tests.conftest import RECIPES, assert_one_line_error, run_cli

HEAVY = ("torch", "tensorflow", "executorch", "coremltools", "onnx", "sklearn")


@pytest.mark.cli
@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["info", "--help"], ["demo", "--help"], ["serve", "--help"], ["client", "--help"]])
def test_help_imports_no_heavy_library(argv):
    code = (
        "import sys\nfrom dtconvert.cli import app\n"
        f"try:\n    app({argv!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_twin_heavy_import_detection_works():
    code = "import sys\nimport dtconvert.model\nprint('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "True"


@pytest.mark.cli
def test_console_script_help_lists_commands():
    done = run_cli("--help")
    assert done.returncode == 0
    for command in ("train", "info", "export", "verify", "serve", "client", "demo"):
        assert command in done.stdout


def test_version_prints_the_package_version_and_exits_0():
    from dtconvert import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"dtconvert {__version__}"


def test_info_recipe_json():
    result = CliRunner().invoke(app, ["info", str(RECIPES / "dt-2m.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "recipe" and report["tasks"] == [{"name": "class", "classes": 1000}]
    assert report["input_shape"] == [1, 3, 224, 224]


def test_info_checkpoint_json(quick_ckpt):
    result = CliRunner().invoke(app, ["info", str(quick_ckpt), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "checkpoint"
    assert report["parameters"]["total"] == report["parameters"]["device"] + report["parameters"]["cloud"]
    assert report["wire"]["int8_bytes_per_image"] == 64
    assert set(report["metrics"]["heldout"]) == {"digit", "odd"}


def test_info_by_bundled_name_table():
    result = CliRunner().invoke(app, ["info", "digits"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "64 bytes per image" in result.stdout


@pytest.mark.cli
def test_train_end_to_end_as_subprocess(tmp_path):
    done = run_cli("train", str(RECIPES / "digits.yaml"), "--out", str(tmp_path / "run"), "--epochs", "1", "-q")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "ckpt.pt").is_file()
    assert "held-out metrics" in done.stdout and "epoch   1/1" in done.stderr
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["ckpt.pt"]


def test_demo_serves_both_variants_from_one_cloud(digits_ckpt, tuned_ckpt, tmp_path):
    for name, ckpt in (("digits", digits_ckpt), ("digits-tune", tuned_ckpt)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ckpt.pt").write_bytes(ckpt.read_bytes())
    result = run_cli("demo", "--out", str(tmp_path), "-q")  # a real process: native libraries write to its descriptors
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("reusing") == 2 and result.stderr.count("verified: all") == 2
    # Nothing from third-party libraries (TensorFlow's oneDNN lines, coremltools' proxies, LiteRT's
    # delegate line, ExecuTorch's cpuinfo): every line is one of ours.
    ours = re.compile(r"^(reusing |training took |── |✓ |verified: |dtconvert serve |server stopped|wire tensor |exports in |device ms |— : |\* Core ML |"
                      r"\S+/manifest\.json$|[┏┃┡│└]|\d+ held-out digits|digits(-tune)?: held-out|┗)")
    foreign = [line for line in (result.stdout + result.stderr).splitlines() if line.strip() and not ours.match(line.strip())]
    assert not foreign, foreign
    assert "(one trunk, 2 variants)" in result.stderr
    # The served paths: both device runtimes of both variants reached the one server and scored what verify did.
    rows = {}
    for line in result.stdout.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) > 2 and cells[1].endswith("→ HTTP"):
            rows[(cells[0], cells[1])] = cells
    assert set(rows) == {(v, p) for v in ("digits", "digits-tune") for p in ("ExecuTorch → HTTP", "LiteRT → HTTP")}, result.stdout
    for variant in ("digits", "digits-tune"):
        manifest = json.loads((tmp_path / "export" / variant / "manifest.json").read_text())
        verified = manifest["verification"]["metrics"]
        tasks = [t["name"] for t in manifest["tasks"]]
        for runtime, path in (("ExecuTorch XNNPACK", "ExecuTorch → HTTP"), ("LiteRT XNNPACK", "LiteRT → HTTP")):
            numbers = next(v[runtime] for v in verified.values() if runtime in v)
            cells = rows[(variant, path)][2:5]
            want = [f"{numbers['tasks'][t]['accuracy']:.2%}" if t in tasks else "—" for t in ("digit", "odd", "mod3")]
            assert cells == want, (variant, path, cells, want)
    assert "server stopped" in result.stderr


class _Trained(Exception):
    """Raised instead of training: which recipe demo chose to train."""


def _demo_trains(tmp_path, digits_ckpt, monkeypatch, *flags) -> tuple[str, str]:
    """Run demo on a folder holding the digits checkpoint; stop at the first training. (recipe trained, stderr)."""
    (tmp_path / "digits").mkdir(exist_ok=True)
    (tmp_path / "digits" / "ckpt.pt").write_bytes(digits_ckpt.read_bytes())

    def stop(recipe, *args, **kwargs):
        raise _Trained(recipe.name)

    monkeypatch.setattr("dtconvert.train.train", stop)
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "-q", *flags])
    assert isinstance(result.exception, _Trained), result.output
    return str(result.exception), result.output


@pytest.mark.cli
def test_demo_retrain_trains_again_though_the_checkpoint_fits(digits_ckpt, tmp_path, monkeypatch):
    trained, output = _demo_trains(tmp_path, digits_ckpt, monkeypatch, "--retrain")
    assert trained == "digits" and "reusing" not in output


@pytest.mark.cli
def test_twin_demo_without_retrain_reuses_the_fitting_checkpoint(digits_ckpt, tmp_path, monkeypatch):
    trained, output = _demo_trains(tmp_path, digits_ckpt, monkeypatch)
    assert trained == "digits-tune" and f"reusing {tmp_path / 'digits' / 'ckpt.pt'}" in output


def _evil(path, marker):
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "dtconvert-checkpoint", "x": Exploit()}, path)


@pytest.mark.cli
def test_bad_inputs_exit_2_with_one_line(tmp_path, quick_ckpt):
    out = tmp_path / "out"
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("epochs: 1\nlr_max: 3\n")
    wrong_type = tmp_path / "wrong.yaml"
    wrong_type.write_text("epochs: '5'\n")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(quick_ckpt.read_bytes()[:1000])
    future = tmp_path / "future.pt"
    ckpt = torch.load(quick_ckpt, weights_only=True)
    ckpt["format_version"] = 99
    torch.save(ckpt, future)
    notckpt = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, notckpt)
    evil = tmp_path / "evil.pt"
    _evil(evil, tmp_path / "pwned")
    empty = tmp_path / "images"
    (empty / "cat").mkdir(parents=True)
    nofolder = tmp_path / "folder.yaml"
    nofolder.write_text(f"data: imagefolder\ndata_dir: {empty}\ntasks: [class]\ntask_classes: [2]\n")

    cases = [
        (["train", str(tmp_path / "missing.yaml"), "--out", str(out)], ["missing.yaml", "no such recipe file"]),
        (["train", "no-such-recipe", "--out", str(out)], ["no-such-recipe", "bundled"]),
        (["train", str(unknown), "--out", str(out)], ["unknown.yaml", "unknown key 'lr_max'"]),
        (["train", str(wrong_type), "--out", str(out)], ["wrong.yaml", "'epochs' must be int"]),
        (["train", str(nofolder), "--out", str(out)], [str(empty), "no images found"]),
        (["train", str(RECIPES / "digits-tune.yaml"), "--out", str(out)], ["needs --init"]),
        (["train", str(RECIPES / "digits-tune.yaml"), "--init", str(evil), "--out", str(out)], ["evil.pt", "arbitrary code"]),
        (["train", str(RECIPES / "digits-tune.yaml"), "--init", str(truncated), "--out", str(out)], ["truncated.pt", "not a readable checkpoint"]),
        (["train", str(RECIPES / "digits.yaml"), "--tune", "cloud", "--out", str(out)], ["--tune"]),
        (["info", str(tmp_path / "absent.pt")], ["absent.pt", "no such checkpoint"]),
        (["info", str(truncated)], ["truncated.pt", "not a readable checkpoint"]),
        (["info", str(future)], ["future.pt", "newer"]),
        (["info", str(notckpt)], ["weights.pt", "not a dtconvert checkpoint"]),
        (["info", str(evil)], ["evil.pt", "arbitrary code"]),
    ]
    for argv, needles in cases:
        assert_one_line_error(run_cli(*argv), *needles)
    assert not out.exists(), "a failed command left output behind"
    assert not (tmp_path / "pwned").exists()


def test_tuning_a_different_architecture_is_refused(quick_ckpt, tmp_path):
    recipe = tmp_path / "other.yaml"
    recipe.write_text((RECIPES / "digits-tune.yaml").read_text().replace("bottleneck: 8", "bottleneck: 16"))
    result = CliRunner().invoke(app, ["train", str(recipe), "--init", str(quick_ckpt), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "bottleneck is 8 but recipe other says 16" in result.stderr


@pytest.mark.cli
def test_every_command_once_on_the_one_epoch_model(quick_ckpt, tmp_path):
    """The fast lane's tour: each command as a subprocess, on the one-epoch checkpoint (demo and
    the sweep train shipped recipes in full, so their own tests are in the slow lane)."""
    from tests.serving import running_server

    export = tmp_path / "export"
    done = run_cli("export", str(quick_ckpt), "--target", "executorch", "--calib", "32", "--no-verify", "--out", str(export))
    assert done.returncode == 0 and (export / "manifest.json").is_file(), done.stderr
    done = run_cli("verify", str(export), "--limit", "30")
    assert done.returncode == 0 and "checks passed" in done.stdout, done.stdout + done.stderr
    done = run_cli("info", str(quick_ckpt))
    assert done.returncode == 0 and "wire tensor" in done.stdout, done.stderr
    done = run_cli("bench", str(export), "--runs", "2", "--warmup", "1", "--no-memory")
    assert done.returncode == 0, done.stderr
    done = run_cli("cloud", str(export), "--out", str(tmp_path / "cloud"))
    assert done.returncode == 0 and (tmp_path / "cloud" / "triton").is_dir(), done.stderr
    with running_server(export) as server:
        done = run_cli("client", str(export), "--url", server.url, "--digits", "8")
        assert done.returncode == 0 and "8 images via ExecuTorch" in done.stdout + done.stderr, done.stderr
