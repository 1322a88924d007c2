from pathlib import Path

import pytest

from dtconvert.errors import UserError
from dtconvert.recipe import load_recipe
from tests.conftest import RECIPES

BUNDLED = sorted(RECIPES.glob("*.yaml"))


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_bundled_recipes_load_and_show_how_to_run(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    assert path.read_text().startswith("#") and "dtconvert " in path.read_text().split("\n\n")[0]
    assert not recipe.model_config().validate()


def test_bundled_recipe_set():
    assert {p.stem for p in BUNDLED} == {"digits", "digits-tune", "dt-2m", "dt-15m"}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("epochs: 3\nlearning_rate: 0.1\n", "unknown key 'learning_rate'"),
        ("epochs: three\n", "key 'epochs' must be int"),
        ("epochs: 2.5\n", "key 'epochs' must be int"),
        ("augment: 1\n", "key 'augment' must be bool"),
        ("pool_at: 1\n", "key 'pool_at' must be list"),
        ("tasks: [digit, colour]\n", "no task 'colour'"),
        ("data: imagefolder\ndata_dir: x\n", "'task_classes' is required"),
        ("device_heads: 5\n", "not divisible"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("epochs: [1\n", "not valid YAML"),
        ("", "the recipe is empty"),
        ("mean: [0.1, 0.2]\n", "'mean' needs 1 values"),
        ("tune: cloud\n", "'tune' must be one of"),
    ],
)
def test_bad_recipes_name_file_and_problem(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(UserError, match=message) as info:
        load_recipe(path)
    assert str(path) in str(info.value)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(UserError, match="no such recipe file"):
        load_recipe(tmp_path / "nope.yaml")


def test_digits_task_classes_are_derived():
    cfg = load_recipe(RECIPES / "digits-tune.yaml").model_config()
    assert cfg.tasks == (("digit", 10), ("odd", 2), ("mod3", 3))


@pytest.mark.parametrize("name, target", [("dt-2m", 2.2e6), ("dt-15m", 15.6e6)])
def test_paper_scale_recipes_have_the_papers_parameter_counts(name, target):
    from dtconvert.describe import describe

    total = describe(RECIPES / f"{name}.yaml")["parameters"]["total"]
    assert abs(total / target - 1) <= 0.05, total


def test_twin_parameter_count_check_can_fail(tmp_path):
    """The same recipe one layer deeper on each side no longer has the paper's 2.2 M parameters."""
    import yaml

    from dtconvert.describe import describe

    raw = yaml.safe_load((RECIPES / "dt-2m.yaml").read_text())
    raw["device_depth"] += 1
    raw["cloud_depth"] += 1
    (tmp_path / "dt-2m.yaml").write_text(yaml.safe_dump(raw))
    total = describe(tmp_path / "dt-2m.yaml")["parameters"]["total"]
    assert abs(total / 2.2e6 - 1) > 0.05, total


def test_dt2m_wire_is_at_most_a_sixteenth_of_unpooled_fp32_tokens():
    from dtconvert.describe import describe

    wire = describe(RECIPES / "dt-2m.yaml")["wire"]
    assert wire["int8_bytes_per_image"] * 16 <= wire["unpooled_fp32_bytes_per_image"]
    assert describe(RECIPES / "digits.yaml")["wire"]["int8_bytes_per_image"] <= 64


def test_twin_sixteenth_check_fails_without_pooling(tmp_path):
    from dtconvert.describe import describe

    unpooled = tmp_path / "dt-2m-unpooled.yaml"
    unpooled.write_text((RECIPES / "dt-2m.yaml").read_text().replace("pool_at: [1, 2]", "pool_at: []"))
    wire = describe(unpooled)["wire"]
    assert wire["int8_bytes_per_image"] * 16 > wire["unpooled_fp32_bytes_per_image"]
