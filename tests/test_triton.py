"""The shared cloud on a real Triton server: ``tritonserver`` 2.51 from the ``nvidia-pytriton`` wheel.

``dtconvert cloud --backend python`` writes the two-variant repository (digits + digits-tune); the
server (:mod:`dtconvert.triton.server`, downloaded once from the package index, sha256 pinned)
loads it on loopback ports. Every check talks to it with ``tritonclient`` over HTTP and gRPC, or
through ``dtconvert serve --triton`` (the gateway), and compares with what ``dtconvert serve``
computes for the same bytes. On a machine the wheel does not run on, the tests skip and say why.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from dtconvert.triton.server import unsupported
from tests.conftest import assert_one_line_error, manifest_of, run_cli
from tests.serving import running_server
from tests.test_serve import Model, get, max_score_difference, post

pytestmark = [pytest.mark.serve, pytest.mark.skipif(unsupported() is not None, reason=str(unsupported()))]

TOLERANCE = 1e-5  # max abs between Triton's logits and dtconvert serve's, for the same wire bytes


@pytest.fixture(scope="module")
def cloud(int8_export, tuned_export):
    from dtconvert.cloud import SharedCloud

    return SharedCloud([int8_export, tuned_export])


@pytest.fixture(scope="module")
def repository(int8_export, tuned_export, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("python-cloud") / "cloud"
    done = run_cli("cloud", str(int8_export), str(tuned_export), "--out", str(out), "--backend", "python")
    assert done.returncode == 0, done.stderr
    assert "python backend" in done.stdout and "python -m dtconvert.triton.server" in done.stdout
    return out / "triton"


@pytest.fixture(scope="module")
def triton(repository):
    from dtconvert.triton.server import TritonServer

    with TritonServer(repository) as server:
        yield server


def infer(protocol: str, server, ensemble: str, wire: np.ndarray, scale: float, zero_point: int, tasks: int,
          dtype: str = "INT8") -> list[np.ndarray]:  # fmt: skip
    """Logits of each task from Triton for ``wire`` (rows of one variant), over ``protocol``."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    module, url = (httpclient, server.http) if protocol == "http" else (grpcclient, server.grpc)
    from dtconvert.triton import infer_inputs

    client = module.InferenceServerClient(url)
    inputs = infer_inputs(module, wire, scale, zero_point)
    if dtype != "INT8":  # a client's mistake: the wire sent as another type
        inputs[0] = module.InferInput("INPUT__0", list(wire.shape), dtype)
        inputs[0].set_data_from_numpy(wire)
    result = client.infer(ensemble, inputs)
    return [result.as_numpy(f"OUTPUT__{i}") for i in range(tasks)]


def logit_gap(protocol: str, server, cloud, variant, wire: np.ndarray) -> float:
    """Largest |Triton's logit − dtconvert serve's| over every row and task of ``wire``."""
    from dtconvert.triton import ensemble_name

    got = infer(protocol, server, ensemble_name(variant), wire, variant.scale, variant.zero_point, len(variant.tasks))
    expected = cloud.logits(wire.copy(), [variant] * len(wire))
    return max(float(np.abs(got[t] - np.stack([row[t] for row in expected])).max()) for t in range(len(variant.tasks)))


def golden_wire(variant) -> np.ndarray:
    return np.load(variant.export_dir / "golden" / "wire_int8.npy")


def test_the_python_repository_parses_with_tritons_schema(repository):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    configs = sorted(repository.glob("*/config.pbtxt"))
    assert len(configs) == 6  # trunk, three distinct heads (digit and odd shared), two ensembles
    for path in configs:
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        if config.platform != "ensemble":
            assert config.backend == "python" and (path.parent / "1" / "model.py").is_file() and (path.parent / "1" / "model.pt").is_file()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_every_task_of_every_variant_answers_like_dtconvert_serve(triton, cloud, protocol):
    for variant in cloud.variants.values():
        assert logit_gap(protocol, triton, cloud, variant, golden_wire(variant)) <= TOLERANCE


