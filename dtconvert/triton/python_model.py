"""A dtconvert cloud model on Triton's Python backend: ``model.pt`` (TorchScript) run with torch.

``dtconvert cloud --backend python`` copies this file beside each model's ``model.pt`` as
``1/model.py``; Triton's Python backend imports it in its own stub process. It is the same
TorchScript file the libtorch backend loads, with the same inputs and outputs (read from the
model's config, in config order). Triton's dynamic batcher hands ``execute`` several requests at
once: their rows are concatenated, run in one call and split back, so the trunk runs once over a
batch that may mix every variant (each row carries its own scale and zero point).

The trunk (three inputs: wire, scale, zero point) also counts its batches by how many variants
they mix, as a Triton custom metric ``dtconvert_trunk_batches_total{variants="1"|"2"|...}`` on
Triton's metrics port: rows of different variants are told apart by their (scale, zero point).

Runs inside Triton only (``triton_python_backend_utils`` exists there); never imported by dtconvert.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend
from torch.utils.dlpack import from_dlpack, to_dlpack


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        torch.set_num_threads(1)  # one instance per model; Triton runs the models of an ensemble side by side
        path = Path(args["model_repository"]) / args["model_version"] / "model.pt"
        self.model = torch.jit.load(str(path), map_location="cpu").eval()
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        self.batches: Any = None
        if len(self.inputs) == 3:  # the trunk: wire, scale, zero point
            self.batches = pb_utils.MetricFamily(
                name="dtconvert_trunk_batches_total",
                description="Batches the shared trunk ran, by how many variants (distinct scale and zero point) their rows hold",
                kind=pb_utils.MetricFamily.COUNTER,
            )
            self.by_variants: dict = {}

    def execute(self, requests: list) -> list:
        # Tensors cross by DLPack, not numpy: the backend's stub was built against numpy 1, dtconvert runs numpy 2.
        tensors = [[from_dlpack(pb_utils.get_input_tensor_by_name(r, name).to_dlpack()) for name in self.inputs] for r in requests]
        rows = [t[0].shape[0] for t in tensors]
        batch = [torch.cat([t[k] for t in tensors]) for k in range(len(self.inputs))]
        with torch.inference_mode():
            out = self.model(*batch)
        outs = [t.float().contiguous() for t in (out if isinstance(out, (tuple, list)) else (out,))]
        if self.batches is not None:
            self._count(batch[1].numpy(), batch[2].numpy())
        responses = []
        for part in zip(*(o.split(rows) for o in outs), strict=True):
            answer = [pb_utils.Tensor.from_dlpack(name, to_dlpack(t.contiguous())) for name, t in zip(self.outputs, part, strict=True)]
            responses.append(pb_utils.InferenceResponse(output_tensors=answer))
        return responses

    def _count(self, scale: np.ndarray, zero_point: np.ndarray) -> None:
        variants = str(len({(float(s), int(z)) for s, z in zip(scale.reshape(-1), zero_point.reshape(-1), strict=True)}))
        if variants not in self.by_variants:
            self.by_variants[variants] = self.batches.Metric(labels={"variants": variants})
        self.by_variants[variants].increment(1)
