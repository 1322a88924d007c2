"""The TorchScript cloud decoder and the Triton repository around it."""

import numpy as np
import pytest
import torch

from dtconvert.targets.torchscript import load_decoder
from dtconvert.wire import dequantize_wire, quantize_wire
from tests.conftest import artifact, manifest_of

pytestmark = pytest.mark.torchscript


def test_decoder_equals_eager_decode_of_the_dequantized_wire(int8_export, int8_reference):
    manifest = manifest_of(int8_export)
    s, z = manifest["wire"]["scale"], manifest["wire"]["zero_point"]
    q = quantize_wire(int8_reference.wire[:16], s, z)
    decoder = load_decoder(artifact(int8_export, "torchscript")[0])
    with torch.no_grad():
        got = decoder(torch.from_numpy(q), torch.full((16, 1), s), torch.full((16, 1), z, dtype=torch.int32))
        want = int8_reference.model.decode(torch.from_numpy(dequantize_wire(q, s, z)))
    for task, logits in zip([t["name"] for t in manifest["tasks"]], got):
        assert torch.allclose(logits, want[task], atol=1e-5), task


def test_batched_equals_single(int8_export, int8_reference):
    manifest = manifest_of(int8_export)
    s, z = manifest["wire"]["scale"], manifest["wire"]["zero_point"]
    q = torch.from_numpy(quantize_wire(int8_reference.wire[:8], s, z))
    decoder = load_decoder(artifact(int8_export, "torchscript")[0])
    with torch.no_grad():
        batched = decoder(q, torch.tensor([s]), torch.tensor([z], dtype=torch.int32))
        single = [decoder(q[i : i + 1], torch.tensor([s]), torch.tensor([z], dtype=torch.int32)) for i in range(8)]
    for t in range(len(batched)):
        assert np.abs(batched[t].numpy() - torch.cat([o[t] for o in single]).numpy()).max() < 1e-5


def test_triton_repository(int8_export):
    root = int8_export / "triton" / "digits_decoder"
    config = (root / "config.pbtxt").read_text()
    assert 'platform: "pytorch_libtorch"' in config and "dynamic_batching" in config
    assert "TYPE_INT8 dims: [ 8, 8 ]" in config
    assert (root / "1" / "model.pt").read_bytes() == artifact(int8_export, "torchscript")[0].read_bytes()
    assert (root / "labels_odd.txt").read_text().split() == ["even", "odd"]


def test_task_named_like_a_python_keyword(tmp_path):
    """dt-2m's task is called 'class'; TorchScript cannot name a submodule that."""
    from dtconvert.model import DeviceTuningModel, ModelConfig
    from dtconvert.targets.torchscript import export_decoder

    torch.manual_seed(0)
    model = DeviceTuningModel(ModelConfig(image_size=8, patch_size=2, device_dim=8, device_depth=1, device_heads=2, pool_at=(0,),
                                          cloud_dim=8, cloud_depth=1, cloud_heads=2, tasks=(("class", 3), ("def", 2)))).eval()
    export_decoder(model.decoder, ["class", "def"], [1, 8, 8], 0.05, 0, tmp_path / "d.pt")
    wire = torch.randint(-128, 128, (2, 8, 8), dtype=torch.int8)
    with torch.no_grad():
        got = load_decoder(tmp_path / "d.pt")(wire, torch.tensor([0.05]), torch.tensor([0], dtype=torch.int32))
        want = model.decode((wire.float()) * 0.05)
    assert torch.allclose(got[0], want["class"], atol=1e-6) and torch.allclose(got[1], want["def"], atol=1e-6)
