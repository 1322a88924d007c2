"""One cloud, many devices: a `dtconvert serve` of the digits export and its device-tuned variant.

The two exports share the cloud trunk bit for bit (device tuning froze it) and the digit and odd
heads; digits-tune adds mod3. One server holds one trunk, batches rows of both variants together
and answers each row with its own variant's scale, zero point and heads.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.conftest import assert_one_line_error, manifest_of, run_cli
from tests.serving import running_server
from tests.test_serve import Model, get, max_score_difference, post

pytestmark = [pytest.mark.serve]


@pytest.fixture(scope="module")
def variants(int8_export, tuned_export) -> tuple[Model, Model]:
    return Model(int8_export), Model(tuned_export)


@pytest.fixture(scope="module")
def shared_server(int8_export, tuned_export):
    # A long max-wait makes concurrent requests of both variants reliably share a batch.
    with running_server([int8_export, tuned_export], "--max-batch", "16", "--max-wait-ms", "30") as s:
        yield s


def test_manifests_prove_the_trunk_is_shared(int8_export, tuned_export, digits_ckpt):
    from dtconvert.checkpoint import sha256_file

    base, tuned = manifest_of(int8_export)["model"]["cloud"], manifest_of(tuned_export)["model"]["cloud"]
    assert base["trunk_sha256"] == tuned["trunk_sha256"] and base["trunk_tensors"] == tuned["trunk_tensors"]
    assert {k: tuned["heads"][k] for k in ("digit", "odd")} == base["heads"]  # frozen heads: bit-identical
    assert set(tuned["heads"]) == {"digit", "odd", "mod3"}
    assert base["tuned_from"] is None
    assert tuned["tuned_from"] == {"checkpoint_sha256": sha256_file(digits_ckpt), "tune": "device", "new_tasks": ["mod3"]}


def test_models_lists_every_variant(shared_server, variants):
    status, body = get(shared_server.url, "/v1/models")
    assert status == 200
    listed = {m["id"]: m for m in json.loads(body)["models"]}
    for v in variants:
        assert listed[v.id] == {"id": v.id, "name": v.manifest["model"]["name"], "tasks": v.tasks,
                                "wire_shape": ["B", *v.shape[1:]], "scale": v.scale, "zero_point": v.zero_point}
    status, body = get(shared_server.url, "/healthz")
    assert json.loads(body)["model_ids"] == [v.id for v in variants]
    status, body = get(shared_server.url, "/v1/model")
    assert status == 409 and "/v1/models" in json.loads(body)["error"]
    status, body = get(shared_server.url, f"/v1/model?id={variants[1].id}")
    assert status == 200 and json.loads(body)["model"]["id"] == variants[1].id
    status, body = get(shared_server.url, "/v1/model?id=0000000000000000")
    assert status == 404 and "not served here" in json.loads(body)["error"]


def _send_all(server, v: Model, rows: range) -> list[tuple[int, dict]]:
    return [post(server.url, v.message(v.wire_int8[i : i + 1])) for i in rows]


def test_each_variant_gets_its_own_decoders_answers_in_mixed_batches(shared_server, variants):
    base, tuned = variants
    rows = range(len(base.wire_int8))
    futures: dict[str, list] = {v.id: [] for v in variants}
    with ThreadPoolExecutor(max_workers=16) as pool:  # the variants' requests interleaved: mixed batches
        for i in rows:
            for v in variants:
                futures[v.id].append(pool.submit(post, shared_server.url, v.message(v.wire_int8[i : i + 1])))
    for v in variants:
        answers = [f.result() for f in futures[v.id]]
        assert all(status == 200 for status, _ in answers), answers[:2]
        assert {a["model_id"] for _, a in answers} == {v.id}
        assert all(a["tasks"] == v.tasks for _, a in answers)
        predictions = [a["predictions"][0] for _, a in answers]
        assert max_score_difference(predictions, v.probabilities(v.wire_int8), v.tasks) <= 1e-5
    mixed = [a["timing"]["batch_models"] for v in variants for _, a in (f.result() for f in futures[v.id])]
    assert max(mixed) == 2, "no batch held both variants"
    _, metrics = get(shared_server.url, "/metrics")
    counted = {line.split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("dtconvert_batch_rows_total{")}
    assert counted[base.id] >= len(rows) and counted[tuned.id] >= len(rows)
    mixed_total = next(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("dtconvert_mixed_batches_total "))
    assert mixed_total >= 1
    assert f'dtconvert_decode_requests_total{{model_id="{tuned.id}",status="200"}}' in metrics


def test_twin_another_variants_scale_does_not_match(shared_server, variants):
    """The comparison above would catch a server that dequantized a row with the wrong variant's parameters."""
    base, tuned = variants
    answers = _send_all(shared_server, tuned, range(8))
    predictions = [a["predictions"][0] for _, a in answers]
    assert max_score_difference(predictions, tuned.probabilities(tuned.wire_int8[:8]), tuned.tasks) <= 1e-5
    wrong = Model.__new__(Model)
    wrong.__dict__.update(tuned.__dict__, scale=base.scale, zero_point=base.zero_point)
    assert max_score_difference(predictions, wrong.probabilities(tuned.wire_int8[:8]), tuned.tasks) > 1e-3


