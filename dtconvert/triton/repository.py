"""Triton model repositories: one export's own, and ``dtconvert cloud``'s shared cloud of several device variants.

    dtconvert cloud export/digits export/digits-tune --out cloud/

Loads the exports exactly as ``dtconvert serve`` does (:class:`~dtconvert.cloud.SharedCloud`:
the trunks proven bit-identical from the decoder files, or a refusal naming the first differing
tensor), then writes ``OUT/triton/``:

* ``cloud_trunk``: the shared trunk, TorchScript (libtorch backend) with dynamic batching.
  Inputs per row: ``INPUT__0`` int8 wire ``[T, D]``, ``INPUT__1`` float32 scale ``[1]``,
  ``INPUT__2`` int32 zero point ``[1]``, so one batch may hold rows of every variant, each
  dequantized with its own parameters; output ``OUTPUT__0``, the pooled feature.
* ``head_<task>_<digest>``: one model per distinct head (a head device tuning froze, shared by
  several variants, is one model), feature → logits, with its label file.
* ``<variant name>_<model id>``: per variant, an ensemble ``INPUT__0..2`` → ``cloud_trunk`` →
  its heads → ``OUTPUT__i`` in the variant's task order; the same contract as each export's own
  single-model repository.

``OUT/cloud.json`` lists the variants (model id, tasks, scale, zero point, ensemble name) and the
trunk's digest. The directory is written beside ``--out`` and renamed onto it when complete.

Two backends, one description: every model is the same traced TorchScript file ``1/model.pt``
with the same inputs, outputs and batching; only how Triton runs it differs. ``libtorch`` (the
default, Triton's PyTorch backend, what GPU fleets run) loads it natively; ``python`` (Triton's
Python backend, in the ``nvidia-pytriton`` wheel that runs on a CPU machine) runs
:mod:`dtconvert.triton.python_model`, copied beside it as ``1/model.py``, which loads the same file
with torch and batches the requests Triton's dynamic batcher hands it. Every model's config
carries the model ids and the trunk digest it was written for (``parameters``), which the gateway
(``dtconvert serve --triton``) checks before it forwards anything.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dtconvert.checkpoint import replace_dir
from dtconvert.errors import UserError

TRUNK_MODEL = "cloud_trunk"
MAX_BATCH = 64
QUEUE_DELAY_US = 2000
# How Triton runs each model's model.pt: its config line, and whether model.py goes beside it.
BACKENDS = {"libtorch": 'platform: "pytorch_libtorch"', "python": 'backend: "python"'}
DEFAULT_BACKEND = "libtorch"
PYTHON_MODEL = Path(__file__).with_name("python_model.py")
# The config parameters the gateway reads back from Triton before it forwards a variant's requests.
MODEL_IDS_KEY = "dtconvert_model_ids"
TRUNK_KEY = "dtconvert_trunk_sha256"


class _Trunk(nn.Module):
    """The decoder's ``shared_trunk`` as a model of its own."""

    def __init__(self, decoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, wire: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
        return self.decoder.shared_trunk(wire, scale, zero_point)


class _Head(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.linear(feature)


def head_model_name(key: str) -> str:
    task, digest = key.split(":")
    return f"head_{task}_{digest[:8]}"


def ensemble_name(variant) -> str:
    return f"{variant.manifest['model']['name']}_{variant.model_id}"


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    return backend


def write_cloud(export_dirs: list[Path], out: Path, backend: str = DEFAULT_BACKEND) -> dict:
    """Write the shared cloud's Triton repository for ``backend`` and ``cloud.json`` to ``out``; return cloud.json."""
    from dtconvert.cloud import SharedCloud

    check_backend(backend)
    cloud = SharedCloud([Path(d) for d in export_dirs])
    if cloud.legacy:
        first = next(iter(cloud.variants.values()))
        raise UserError(f"{first.export_dir}: its decoder predates shared serving (no shared_trunk); re-export it")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        repo = staging / "triton"
        trunk_sha256 = variant_identity(cloud)
        stamp = _Stamp(backend, ",".join(cloud.model_ids), trunk_sha256)
        tokens, width = cloud.token_shape
        feature_dim = next(iter(cloud.heads.values()))[0].shape[1]
        _write_trunk(repo, cloud, tokens, width, feature_dim, stamp)
        for key, (weight, bias) in cloud.heads.items():
            owner = next(v for v in cloud.variants.values() if key in v.heads)
            task = key.split(":")[0]
            _write_head(repo, head_model_name(key), weight, bias, owner.labels[task], feature_dim, stamp)
        for variant in cloud.variants.values():
            _write_ensemble(repo, variant, tokens, width, stamp)
        description = {
            "format": "dtconvert-cloud",
            "format_version": 1,
            "trunk_sha256": trunk_sha256,
            "triton": {"repository": "triton", "backend": backend, "trunk_model": TRUNK_MODEL, "max_batch_size": MAX_BATCH},
            "variants": [
                {**v.summary(), "export": str(v.export_dir), "ensemble": ensemble_name(v), "heads": [head_model_name(k) for k in v.heads]}
                for v in cloud.variants.values()
            ],
        }
        (staging / "cloud.json").write_text(json.dumps(description, indent=2) + "\n")
        replace_dir(staging, out)
        return description
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def variant_identity(cloud) -> str:
    from dtconvert.targets.torchscript import cloud_identity

    first = next(iter(cloud.variants.values()))
    return cloud_identity(cloud.trunk, first.tasks)["trunk_sha256"]


class _Stamp:
    """What every model of one repository shares: its backend, and whom it was written for."""

    def __init__(self, backend: str, model_ids: str, trunk_sha256: str) -> None:
        self.backend, self.model_ids, self.trunk_sha256 = backend, model_ids, trunk_sha256

    def runs(self) -> str:
        """The config lines saying how Triton runs the model, and for whom it was written."""
        return f"""{BACKENDS[self.backend]}
parameters {{ key: "{MODEL_IDS_KEY}" value: {{ string_value: "{self.model_ids}" }} }}
parameters {{ key: "{TRUNK_KEY}" value: {{ string_value: "{self.trunk_sha256}" }} }}"""

    def write_model(self, module: nn.Module, example: tuple, version_dir: Path) -> None:
        """``model.pt`` (traced TorchScript, loaded by either backend) and, for Python, ``model.py``."""
        version_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch 2.13 marks TorchScript deprecated; Triton's libtorch backend loads it
            traced = torch.jit.trace(module.eval(), example, check_trace=False)
            torch.jit.save(traced, str(version_dir / "model.pt"))
        if self.backend == "python":
            shutil.copyfile(PYTHON_MODEL, version_dir / "model.py")


# How every model of the repositories batches and where it runs.
_BATCHING = f"""dynamic_batching {{
  max_queue_delay_microseconds: {QUEUE_DELAY_US}
}}
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
"""


def write_triton_repository(root: Path, model_name: str, decoder_file: Path, wire_shape: list[int], tasks: list[dict]) -> list[Path]:
    """One export's own repository: its whole decoder as one model for Triton's PyTorch (libtorch)
    backend, with the inputs of the shared trunk and one output per task; returns the files written."""
    model_dir = root / model_name
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "model.pt").write_bytes(decoder_file.read_bytes())
    outputs = []
    written = [version_dir / "model.pt"]
    for i, task in enumerate(tasks):
        labels = model_dir / f"labels_{task['name']}.txt"
        labels.write_text("\n".join(task["labels"]) + "\n")
        written.append(labels)
        outputs.append(f'  {{ name: "OUTPUT__{i}" data_type: TYPE_FP32 dims: [ {len(task["labels"])} ] label_filename: "{labels.name}" }}')
    config = f"""# Cloud decoder of dtconvert model {model_name!r}: int8 wire tensor in, one logits tensor per task out.
# OUTPUT__i follows the manifest's task order: {", ".join(t["name"] for t in tasks)}.
name: "{model_name}"
{BACKENDS[DEFAULT_BACKEND]}
max_batch_size: {MAX_BATCH}
{_wire_inputs(wire_shape[1], wire_shape[2])}
output [
{("," + chr(10)).join(outputs)}
]
{_BATCHING}"""
    (model_dir / "config.pbtxt").write_text(config)
    written.append(model_dir / "config.pbtxt")
    return written


def _wire_inputs(tokens: int, width: int) -> str:
    """The inputs of the trunk and of every ensemble: int8 wire rows, each with its scale and zero point."""
    return f"""input [
  {{ name: "INPUT__0" data_type: TYPE_INT8 dims: [ {tokens}, {width} ] }},
  {{ name: "INPUT__1" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "INPUT__2" data_type: TYPE_INT32 dims: [ 1 ] }}
]"""


def infer_inputs(client, wire: np.ndarray, scale: float, zero_point: int) -> list:
    """The three inputs of a trunk or ensemble request for int8 ``wire`` rows of one variant, made
    with ``client`` (``tritonclient.http``, ``tritonclient.grpc`` or ``tritonclient.grpc.aio``)."""
    n = len(wire)
    inputs = [
        client.InferInput("INPUT__0", list(wire.shape), "INT8"),
        client.InferInput("INPUT__1", [n, 1], "FP32"),
        client.InferInput("INPUT__2", [n, 1], "INT32"),
    ]
    inputs[0].set_data_from_numpy(np.ascontiguousarray(wire, dtype=np.int8))
    inputs[1].set_data_from_numpy(np.full((n, 1), scale, dtype=np.float32))
    inputs[2].set_data_from_numpy(np.full((n, 1), zero_point, dtype=np.int32))
    return inputs


def _write_trunk(repo: Path, cloud, tokens: int, width: int, feature_dim: int, stamp: _Stamp) -> None:
    v = next(iter(cloud.variants.values()))
    example = (
        torch.zeros((2, tokens, width), dtype=torch.int8),
        torch.full((2, 1), v.scale),
        torch.full((2, 1), v.zero_point, dtype=torch.int32),
    )
    stamp.write_model(_Trunk(cloud.trunk), example, repo / TRUNK_MODEL / "1")
    (
        repo / TRUNK_MODEL / "config.pbtxt"
    ).write_text(f"""# The shared cloud trunk of {len(cloud.variants)} device variant(s): {", ".join(cloud.model_ids)}.
# Every row carries its own variant's scale and zero point, so one dynamic batch serves every variant.
name: "{TRUNK_MODEL}"
{stamp.runs()}
max_batch_size: {MAX_BATCH}
{_wire_inputs(tokens, width)}
output [
  {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ {feature_dim} ] }}
]
{_BATCHING}""")


def _write_head(
    repo: Path, name: str, weight: torch.Tensor, bias: torch.Tensor, labels: list[str], feature_dim: int, stamp: _Stamp
) -> None:
    stamp.write_model(_Head(weight, bias), (torch.zeros((2, feature_dim)),), repo / name / "1")
    (repo / name / "labels.txt").write_text("\n".join(labels) + "\n")
    (repo / name / "config.pbtxt").write_text(f"""# One task head: shared trunk feature -> logits.
name: "{name}"
{stamp.runs()}
max_batch_size: {MAX_BATCH}
input [
  {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ {feature_dim} ] }}
]
output [
  {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ {len(labels)} ] label_filename: "labels.txt" }}
]
{_BATCHING}""")


def _write_ensemble(repo: Path, variant, tokens: int, width: int, stamp: _Stamp) -> None:
    name = ensemble_name(variant)
    (repo / name / "1").mkdir(parents=True)  # an ensemble has no model file, but Triton wants its version folder
    outputs = ",\n".join(
        f'  {{ name: "OUTPUT__{i}" data_type: TYPE_FP32 dims: [ {len(variant.labels[t])} ] }}' for i, t in enumerate(variant.tasks)
    )
    trunk_step = f"""    {{
      model_name: "{TRUNK_MODEL}"
      model_version: -1
      input_map {{ key: "INPUT__0" value: "INPUT__0" }}
      input_map {{ key: "INPUT__1" value: "INPUT__1" }}
      input_map {{ key: "INPUT__2" value: "INPUT__2" }}
      output_map {{ key: "OUTPUT__0" value: "feature" }}
    }}"""
    head_steps = [
        f"""    {{
      model_name: "{head_model_name(key)}"
      model_version: -1
      input_map {{ key: "INPUT__0" value: "feature" }}
      output_map {{ key: "OUTPUT__0" value: "OUTPUT__{i}" }}
    }}"""
        for i, key in enumerate(variant.heads)
    ]
    (
        repo / name / "config.pbtxt"
    ).write_text(f"""# Device variant {variant.manifest["model"]["name"]} (model id {variant.model_id}): the shared trunk, then its heads.
# OUTPUT__i follows its tasks' order: {", ".join(variant.tasks)}. Scale {variant.scale!r}, zero point {variant.zero_point}.
name: "{name}"
platform: "ensemble"
parameters {{ key: "{MODEL_IDS_KEY}" value: {{ string_value: "{variant.model_id}" }} }}
parameters {{ key: "{TRUNK_KEY}" value: {{ string_value: "{stamp.trunk_sha256}" }} }}
max_batch_size: {MAX_BATCH}
{_wire_inputs(tokens, width)}
output [
{outputs}
]
ensemble_scheduling {{
  step [
{("," + chr(10)).join([trunk_step, *head_steps])}
  ]
}}
""")
