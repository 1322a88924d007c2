import pytest
import torch

from dtconvert.model import DeviceTuningModel, ModelConfig, count_parameters
from tests.conftest import TINY


def test_forward_is_decode_of_encode(tiny_model):
    x = torch.randn(3, 1, 8, 8)
    full = tiny_model(x)
    split = tiny_model.decode(tiny_model.encode(x))
    assert set(full) == {"digit", "odd"}
    for task in full:
        assert torch.equal(full[task], split[task])


def test_split_twin_detects_a_different_encoder(tiny_model):
    # The equality above is not vacuous: decoding another encoder's wire tensor differs.
    x = torch.randn(3, 1, 8, 8)
    other = DeviceTuningModel(TINY).eval()
    assert not torch.allclose(tiny_model(x)["digit"], tiny_model.decode(other.encode(x))["digit"])


def test_pooling_halves_tokens_and_bottleneck_narrows_wire(tiny_model):
    x = torch.randn(2, 1, 8, 8)
    # 16 patches, pooled before layers 0 and 1 → 4 tokens; bottleneck 4 wide.
    assert tiny_model.encode(x).shape == (2, 4, 4) == (2, *TINY.wire_shape)
    unpooled = DeviceTuningModel(ModelConfig(**{**TINY.to_dict(), "pool_at": [], "bottleneck": 0}))
    assert unpooled.encode(x).shape == (2, 16, 16)


def test_pooling_is_mean_of_adjacent_tokens():
    # Eq. 3: attention runs on the pooled sequence h'; check the pooling itself.
    from dtconvert.model import TransformerLayer

    layer = TransformerLayer(4, 2, 2.0, pool=True)
    captured = {}
    layer.attn.register_forward_pre_hook(lambda mod, args: captured.setdefault("h", args[0]))
    h = torch.arange(2 * 6 * 4, dtype=torch.float32).reshape(2, 6, 4)
    out = layer(h)
    assert out.shape == (2, 3, 4)
    assert torch.equal(captured["h"], (h[:, 0::2] + h[:, 1::2]) / 2)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"image_size": 9}, "not a multiple of patch_size"),
        ({"pool_at": [0, 1, 2]}, "outside the device encoder"),
        ({"device_heads": 3}, "not divisible"),
        ({"tasks": [["a", 1]]}, "at least 2 classes"),
        ({"image_size": 6, "patch_size": 2, "pool_at": [0, 1]}, "even token count"),
    ],
)
def test_invalid_configs_are_named(change, message):
    cfg = ModelConfig.from_dict({**TINY.to_dict(), **change})
    with pytest.raises(ValueError, match=message):
        DeviceTuningModel(cfg)


def test_config_round_trips_through_plain_dict():
    assert ModelConfig.from_dict(TINY.to_dict()) == TINY


def test_parameter_groups_partition_the_model(tiny_model):
    counts = count_parameters(tiny_model)
    assert counts["total"] == sum(p.numel() for p in tiny_model.parameters())
    shared = sum(p.numel() for p in tiny_model.shared_cloud_parameters())
    assert shared + counts["cloud_heads"] == counts["cloud"]