def test_a_task_the_variant_does_not_serve_is_a_422_naming_it(shared_server, variants):
    base, tuned = variants
    status, answer = post(shared_server.url, base.message(base.wire_int8[:1], task_mask=0b100))
    assert status == 422
    assert "does not serve task mod3 (bit 2)" in answer["error"] and base.id in answer["error"], answer
    status, answer = post(shared_server.url, tuned.message(tuned.wire_int8[:1], task_mask=0b100))
    assert status == 200 and answer["tasks"] == ["mod3"]
    status, answer = post(shared_server.url, base.message(base.wire_int8[:1], scale=tuned.scale))
    assert status == 422 and "scale" in answer["error"]


def test_client_works_unchanged_against_the_shared_server(shared_server, tuned_export):
    done = run_cli("client", str(tuned_export), "--target", "tflite", "--url", shared_server.url, "--digits", "40")
    assert done.returncode == 0, done.stderr
    assert "mod3" in done.stdout


def test_exports_with_different_trunks_are_refused(int8_export, fp32_export):
    done = run_cli("serve", str(int8_export), str(fp32_export), "--port", "0", timeout=120)
    assert_one_line_error(done, str(int8_export), str(fp32_export), "do not share a cloud trunk", "tensor 'pos_embed' differs")


def test_a_manifest_that_misdescribes_its_trunk_is_refused(tuned_export, tmp_path):
    copy = shutil.copytree(tuned_export, tmp_path / "copy")
    manifest = manifest_of(copy)
    manifest["model"]["cloud"]["trunk_sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    done = run_cli("serve", str(copy), "--port", "0", timeout=120)
    assert_one_line_error(done, "model.cloud.trunk_sha256 does not describe the decoder")


def test_the_same_export_twice_is_refused(int8_export):
    done = run_cli("serve", str(int8_export), str(int8_export), "--port", "0", timeout=120)
    assert_one_line_error(done, "is already served from")


def test_memory_holds_one_trunk(int8_export, tuned_export):
    """In-process: a two-variant cloud keeps one decoder module and shares the frozen heads."""
    from dtconvert.cloud import SharedCloud

    cloud = SharedCloud([int8_export, tuned_export])
    assert sorted(cloud.heads) == sorted({*cloud.variants[manifest_of(tuned_export)["model"]["id"]].heads})  # 3 heads, not 5
    assert len(cloud.heads) == 3
    base = cloud.variants[manifest_of(int8_export)["model"]["id"]]
    assert base.heads == cloud.variants[manifest_of(tuned_export)["model"]["id"]].heads[:2]
    owners = [base, *cloud.variants.values()]
    wire = np.zeros((3, *cloud.token_shape), dtype=np.int8)
    out = cloud.decode(wire, owners)
    assert [len(row) for row in out] == [2, 2, 3]


# ---- Triton: the shared cloud as a model repository ------------------------------------------


def _parse_config(path):
    """A config.pbtxt through Triton's own ModelConfig schema (strict: an unknown field fails)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _run_ensemble(repo, name: str, inputs: dict):
    """Execute an ensemble the way its config says: each step's model.pt, inputs and outputs mapped by name."""
    import torch

    config = _parse_config(repo / name / "config.pbtxt")
    tensors = dict(inputs)
    for step in config.ensemble_scheduling.step:
        model = torch.jit.load(str(repo / step.model_name / "1" / "model.pt"))
        step_config = _parse_config(repo / step.model_name / "config.pbtxt")
        args = [tensors[step.input_map[i.name]] for i in step_config.input]
        with torch.no_grad():
            result = model(*args)
        results = result if isinstance(result, tuple) else (result,)
        for output, value in zip(step_config.output, results, strict=True):
            tensors[step.output_map[output.name]] = value
    return [tensors[o.name] for o in config.output]


@pytest.fixture(scope="module")
def cloud_repo(int8_export, tuned_export, tmp_path_factory):
    out = tmp_path_factory.mktemp("cloud") / "cloud"
    done = run_cli("cloud", str(int8_export), str(tuned_export), "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def test_every_triton_config_parses_with_tritons_schema(cloud_repo, int8_export):
    repo = cloud_repo / "triton"
    configs = {p.parent.name: _parse_config(p) for p in repo.glob("*/config.pbtxt")}
    trunk = configs.pop("cloud_trunk")
    assert trunk.HasField("dynamic_batching") and trunk.platform == "pytorch_libtorch"
    ensembles = {n: c for n, c in configs.items() if c.platform == "ensemble"}
    heads = {n: c for n, c in configs.items() if c.platform == "pytorch_libtorch"}
    assert len(ensembles) == 2 and len(heads) == 3  # digit and odd heads shared by both variants
    for name, config in ensembles.items():
        steps = [s.model_name for s in config.ensemble_scheduling.step]
        assert steps[0] == "cloud_trunk" and set(steps[1:]) <= set(heads), steps
        assert (repo / name / "1").is_dir()
    for name in heads:
        assert (repo / name / "1" / "model.pt").is_file() and (repo / name / "labels.txt").is_file()
    description = json.loads((cloud_repo / "cloud.json").read_text())
    assert {v["ensemble"] for v in description["variants"]} == set(ensembles)
    # Each export's own single-model repository parses with the same schema.
    for config in (int8_export / "triton").glob("*/config.pbtxt"):
        assert _parse_config(config).max_batch_size == 64


def test_twin_the_schema_refuses_a_config_with_a_wrong_field(cloud_repo, tmp_path):
    from google.protobuf import text_format

    broken = tmp_path / "config.pbtxt"
    broken.write_text((cloud_repo / "triton" / "cloud_trunk" / "config.pbtxt").read_text().replace("max_batch_size", "max_batch"))
    with pytest.raises(text_format.ParseError):
        _parse_config(broken)


def test_the_triton_models_answer_like_the_server(cloud_repo, shared_server, variants):
    """Rows of both variants through one trunk batch, then each ensemble's heads: the server's scores."""
    import torch

    repo = cloud_repo / "triton"
    description = json.loads((cloud_repo / "cloud.json").read_text())
    for v in variants:
        ensemble = next(e["ensemble"] for e in description["variants"] if e["id"] == v.id)
        wire = torch.from_numpy(v.wire_int8[:8].copy())
        outputs = _run_ensemble(repo, ensemble, {"INPUT__0": wire, "INPUT__1": torch.full((8, 1), v.scale),
                                                 "INPUT__2": torch.full((8, 1), v.zero_point, dtype=torch.int32)})
        probs = [torch.softmax(o, -1).numpy() for o in outputs]
        answers = _send_all(shared_server, v, range(8))
        assert max_score_difference([a["predictions"][0] for _, a in answers], probs, v.tasks) <= 1e-5


def test_cloud_refuses_exports_with_different_trunks(int8_export, fp32_export, tmp_path):
    done = run_cli("cloud", str(int8_export), str(fp32_export), "--out", str(tmp_path / "cloud"))
    assert_one_line_error(done, "do not share a cloud trunk")
    assert not (tmp_path / "cloud").exists() and list(tmp_path.iterdir()) == []
