"""`dtconvert serve` and `dtconvert client`: the real server on a loopback port, real requests.

Every server here is a `dtconvert serve` subprocess (tests/serving.py) on 127.0.0.1; requests go
through http.client on real sockets.
"""

from __future__ import annotations

import http.client
import json
import math
import signal
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtconvert.targets.torchscript import load_decoder
from dtconvert.wire import encode_payload
from tests.conftest import manifest_of, run_cli
from tests.serving import running_server

pytestmark = [pytest.mark.serve]
ROOT = Path(__file__).resolve().parent.parent


# ---- helpers ---------------------------------------------------------------------------------------


def post(url: str, body: bytes, path: str = "/v1/decode", headers: dict | None = None, method: str = "POST") -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/octet-stream", **(headers or {})})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def get(url: str, path: str) -> tuple[int, str]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


class Model:
    """What a well-behaved client knows about the export: model id, scale, zero point, wire tensors."""

    def __init__(self, export_dir: Path) -> None:
        self.manifest = manifest_of(export_dir)
        wire = self.manifest["wire"]
        self.id = self.manifest["model"]["id"]
        self.scale = float(np.float32(wire["scale"]))
        self.zero_point = wire["zero_point"]
        self.shape = wire["shape"]
        self.tasks = [t["name"] for t in self.manifest["tasks"]]
        golden = export_dir / self.manifest["golden"]["path"]
        # The export's 8 golden encoder outputs, then random int8 tensors of the same shape.
        real = np.load(golden / "wire_int8.npy")
        extra = np.random.default_rng(0).integers(-128, 128, (24, *real.shape[1:]), dtype=np.int8)
        self.wire_int8 = np.concatenate([real, extra])
        decoder = next(a for a in self.manifest["artifacts"] if a["part"] == "cloud")
        self.decoder = load_decoder(export_dir / decoder["path"])

    def message(self, tensor: np.ndarray, **override) -> bytes:
        fields = {"scale": self.scale, "zero_point": self.zero_point, "model_id": self.id, "task_mask": 0, **override}
        return encode_payload(tensor, fields["scale"], fields["zero_point"], fields["model_id"], fields["task_mask"])

    def probabilities(self, tensor: np.ndarray) -> list[np.ndarray]:
        """The decoder run here, in-process, one image at a time: what the server must match."""
        rows = []
        for i in range(len(tensor)):
            with torch.no_grad():
                scale, zero_point = torch.tensor([self.scale]), torch.tensor([self.zero_point], dtype=torch.int32)
                logits = self.decoder(torch.from_numpy(tensor[i : i + 1]), scale, zero_point)
            rows.append([torch.softmax(x, -1).numpy()[0] for x in logits])
        return [np.stack([r[t] for r in rows]) for t in range(len(self.tasks))]


def max_score_difference(answer_predictions: list[dict], probs: list[np.ndarray], tasks: list[str]) -> float:
    """Largest |score − expected probability| over every image, task and returned label."""
    worst = 0.0
    for row, prediction in enumerate(answer_predictions):
        for t, task in enumerate(tasks):
            for entry in prediction[task]:
                worst = max(worst, abs(entry["score"] - float(probs[t][row, entry["index"]])))
    return worst


@pytest.fixture(scope="module")
def model(int8_export) -> Model:
    return Model(int8_export)


@pytest.fixture(scope="module")
def server(int8_export):
    # A long max-wait makes concurrent requests reliably share a batch.
    with running_server(int8_export, "--max-batch", "8", "--max-wait-ms", "30") as s:
        yield s


# ---- the endpoints ---------------------------------------------------------------------------------


def test_healthz_model_and_metrics(server, model):
    status, body = get(server.url, "/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok", "model_id": model.id, "model_ids": [model.id]}
    status, body = get(server.url, "/v1/model")
    public = json.loads(body)
    assert status == 200
    assert public["model"]["id"] == model.id and public["wire"] == model.manifest["wire"]
    assert [t["name"] for t in public["tasks"]] == model.tasks
    assert "artifacts" not in public and "checkpoint" not in public["model"]  # no server paths leak
    status, body = get(server.url, "/metrics")
    assert status == 200
    for name in ("dtconvert_requests_total", "dtconvert_request_errors_total", "dtconvert_batch_images_bucket",
                 "dtconvert_decode_request_seconds_bucket"):
        assert name in body