def test_twin_a_wrong_head_in_the_repository_fails_the_equality(triton, cloud, repository):
    """A head whose weights moved by 0.01: Triton reloads it and the comparison above catches it."""
    import tritonclient.grpc as grpcclient

    from dtconvert.triton import head_model_name

    tuned = list(cloud.variants.values())[1]
    name = head_model_name(tuned.heads[2])  # mod3: only digits-tune has it
    path = repository / name / "1" / "model.pt"
    original = path.read_bytes()
    head = torch.jit.load(str(path))
    with torch.no_grad():
        head.linear.weight.add_(0.01)
    head.save(str(path))
    client = grpcclient.InferenceServerClient(triton.grpc)
    try:
        client.load_model(name)  # explicit model control: reloads it from the repository
        assert logit_gap("grpc", triton, cloud, tuned, golden_wire(tuned)) > 100 * TOLERANCE
    finally:
        path.write_bytes(original)
        client.load_model(name)
    assert logit_gap("grpc", triton, cloud, tuned, golden_wire(tuned)) <= TOLERANCE


def test_mixed_concurrent_load_shares_trunk_batches_between_variants(triton, cloud):
    from dtconvert.triton import TRUNK_MODEL

    variants = list(cloud.variants.values())
    assert len({(v.scale, v.zero_point) for v in variants}) == 2, "the variants' rows must be told apart by scale and zero point"
    rng = np.random.default_rng(0)
    jobs = [(variants[i % 2], rng.integers(-128, 128, (1, *cloud.token_shape), dtype=np.int8)) for i in range(240)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        gaps = list(pool.map(lambda job: logit_gap("grpc", triton, cloud, job[0], job[1]), jobs))
    assert max(gaps) <= TOLERANCE
    stats = json.loads(urllib.request.urlopen(f"http://{triton.http}/v2/models/{TRUNK_MODEL}/stats").read())["model_stats"][0]
    assert max(b["batch_size"] for b in stats["batch_stats"]) > 1, stats["batch_stats"]
    assert stats["execution_count"] < stats["inference_count"]
    metrics = urllib.request.urlopen(f"http://{triton.metrics}/metrics").read().decode()
    both = 'dtconvert_trunk_batches_total{variants="2"}'
    mixed = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(both)]
    assert mixed and mixed[0] >= 1, "no trunk batch held rows of both variants"


def test_bad_requests_get_tritons_4xx_and_the_models_live_on(triton, cloud):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from dtconvert.triton import ensemble_name

    variant = next(iter(cloud.variants.values()))
    wire, n = golden_wire(variant), len(variant.tasks)
    wrong_shape = np.zeros((2, cloud.token_shape[0], cloud.token_shape[1] + 1), dtype=np.int8)
    cases = {
        "dtype": (ensemble_name(variant), wire.astype(np.float32), "FP32"),
        "shape": (ensemble_name(variant), wrong_shape, "INT8"),
        "model": ("no_such_model", wire, "INT8"),
    }
    for protocol in ("http", "grpc"):
        for case, (name, tensor, dtype) in cases.items():
            with pytest.raises(InferenceServerException) as refused:
                infer(protocol, triton, name, tensor, variant.scale, variant.zero_point, n, dtype=dtype)
            status = str(refused.value.status())
            assert status in {"400", "404", "StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND"}, (protocol, case, status)
    client = httpclient.InferenceServerClient(triton.http)
    assert client.is_server_live() and all(client.is_model_ready(m["name"]) for m in client.get_model_repository_index())
    assert logit_gap("http", triton, cloud, variant, wire) <= TOLERANCE


# ---- the gateway: dtconvert serve --triton --------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(triton, int8_export, tuned_export):
    with running_server([int8_export, tuned_export], "--triton", triton.grpc) as server:
        yield server


@pytest.fixture(scope="module")
def plain_server(int8_export, tuned_export):
    with running_server([int8_export, tuned_export]) as server:
        yield server


