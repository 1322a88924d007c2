"""The model's ops export to ONNX and onnxruntime computes what torch does."""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.onnx

TOLERANCE = 1e-4  # fp32 on both sides: only summation order differs


def _export(module, example, path):
    torch.onnx.export(module, (example,), str(path), dynamo=True, opset_version=18, verbose=False)
    return path


def _max_abs_error(path, module, x) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = module(x).numpy()
    return float(np.abs(out - ref).max())


@pytest.fixture(scope="module")
def encoder_onnx(tmp_path_factory):
    from dtconvert.model import DeviceTuningModel
    from tests.conftest import TINY

    torch.manual_seed(0)
    model = DeviceTuningModel(TINY).eval()
    path = _export(model.encoder, torch.randn(1, 1, 8, 8), tmp_path_factory.mktemp("onnx") / "encoder.onnx")
    return model, path


def test_encoder_onnx_matches_torch(encoder_onnx):
    model, path = encoder_onnx
    x = torch.randn(1, 1, 8, 8)
    assert _max_abs_error(path, model.encoder, x) < TOLERANCE


def test_decoder_onnx_matches_torch(tmp_path, tiny_model):
    class Logits(torch.nn.Module):  # ONNX wants tensors out, not a dict
        def __init__(self, decoder):
            super().__init__()
            self.decoder = decoder

        def forward(self, wire):
            return torch.cat(list(self.decoder(wire).values()), dim=1)

    wrapper = Logits(tiny_model.decoder).eval()
    wire = torch.randn(1, 4, 4)
    path = _export(wrapper, wire, tmp_path / "decoder.onnx")
    assert _max_abs_error(path, wrapper, wire) < TOLERANCE


def test_twin_perturbed_onnx_weight_is_caught(encoder_onnx, tmp_path):
    import onnx
    from onnx import numpy_helper

    model, path = encoder_onnx
    proto = onnx.load(str(path))
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    array = numpy_helper.to_array(init).copy()
    array.flat[0] += 0.5
    init.CopyFrom(numpy_helper.from_array(array, init.name))
    bad = tmp_path / "perturbed.onnx"
    onnx.save(proto, str(bad))
    assert _max_abs_error(bad, model.encoder, torch.randn(1, 1, 8, 8)) > TOLERANCE


# ---- the product's own ONNX-vs-torch gate (dtconvert.targets.tflite), not a re-implementation of it ----


def _tflite_job(encoder, tmp_path):
    from dtconvert.targets import ExportJob

    example = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return ExportJob(name="tiny", precision="fp32", encoder=encoder, example=example, calibration=example.numpy(), workdir=tmp_path)


def test_the_tflite_targets_onnx_stage_passes_a_faithful_export(tiny_model, tmp_path):
    from dtconvert.targets.tflite import TFLiteTarget

    job = _tflite_job(tiny_model.encoder.eval(), tmp_path)
    with torch.no_grad():
        reference = job.encoder(job.example).numpy()
    path = TFLiteTarget()._onnx(job, tmp_path / "encoder.onnx", job.example.numpy(), reference)
    assert path.is_file()


def test_twin_the_tflite_targets_onnx_stage_refuses_a_graph_that_computes_something_else(tiny_model, tmp_path, monkeypatch):
    """torch.onnx.export writes a graph of a perturbed copy (as a mistranslating exporter would):
    the target's own comparison with onnxruntime must refuse it with the measured error."""
    import copy

    from dtconvert.targets import ExportError
    from dtconvert.targets.tflite import TFLiteTarget

    job = _tflite_job(tiny_model.encoder.eval(), tmp_path)
    with torch.no_grad():
        reference = job.encoder(job.example).numpy()
    wrong = copy.deepcopy(job.encoder)
    with torch.no_grad():
        wrong.layers[0].ffn.fc1.weight.mul_(1.5)
    real_export = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda module, *args, **kwargs: real_export(wrong, *args, **kwargs))
    with pytest.raises(ExportError, match=r"the ONNX export differs from torch by .* \(bound "):
        TFLiteTarget()._onnx(job, tmp_path / "encoder.onnx", job.example.numpy(), reference)
