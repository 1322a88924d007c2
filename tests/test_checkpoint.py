import os
import pickle

import pytest
import torch

from dtconvert.checkpoint import FORMAT_VERSION, build_model, load_checkpoint, save_checkpoint
from dtconvert.errors import UserError


def test_round_trip_reproduces_outputs(quick_ckpt, tmp_path):
    ckpt = load_checkpoint(quick_ckpt)
    model = build_model(ckpt)
    x = torch.randn(4, 1, 16, 16)
    copy = tmp_path / "copy.pt"
    save_checkpoint(copy, {k: v for k, v in ckpt.items() if k not in ("format", "format_version")})
    again = build_model(load_checkpoint(copy))
    with torch.no_grad():
        for task, logits in model(x).items():
            assert torch.equal(logits, again(x)[task])


def test_checkpoint_is_self_describing(quick_ckpt):
    ckpt = torch.load(quick_ckpt, weights_only=True)  # plain weights_only load, as any user would
    assert ckpt["format"] == "dtconvert-checkpoint" and ckpt["format_version"] == FORMAT_VERSION
    assert [t["name"] for t in ckpt["tasks"]] == ["digit", "odd"]
    assert ckpt["tasks"][1]["labels"] == ["even", "odd"]
    assert ckpt["preprocessing"] == {
        "size": [16, 16], "channels": 1, "layout": "NCHW", "resize": "bilinear",
        "scale": 1 / 255, "mean": [0.5], "std": [0.5],
    }
    split = ckpt["data"]["split"]
    assert len(split["train"]) + len(split["heldout"]) == 1797
    assert not set(split["train"]) & set(split["heldout"])
    assert set(ckpt["metrics"]["heldout"]) == {"digit", "odd"}


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "absent.pt")


def test_truncated_file(quick_ckpt, tmp_path):
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(quick_ckpt.read_bytes()[: quick_ckpt.stat().st_size // 2])
    with pytest.raises(UserError, match="not a readable checkpoint") as info:
        load_checkpoint(bad)
    assert str(bad) in str(info.value)


def test_text_file(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("hello")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(bad)


def test_plain_state_dict_is_not_a_dtconvert_checkpoint(tmp_path, tiny_model):
    path = tmp_path / "state.pt"
    torch.save(tiny_model.state_dict(), path)
    with pytest.raises(UserError, match="not a dtconvert checkpoint"):
        load_checkpoint(path)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {_Exploit.marker}",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    _Exploit.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "dtconvert-checkpoint", "payload": _Exploit()}, path)
    with pytest.raises(UserError, match="posix.system, which could run arbitrary code"):
        load_checkpoint(path)
    assert not _Exploit.marker.exists()


def test_newer_format_is_refused(quick_ckpt, tmp_path):
    ckpt = torch.load(quick_ckpt, weights_only=True)
    ckpt["format_version"] = FORMAT_VERSION + 1
    path = tmp_path / "future.pt"
    torch.save(ckpt, path)
    with pytest.raises(UserError, match="newer than this dtconvert reads"):
        load_checkpoint(path)


def test_save_is_atomic(tmp_path, quick_ckpt):
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"previous")

    class Unsaveable:
        pass

    # torch.save fails half-way through pickling the local class: the one failure this test is about.
    with pytest.raises((AttributeError, pickle.PicklingError), match="Can't pickle"):
        save_checkpoint(target, {"bad": Unsaveable(), "fn": lambda: 0})
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_atomic_write_gives_files_the_usual_mode(tmp_path):
    """mkstemp's temporary files are 0600; the renamed result must be what open() would create."""
    import os

    from dtconvert.checkpoint import atomic_write

    target = tmp_path / "report.json"
    atomic_write(target, lambda tmp: tmp.write_text("{}\n"))
    plain = tmp_path / "plain.json"
    plain.write_text("{}\n")
    assert os.stat(target).st_mode & 0o777 == os.stat(plain).st_mode & 0o777
