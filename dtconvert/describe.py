"""What ``dtconvert info`` reports about a checkpoint or a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dtconvert.checkpoint import build_model, load_checkpoint, sha256_file
from dtconvert.model import DeviceTuningModel, ModelConfig, count_parameters
from dtconvert.recipe import load_recipe


def _shape_report(cfg: ModelConfig, model: DeviceTuningModel) -> dict:
    tokens, width = cfg.wire_shape
    return {
        "parameters": count_parameters(model),
        "input_shape": [1, cfg.in_channels, cfg.image_size, cfg.image_size],
        "wire": {
            "shape": [1, tokens, width],
            "int8_bytes_per_image": tokens * width,
            "unpooled_fp32_bytes_per_image": cfg.num_patches * cfg.device_dim * 4,
        },
        "model_config": cfg.to_dict(),
    }


def describe(source: str | Path) -> dict:
    """Report of a checkpoint (``.pt``) or a recipe (anything else), as plain JSON types."""
    source = Path(source)
    if source.suffix == ".pt":
        ckpt = load_checkpoint(source)
        model = build_model(ckpt, source)
        report: dict[str, Any] = {"kind": "checkpoint", "source": str(source), "sha256": sha256_file(source)}
        report.update(_shape_report(model.cfg, model))
        report["tasks"] = [{"name": t["name"], "classes": len(t["labels"]), "labels": t["labels"]} for t in ckpt["tasks"]]
        report["preprocessing"] = ckpt["preprocessing"]
        metrics = {k: v for k, v in ckpt["metrics"].items() if k != "history"}
        report["metrics"] = metrics
        report["data"] = {
            "source": ckpt["data"]["source"],
            "train": len(ckpt["data"]["split"]["train"]),
            "heldout": len(ckpt["data"]["split"]["heldout"]),
        }
        report["init"] = ckpt.get("init")
        if ckpt.get("qat"):  # quantization-aware trained: how, without the per-activation ranges
            report["qat"] = {k: v for k, v in ckpt["qat"].items() if k != "ranges"} | {"activation_ranges": len(ckpt["qat"]["ranges"])}
        return report
    recipe = load_recipe(source)
    cfg = recipe.model_config()
    report = {"kind": "recipe", "source": str(source), "name": recipe.name}
    report.update(_shape_report(cfg, DeviceTuningModel(cfg)))
    report["tasks"] = [{"name": n, "classes": c} for n, c in cfg.tasks]
    report["preprocessing"] = recipe.preprocessing()
    return report