def test_decode_matches_the_decoder_run_locally(server, model):
    tensor = model.wire_int8[:1]
    status, answer = post(server.url, model.message(tensor), path="/v1/decode?top_k=10")
    assert status == 200, answer
    assert answer["model_id"] == model.id and answer["tasks"] == model.tasks
    probs = model.probabilities(tensor)
    assert max_score_difference(answer["predictions"], probs, model.tasks) <= 1e-5
    for t, task in enumerate(model.tasks):
        labels = answer["predictions"][0][task]
        assert labels[0]["index"] == int(probs[t][0].argmax())
        assert [x["score"] for x in labels] == sorted((x["score"] for x in labels), reverse=True)
        assert len(labels) == min(10, len(model.manifest["tasks"][t]["labels"]))
        assert labels[0]["label"] == str(model.manifest["tasks"][t]["labels"][labels[0]["index"]])
    assert set(answer["timing"]) == {"queue_ms", "decode_ms", "server_ms", "batch_images", "batch_models"}


def test_score_check_fails_for_another_image(server, model):
    """Twin: the 1e-5 comparison above does catch predictions that belong to another input."""
    a, b = model.wire_int8[:1], model.wire_int8[1:2]
    _, answer = post(server.url, model.message(a))
    assert max_score_difference(answer["predictions"], model.probabilities(b), model.tasks) > 1e-3


def test_concurrent_requests_are_batched_and_agree_with_single_ones(server, model):
    images = model.wire_int8[:16]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: post(server.url, model.message(images[i : i + 1]), path="/v1/decode?top_k=10"), range(16)))
    assert all(status == 200 for status, _ in answers)
    sizes = [a["timing"]["batch_images"] for _, a in answers]
    assert max(sizes) > 1, f"no request was batched: {sizes}"
    assert max(sizes) <= 8  # --max-batch
    probs = model.probabilities(images)
    batched = [a["predictions"][0] for _, a in answers]
    assert max_score_difference(batched, probs, model.tasks) <= 1e-5


def test_a_multi_image_message_agrees_with_single_images(server, model):
    tensor = model.wire_int8[:4]
    status, answer = post(server.url, model.message(tensor), path="/v1/decode?top_k=10")
    assert status == 200 and len(answer["predictions"]) == 4
    assert max_score_difference(answer["predictions"], model.probabilities(tensor), model.tasks) <= 1e-5


def test_task_mask_selects_tasks(server, model):
    status, answer = post(server.url, model.message(model.wire_int8[:1], task_mask=0b10))
    assert status == 200
    assert answer["tasks"] == [model.tasks[1]] and list(answer["predictions"][0]) == [model.tasks[1]]


# ---- bad input: a 4xx with a JSON sentence, never a 500 ----------------------------------------------


def corrupt(message: bytes, offset: int, data: bytes) -> bytes:
    return message[:offset] + data + message[offset + len(data):]


