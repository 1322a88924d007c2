"""The shared cloud: one decoder trunk serving every device variant tuned from one checkpoint.

Device tuning (the paper's point) trains a new task on the device side while the cloud trunk
stays bit-identical. ``SharedCloud`` loads one or more exports, proves from their decoder files
that their trunks are identical tensor for tensor (refusing, with the first differing tensor,
when they are not), keeps one trunk in memory, and the heads each variant needs: a head that
several variants hold bit-identical (a task device tuning froze) is loaded once.

A batch may mix rows of several variants: each row is dequantized with its own variant's scale
and zero point, the trunk runs once over the whole batch, and each variant's heads run on its
own rows. Each variant keeps its model id (what a wire message names), wire scale and zero point,
tasks and labels. A message that fits no variant raises :class:`WireMismatch`, which says
nothing of HTTP: the server's edge decides what status that is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dtconvert.errors import UserError, unloadable
from dtconvert.wire import CONTENT_TYPE, WirePayload, header_size


class WireMismatch(Exception):
    """A well-formed wire message that does not fit the model it names; ``field`` says where:
    shape, scale, zero_point, task, or model_id (:class:`UnknownModel`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class UnknownModel(WireMismatch):
    """A wire message names a model id this cloud does not serve."""

    def __init__(self, model_id: str, served: list[str]) -> None:
        super().__init__("model_id", f"model id {model_id} is not served here (serving {', '.join(served)})")


@dataclass(eq=False)  # compared and hashed by identity: one object per served variant
class Variant:
    """One export's device variant, as a request must match it."""

    export_dir: Path
    manifest: dict
    model_id: str
    tasks: list[str]
    labels: dict[str, list[str]]
    token_shape: tuple[int, ...]
    scale: float
    zero_point: int
    bytes_per_image: int
    header_bytes: int
    heads: list[str] = field(default_factory=list)  # head key per task, in task order

    @classmethod
    def from_manifest(cls, export_dir: Path, manifest: dict) -> Variant:
        wire = manifest["wire"]
        return cls(
            export_dir=export_dir,
            manifest=manifest,
            model_id=manifest["model"]["id"],
            tasks=[t["name"] for t in manifest["tasks"]],
            labels={t["name"]: [str(label) for label in t["labels"]] for t in manifest["tasks"]},
            token_shape=tuple(wire["shape"][1:]),
            scale=float(np.float32(wire["scale"])),
            zero_point=int(wire["zero_point"]),
            bytes_per_image=int(wire["bytes_per_image"]),
            header_bytes=header_size(len(wire["shape"])),
        )

    @property
    def max_classes(self) -> int:
        return max(len(v) for v in self.labels.values())

    def public(self) -> dict:
        """What ``GET /v1/model`` shows: what a device needs to talk to this server, no paths."""
        m = self.manifest
        return {
            "schema_version": m["schema_version"],
            "model": {k: m["model"][k] for k in ("name", "id", "created") if k in m["model"]},
            "precision": m["precision"],
            "device_input": m["device_input"],
            "wire": m["wire"],
            "tasks": m["tasks"],
            "wire_format": {"version": 1, "content_type": CONTENT_TYPE, "header_bytes": self.header_bytes},
        }

    def summary(self) -> dict:
        """One entry of ``GET /v1/models``."""
        return {
            "id": self.model_id,
            "name": self.manifest["model"]["name"],
            "tasks": self.tasks,
            "wire_shape": ["B", *self.token_shape],
            "scale": self.scale,
            "zero_point": self.zero_point,
        }

    def check(self, payload: WirePayload, task_names_by_bit: dict[int, set[str]]) -> list[str]:
        """Raise WireMismatch if a well-formed message does not fit this variant; return the tasks asked."""
        shape = tuple(payload.tensor.shape)
        if len(shape) != 1 + len(self.token_shape) or shape[1:] != self.token_shape:
            raise WireMismatch("shape", f"wire shape {list(shape)} does not match the model's {['B', *self.token_shape]}")
        if payload.scale != self.scale:
            raise WireMismatch("scale", f"scale {payload.scale!r} is not model {self.model_id}'s wire scale {self.scale!r}")
        if payload.zero_point != self.zero_point:
            raise WireMismatch("zero_point", f"zero_point {payload.zero_point} is not model {self.model_id}'s {self.zero_point}")
        mask = payload.task_mask
        extra = [bit for bit in range(32) if mask >> bit & 1 and bit >= len(self.tasks)]
        if extra:
            named = sorted(task_names_by_bit.get(extra[0], set()))
            what = f"task {' or '.join(named)} (bit {extra[0]})" if named else f"task bit {extra[0]}"
            raise WireMismatch("task", f"model {self.model_id} does not serve {what}; it serves {', '.join(self.tasks)}")
        return [t for i, t in enumerate(self.tasks) if mask == 0 or mask >> i & 1]


class Catalogue:
    """The variants a cloud serves, by model id, read from the exports' manifests: what every
    request is checked against. ``dtconvert serve --triton`` needs no more than this (Triton
    decodes); :class:`SharedCloud` adds the decoders."""

    def __init__(self, export_dirs: list[Path]) -> None:
        from dtconvert.manifest import load_manifest

        if not export_dirs:
            raise UserError("no export to serve")
        self.variants: dict[str, Variant] = {}
        for export_dir in export_dirs:
            manifest = load_manifest(export_dir)
            variant = Variant.from_manifest(export_dir, manifest)
            if variant.model_id in self.variants:
                raise UserError(
                    f"{export_dir}: model {variant.model_id} is already served from {self.variants[variant.model_id].export_dir}"
                )
            self._admit(export_dir, manifest, variant)
            self.variants[variant.model_id] = variant
        shapes = {v.token_shape for v in self.variants.values()}
        if len(shapes) > 1:  # cannot happen with identical trunks; a guard against a lying manifest
            raise UserError(f"the exports' wire shapes differ ({sorted(shapes)}) although their trunks are identical")
        self.token_shape = next(iter(shapes))
        self.task_names_by_bit: dict[int, set[str]] = {}
        for v in self.variants.values():
            for i, task in enumerate(v.tasks):
                self.task_names_by_bit.setdefault(i, set()).add(task)

    def _admit(self, export_dir: Path, manifest: dict, variant: Variant) -> None:
        """Check one more export before it is served (the manifest alone: nothing to check here)."""

    # ---- what requests see ------------------------------------------------------------------

    @property
    def model_ids(self) -> list[str]:
        return list(self.variants)

    @property
    def max_bytes_per_image(self) -> int:
        return max(v.bytes_per_image for v in self.variants.values())

    @property
    def header_bytes(self) -> int:
        return max(v.header_bytes for v in self.variants.values())

    @property
    def max_classes(self) -> int:
        return max(v.max_classes for v in self.variants.values())

    def variant(self, model_id: str) -> Variant:
        found = self.variants.get(model_id)
        if found is None:
            raise UnknownModel(model_id, self.model_ids)
        return found

    def check(self, payload: WirePayload) -> tuple[Variant, list[str]]:
        variant = self.variant(payload.model_id)
        return variant, variant.check(payload, self.task_names_by_bit)

    def top_k(self, variant: Variant, probs: list[np.ndarray], tasks: list[str], k: int) -> dict:
        """One row's answer: for each asked task, its k most likely labels and scores."""
        out = {}
        for name in tasks:
            p = probs[variant.tasks.index(name)]
            order = np.argsort(-p, kind="stable")[: min(k, len(p))]
            out[name] = [{"label": variant.labels[name][i], "index": int(i), "score": round(float(p[i]), 6)} for i in order]
        return out


class SharedCloud(Catalogue):
    """The catalogue, the loaded trunk, and the heads."""

    def __init__(self, export_dirs: list[Path]) -> None:
        self.heads: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # head key → (weight, bias)
        self.trunk: torch.jit.ScriptModule  # the first export's decoder, set by the first _admit
        self._first: tuple[Path, dict] | None = None
        super().__init__(export_dirs)

    def _admit(self, export_dir: Path, manifest: dict, variant: Variant) -> None:
        """Load the export's decoder, prove its trunk is the one already loaded, keep its heads."""
        from dtconvert.checkpoint import sha256_file
        from dtconvert.targets.torchscript import cloud_identity, load_decoder

        clouds = [a for a in manifest["artifacts"] if a["part"] == "cloud" and a["target"] == "torchscript"]
        if not clouds:
            raise UserError(f"{export_dir}/manifest.json lists no TorchScript cloud decoder to serve")
        path = export_dir / clouds[0]["path"]
        if not path.is_file():
            raise UserError(f"{path}: the cloud decoder the manifest lists is missing")
        if sha256_file(path) != clouds[0]["sha256"]:
            raise UserError(f"{path}: sha256 does not match the manifest (modified or corrupt); re-export or run 'dtconvert verify'")
        try:
            decoder = load_decoder(path)
            identity = cloud_identity(decoder, variant.tasks)
        except Exception as e:  # noqa: BLE001  a file that matches its sha256 but is no TorchScript decoder (torch raises anything)
            raise unloadable(path, "TorchScript", e) from None
        recorded = manifest["model"].get("cloud")
        if recorded is not None and recorded["trunk_sha256"] != identity["trunk_sha256"]:
            raise UserError(f"{export_dir}/manifest.json: model.cloud.trunk_sha256 does not describe the decoder {path.name} (modified?)")
        shared = hasattr(decoder, "shared_trunk")
        if self._first is None:
            self._first = (export_dir, identity)
            self.trunk = decoder
            self.legacy = not shared  # exported before shared_trunk existed: one variant, its own forward
        else:
            if self.legacy or not shared:
                old = self._first[0] if self.legacy else export_dir
                raise UserError(f"{old}: its decoder predates shared serving (no shared_trunk); re-export it to serve it beside others")
            _require_same_trunk(self._first, (export_dir, identity))
        state = decoder.state_dict()
        for i, task in enumerate(variant.tasks):
            key = f"{task}:{identity['heads'][task][:16]}"
            self.heads.setdefault(key, (state[f"heads.{i}.weight"].detach().clone(), state[f"heads.{i}.bias"].detach().clone()))
            variant.heads.append(key)

    # ---- decoding -----------------------------------------------------------------------------

    def warm_up(self, max_batch: int) -> None:
        """A few calls at batch 1 and at max_batch, over every variant: TorchScript's profiling
        executor optimizes the graph during its first runs (60 ms for the digits decoder's first call)."""
        variants = list(self.variants.values())
        for batch in sorted({1, max_batch}):
            owners = [variants[i % len(variants)] for i in range(batch)]
            wire = np.stack([np.full(self.token_shape, v.zero_point, dtype=np.int8) for v in owners])
            for _ in range(3):
                self.decode(wire, owners)

    def decode(self, wire: np.ndarray, owners: list[Variant]) -> list[list[np.ndarray]]:
        """int8 wire (N, T, D) whose row i belongs to ``owners[i]`` → per row, softmax
        probabilities of each of its variant's tasks (in that variant's task order)."""
        return self._run(wire, owners, softmax)

    def logits(self, wire: np.ndarray, owners: list[Variant]) -> list[list[np.ndarray]]:
        """As :meth:`decode`, the logits before the softmax (what a Triton model answers)."""
        return self._run(wire, owners, lambda x: x)

    def _run(self, wire: np.ndarray, owners: list[Variant], finish) -> list[list[np.ndarray]]:
        scale = torch.tensor([[v.scale] for v in owners], dtype=torch.float32)
        zero_point = torch.tensor([[v.zero_point] for v in owners], dtype=torch.int32)
        with torch.inference_mode():
            if self.legacy:
                per_task = [finish(x.float().numpy()) for x in self.trunk(torch.from_numpy(wire), scale, zero_point)]
                return [[p[row] for p in per_task] for row in range(len(owners))]
            features = self.trunk.shared_trunk(torch.from_numpy(wire), scale, zero_point)
            out: list[list[np.ndarray]] = [[] for _ in owners]
            for variant in dict.fromkeys(owners):  # each variant present, in order of appearance
                rows = [i for i, v in enumerate(owners) if v is variant]
                mine = features.index_select(0, torch.tensor(rows))
                per_task = [finish(torch.nn.functional.linear(mine, *self.heads[key]).numpy()) for key in variant.heads]
                for j, row in enumerate(rows):
                    out[row] = [p[j] for p in per_task]
            return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis, in float32 (as torch.softmax gives them)."""
    return torch.softmax(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)), dim=-1).numpy()


def _require_same_trunk(first: tuple[Path, dict], other: tuple[Path, dict]) -> None:
    """Refuse, naming both exports and the first differing tensor, unless the trunks are identical."""
    (first_dir, a), (other_dir, b) = first, other
    if a["trunk_sha256"] == b["trunk_sha256"]:
        return
    names = list(a["trunk_tensors"]) + [n for n in b["trunk_tensors"] if n not in a["trunk_tensors"]]
    differing = next(n for n in names if a["trunk_tensors"].get(n) != b["trunk_tensors"].get(n))
    raise UserError(
        f"{first_dir} and {other_dir} do not share a cloud trunk: tensor {differing!r} differs "
        "(a shared cloud serves only variants device-tuned from one checkpoint)"
    )