def test_the_gateway_answers_as_dtconvert_serve_does(gateway, plain_server, int8_export, tuned_export):
    assert "forwarding to Triton at" in gateway.log()
    for export in (int8_export, tuned_export):
        model = Model(export)
        for i in range(len(model.wire_int8)):
            message = model.message(model.wire_int8[i : i + 1])
            status, through = post(gateway.url, message, "/v1/decode?top_k=10")
            plain_status, plain = post(plain_server.url, message, "/v1/decode?top_k=10")
            assert status == plain_status == 200, through
            assert through["model_id"] == plain["model_id"] and through["tasks"] == plain["tasks"]
            for task in model.tasks:
                assert [e["index"] for e in through["predictions"][0][task]] == [e["index"] for e in plain["predictions"][0][task]]
            assert max_score_difference(through["predictions"], model.probabilities(model.wire_int8[i : i + 1]), model.tasks) <= TOLERANCE
    _, metrics = get(gateway.url, "/metrics")
    assert f'dtconvert_triton_forwarded_rows_total{{model_id="{Model(tuned_export).id}"}} 32.0' in metrics


def test_the_client_works_unchanged_against_the_gateway(gateway, tuned_export):
    done = run_cli("client", str(tuned_export), "--target", "tflite", "--url", gateway.url, "--digits", "40")
    assert done.returncode == 0, done.stderr
    assert "mod3" in done.stdout


def test_the_gateway_refuses_a_clients_mistake_itself(gateway, int8_export, tuned_export):
    base, tuned = Model(int8_export), Model(tuned_export)
    status, answer = post(gateway.url, base.message(base.wire_int8[:1], scale=tuned.scale))
    assert status == 422 and "scale" in answer["error"]
    status, answer = post(gateway.url, base.message(base.wire_int8[:1])[:-1])
    assert status == 400, answer


def test_what_triton_refuses_is_a_502_or_503_and_counted(gateway, triton, cloud, int8_export):
    import tritonclient.grpc as grpcclient

    from dtconvert.triton import ensemble_name

    base = Model(int8_export)
    name = ensemble_name(cloud.variants[base.id])
    client = grpcclient.InferenceServerClient(triton.grpc)
    client.unload_model(name)
    try:
        status, answer = post(gateway.url, base.message(base.wire_int8[:1]))
        assert status in (502, 503) and "Triton" in answer["error"], answer
    finally:
        client.load_model(name)
    status, _ = post(gateway.url, base.message(base.wire_int8[:1]))
    assert status == 200
    _, metrics = get(gateway.url, "/metrics")
    assert f'dtconvert_triton_refused_total{{model_id="{base.id}",reason=' in metrics


def test_the_gateways_openapi_document_says_it_may_answer_502(gateway, plain_server):
    documented = {url: set(json.loads(get(url, "/openapi.json")[1])["paths"]["/v1/decode"]["post"]["responses"])
                  for url in (gateway.url, plain_server.url)}  # fmt: skip
    assert "502" in documented[gateway.url] and "502" not in documented[plain_server.url]


def test_the_gateway_refuses_to_start_against_a_cloud_not_written_for_its_exports(triton, int8_export, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(int8_export, moved)
    manifest = manifest_of(moved)
    manifest["model"]["cloud"]["trunk_sha256"] = "0" * 64
    (moved / "manifest.json").write_text(json.dumps(manifest, indent=2))
    done = run_cli("serve", str(moved), "--port", "0", "--triton", triton.grpc, timeout=120)
    assert_one_line_error(done, "was not written for", "trunk")
    done = run_cli("serve", str(int8_export), "--port", "0", "--triton", "not a url", timeout=120)
    assert_one_line_error(done, "--triton", "host:port")


def test_cloud_backend_must_be_one_it_knows(int8_export, tmp_path):
    done = run_cli("cloud", str(int8_export), "--out", str(tmp_path / "c"), "--backend", "onnx")
    assert_one_line_error(done, "--backend", "libtorch", "python")
    assert not (tmp_path / "c").exists()