BAD_REQUESTS = {
    # name: (make the body from a good message, extra headers, path, status, words in the error)
    "wrong magic": (lambda m, x: corrupt(x, 0, b"XXXX"), {}, None, 400, "bad magic"),
    "wrong version": (lambda m, x: corrupt(x, 4, struct.pack("<H", 2)), {}, None, 400, "version 2"),
    "unknown dtype": (lambda m, x: corrupt(x, 20, b"\x07"), {}, None, 400, "dtype"),
    "truncated body": (lambda m, x: x[:-5], {}, None, 400, "truncated"),
    "header only": (lambda m, x: x[:20], {}, None, 400, "shorter than"),
    "empty body": (lambda m, x: b"", {}, None, 400, "0 bytes"),
    "trailing bytes": (lambda m, x: x + b"\0", {}, None, 400, "trailing"),
    "NaN scale": (lambda m, x: corrupt(x, 24, struct.pack("<f", math.nan)), {}, None, 400, "scale"),
    "infinite scale": (lambda m, x: corrupt(x, 24, struct.pack("<f", math.inf)), {}, None, 400, "scale"),
    "other model id": (lambda m, x: m.message(m.wire_int8[:1], model_id="00" * 8), {}, None, 422, "model id"),
    "other shape": (lambda m, x: m.message(np.zeros((1, m.shape[1] + 1, m.shape[2]), np.int8)), {}, None, 422, "shape"),
    "other rank": (lambda m, x: m.message(np.zeros((1, m.shape[1] * m.shape[2]), np.int8)), {}, None, 422, "shape"),
    "other scale": (lambda m, x: m.message(m.wire_int8[:1], scale=m.scale * 2), {}, None, 422, "scale"),
    "other zero point": (lambda m, x: m.message(m.wire_int8[:1], zero_point=(m.zero_point + 1) % 100), {}, None, 422, "zero_point"),
    "unknown task bit": (lambda m, x: m.message(m.wire_int8[:1], task_mask=1 << 7), {}, None, 422, "does not serve task bit 7"),
    "oversized body": (lambda m, x: m.message(np.zeros((64, *m.shape[1:]), np.int8)), {}, None, 413, "over the limit"),
    "wrong content type": (lambda m, x: x, {"Content-Type": "application/json"}, None, 415, "Content-Type"),
    "zero top_k": (lambda m, x: x, {}, "/v1/decode?top_k=0", 400, "top_k"),
    "text top_k": (lambda m, x: x, {}, "/v1/decode?top_k=many", 400, "top_k"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_a_4xx_that_says_what_is_wrong(server, model, case):
    make, headers, path, want_status, words = BAD_REQUESTS[case]
    body = make(model, model.message(model.wire_int8[:1]))
    status, answer = post(server.url, body, path=path or "/v1/decode", headers=headers)
    assert status == want_status, answer
    assert answer["status"] == want_status and words in answer["error"], answer
    assert get(server.url, "/healthz")[0] == 200


def test_an_oversized_chunked_body_is_refused_without_reading_it_all(server, model):
    """256 KiB in 4 KiB chunks, no Content-Length: the server answers 413 and closes once the limit
    is passed. The client stops sending when the answer arrives, as a polite client does (writing
    on after the server closed races with its close: a broken pipe, or a reset that loses the answer)."""
    import select
    import socket

    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(b"POST /v1/decode HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    sent = 0
    try:
        for _ in range(64):
            if select.select([sock], [], [], 0.01)[0]:
                break
            sock.sendall(b"1000\r\n" + bytes(4096) + b"\r\n")
            sent += 4096
        else:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:200]
    assert "over the limit" in json.loads(body)["error"]
    assert sent < 64 * 4096, "the server read the whole body before refusing it"


def test_each_refusal_maps_to_one_status_in_one_place():
    """The domain's errors carry no HTTP status; dtconvert.serve.errors.as_problem gives each one."""
    from dtconvert.batching import QueueFull, ShuttingDown
    from dtconvert.cloud import UnknownModel, WireMismatch
    from dtconvert.serve.errors import REFUSALS, EdgeError, as_problem
    from dtconvert.serve.gateway import CloudRefused
    from dtconvert.wire import WireFormatError

    cases = {
        EdgeError(415, "Content-Type must be ...", "content_type"): (415, "content_type"),
        WireFormatError("bad magic"): (400, "wire_format"),
        WireMismatch("shape", "wire shape [1, 9, 8] does not match"): (422, "shape"),
        UnknownModel("00", ["a1"]): (422, "model_id"),
        QueueFull(8, 8): (503, "overloaded"),
        ShuttingDown(): (503, "shutting_down"),
        CloudRefused("the Triton cloud refused ...", unavailable=False, reason="triton_refused"): (502, "triton_refused"),
        CloudRefused("the Triton cloud is unavailable ...", unavailable=True, reason="triton_unavailable"): (503, "triton_unavailable"),
    }
    assert set(REFUSALS) <= {type(e) for e in cases}
    assert {e: (p.status, p.reason) for e in cases if (p := as_problem(e, retry_after=2))} == cases
    overloaded = as_problem(QueueFull(8, 8), retry_after=2)
    assert overloaded.headers == {"Retry-After": "2"} and overloaded.hold_seconds == 2
    assert overloaded.message == "the server is at capacity (8 images waiting for the decoder, limit 8); retry after 2 s"
    assert not any(hasattr(e, "status") for e in cases if not isinstance(e, EdgeError))  # the domain knows no HTTP
    with pytest.raises(TypeError, match="not a refusal"):  # twin: any other error is the server's own fault (a 500)
        as_problem(ValueError("a bug"), retry_after=2)


def test_unknown_paths_and_methods_get_json_errors(server):
    status, answer = post(server.url, b"", path="/v2/decode")
    assert status == 404 and "no such endpoint" in answer["error"]
    status, answer = post(server.url, b"", path="/v1/decode", method="GET")
    assert status == 405 and "not allowed" in answer["error"]


def test_errors_are_counted_by_reason(server, model):
    post(server.url, b"nope")
    _, text = get(server.url, "/metrics")
    line = next(x for x in text.splitlines() if x.startswith('dtconvert_request_errors_total{reason="wire_format"}'))
    assert float(line.rsplit(" ", 1)[1]) >= 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_bodies_never_get_a_500(server, model, data):
    good = model.message(model.wire_int8[:1])
    kind = data.draw(st.sampled_from(["random", "flip", "cut"]))
    if kind == "random":
        body = data.draw(st.binary(max_size=400))
    elif kind == "flip":
        i = data.draw(st.integers(0, len(good) - 1))
        body = corrupt(good, i, bytes([good[i] ^ data.draw(st.integers(1, 255))]))
    else:
        body = good[: data.draw(st.integers(0, len(good)))]
    status, answer = post(server.url, body)
    assert status in (200, 400, 413, 422), (status, answer)
    assert ("predictions" in answer) if status == 200 else answer["error"]


# ---- load, shutdown, bad command lines ---------------------------------------------------------------


def test_bounded_load_has_no_errors_and_no_lost_requests(int8_export, model):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from serve_load import load, metric_count

    with running_server(int8_export, "--max-batch", "16") as s:
        result = load(s.url, model.message(model.wire_int8[:1]), 400, 16)
        counted = metric_count(s.url)
    assert result["answered"] == 400 and result["lost"] == 0 and result["statuses"] == {200: 400}, result
    assert counted == 400


def test_graceful_shutdown_answers_requests_in_flight(int8_export, model):
    with running_server(int8_export, "--max-batch", "64", "--max-wait-ms", "1500") as s:
        body = model.message(model.wire_int8[:1])
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(post, s.url, body) for _ in range(6)]
            time.sleep(0.5)  # the six are queued in the batcher, waiting for more
            assert not any(f.done() for f in futures)
            s.process.send_signal(signal.SIGTERM)
            answers = [f.result(timeout=60) for f in futures]
        assert [status for status, _ in answers] == [200] * 6
        assert all(a["timing"]["batch_images"] == 6 for _, a in answers)
        assert s.process.wait(timeout=30) == 0


def test_serve_bad_command_lines(int8_export, tmp_path):
    done = run_cli("serve", str(tmp_path / "nothing"))
    assert done.returncode == 2 and "no such export directory" in done.stderr and "Traceback" not in done.stderr
    import shutil

    tampered = tmp_path / "tampered"
    shutil.copytree(int8_export, tampered)
    decoder = next(tampered.glob("*_decoder_*.pt"))
    data = bytearray(decoder.read_bytes())
    data[len(data) // 2] ^= 0xFF
    decoder.write_bytes(bytes(data))
    done = run_cli("serve", str(tampered), timeout=120)
    assert done.returncode == 2 and "sha256 does not match the manifest" in done.stderr and "Traceback" not in done.stderr
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        done = run_cli("serve", str(int8_export), "--port", str(taken.getsockname()[1]))
    finally:
        taken.close()
    assert done.returncode == 2 and "cannot listen on 127.0.0.1" in done.stderr and "Traceback" not in done.stderr


# ---- the reference client ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target,runtime", [("executorch", "ExecuTorch XNNPACK"), ("tflite", "LiteRT XNNPACK")])
def test_client_gets_the_accuracy_verify_reported(server, int8_export, tmp_path, target, runtime):
    report_path = tmp_path / "client.json"
    manifest = manifest_of(int8_export)
    count = manifest["verification"]["sets"]["held-out"]  # the client sends the held-out digits, as verify's accuracy used
    done = run_cli("client", str(int8_export), "--target", target, "--url", server.url, "--digits", str(count), "--json", str(report_path))
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text())
    summary = report["summary"]
    assert summary["images"] == count
    entry = next(a for a in manifest["artifacts"] if a["part"] == "device" and a["target"] == target)
    verified = manifest["verification"]["metrics"][entry["path"]][runtime]["tasks"]
    for task, accuracy in summary["accuracy"].items():
        assert accuracy == pytest.approx(verified[task]["accuracy"], abs=1e-6), task
    assert summary["payload_bytes"] == 32 + 4 * len(manifest["wire"]["shape"]) + manifest["wire"]["bytes_per_image"]
    assert summary["rtt_ms"]["p50"] > 0 and summary["device_ms"]["p50"] > 0
    assert "accuracy digit" in done.stdout


def test_client_accuracy_check_fails_on_a_wrong_label(server, int8_export):
    """Twin: the accuracy the client computes does fall when its labels are wrong."""
    from dtconvert.client import client_images, run_client

    manifest = manifest_of(int8_export)
    images, labels, names = client_images(int8_export, manifest, None, 40)
    right = run_client(int8_export, "executorch", server.url, images, labels, names).accuracy
    wrong = run_client(int8_export, "executorch", server.url, images, (labels + 1) % 2, names).accuracy
    assert right["odd"] > 0.9 and wrong["odd"] < 0.1


@pytest.mark.parametrize("top_k", [1, 2])
def test_client_top_k_asks_for_that_many_labels_per_task(server, int8_export, tmp_path, top_k):
    """--top-k N: every prediction lists N labels per task (default 3; the twin is the other N)."""
    report_path = tmp_path / "client.json"
    done = run_cli("client", str(int8_export), "--url", server.url, "--digits", "3", "--top-k", str(top_k), "--json", str(report_path))
    assert done.returncode == 0, done.stderr
    results = json.loads(report_path.read_text())["results"]
    assert len(results) == 3
    for image in results:
        assert {task: len(labels) for task, labels in image["predictions"].items()} == {"digit": top_k, "odd": top_k}


def test_client_bad_command_lines(server, int8_export, fp32_export):
    cases = [
        (["--target", "coreml", "--url", server.url, "--digits", "2"], "--target must be one of"),
        (["--url", server.url], "pass one of --images DIR or --digits N"),
        (["--url", "ftp://example", "--digits", "2"], "expected http://HOST:PORT"),
        (["--url", "http://127.0.0.1:9", "--digits", "2"], "cannot reach the decoder server"),
    ]
    for args, words in cases:
        done = run_cli("client", str(int8_export), *args)
        assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
    done = run_cli("client", str(fp32_export), "--url", server.url, "--digits", "2")
    assert done.returncode == 2 and "start the server on this export" in done.stderr, done.stderr


def test_client_on_an_image_folder_matches_held_out_digits(server, int8_export, tmp_path):
    """PNG files in label-named folders go through the same preprocessing as the stored digits."""
    from PIL import Image

    from dtconvert.client import client_images, run_client
    from dtconvert.data import digits_uint8

    manifest = manifest_of(int8_export)
    pictures, digits = digits_uint8()
    index = manifest["data"]["heldout"][:24]
    for i in index:
        (tmp_path / "photos" / str(digits[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pictures[i]).save(tmp_path / "photos" / str(digits[i]) / f"{i:04d}.png")
    folder_images, folder_labels, names = client_images(int8_export, manifest, tmp_path / "photos", None)
    held_images, held_labels, _ = client_images(int8_export, manifest, None, 24)
    order = [index.index(int(n.split("/")[1].removesuffix(".png"))) for n in names]
    assert np.abs(folder_images - held_images[order]).max() < 1e-5
    assert (folder_labels[:, 0] == held_labels[order, 0]).all() and (folder_labels[:, 1] == -1).all()

    report = tmp_path / "folder.json"
    done = run_cli("client", str(int8_export), "--url", server.url, "--images", str(tmp_path / "photos"), "--json", str(report))
    assert done.returncode == 0, done.stderr
    summary = json.loads(report.read_text())["summary"]
    want = run_client(int8_export, "executorch", server.url, held_images, held_labels, names).accuracy["digit"]
    assert summary["images"] == 24 and summary["accuracy"] == {"digit": want}

    (tmp_path / "empty").mkdir()
    done = run_cli("client", str(int8_export), "--url", server.url, "--images", str(tmp_path / "empty"))
    assert done.returncode == 2 and "no images found" in done.stderr and "Traceback" not in done.stderr
