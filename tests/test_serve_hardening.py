"""The server and the readers under overload, hostile files and real clients.

Real `dtconvert serve` subprocesses on loopback, raw sockets for slow clients, a throw-away
certificate authority (trustme) for TLS, schemathesis against the server's own /openapi.json,
and doctored copies of a real export for every reader.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from dtconvert.manifest import describe_file
from tests.conftest import assert_one_line_error, manifest_of, run_cli
from tests.serving import running_server
from tests.test_serve import Model, get, post

pytestmark = [pytest.mark.serve]
TOKEN = "s3cret-token-0123456789abcdef"


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.split("://", 1)[1].split(":")
    return host, int(port)


# ---- admission control ---------------------------------------------------------------------------


def test_a_full_queue_answers_503_with_retry_after_at_once(int8_export):
    model = Model(int8_export)
    # A long batch window (the batch holds 16) keeps the first 8 images waiting; the queue takes
    # no more, so every later request in the window must be refused at once.
    with running_server(int8_export, "--max-batch", "16", "--max-wait-ms", "1500", "--max-queue", "8") as server:
        with ThreadPoolExecutor(max_workers=24) as pool:
            started = time.perf_counter()
            futures = [pool.submit(_timed_post, server.url, model.message(model.wire_int8[i % 8 : i % 8 + 1])) for i in range(24)]
            answers = [f.result() for f in futures]
        statuses = [status for status, _, _, _ in answers]
        assert set(statuses) == {200, 503} and statuses.count(503) >= 8, statuses
        for status, body, headers, seconds in answers:
            if status == 503:
                assert headers.get("Retry-After") == "1" and "at capacity" in body["error"] and body["status"] == 503
                assert seconds < 1.0, "a refused request waited for the batch window"
        _, metrics = get(server.url, "/metrics")
        refused = _metric(metrics, 'dtconvert_request_errors_total{reason="overloaded"}')
        assert refused == statuses.count(503)
        assert _metric(metrics, 'dtconvert_requests_total{endpoint="/v1/decode",status="503"}') == statuses.count(503)
    assert time.perf_counter() - started < 30


def test_twin_the_default_queue_takes_the_same_burst(int8_export):
    """The same 24 requests, the same batch and window, with the default queue (8 × 16 = 128 images)."""
    model = Model(int8_export)
    with running_server(int8_export, "--max-batch", "16", "--max-wait-ms", "1500") as server:
        with ThreadPoolExecutor(max_workers=24) as pool:
            futures = [pool.submit(_timed_post, server.url, model.message(model.wire_int8[i % 8 : i % 8 + 1])) for i in range(24)]
            answers = [f.result() for f in futures]
    assert [a[0] for a in answers] == [200] * 24


def test_a_refused_client_that_comes_straight_back_waits_retry_after_anyway(int8_export):
    """A flood that ignores Retry-After must not keep the event loop answering 503s: after a 503
    the server reads nothing more from that connection for [Retry-After / 2, Retry-After)."""
    model = Model(int8_export)
    two, one = model.message(model.wire_int8[:2]), model.message(model.wire_int8[:1])
    octet = {"Content-Type": "application/octet-stream"}
    with running_server(int8_export, "--max-queue", "1") as server:  # a 2-image message is always refused
        host, port = _host_port(server.url)
        connection = http.client.HTTPConnection(host, port, timeout=30)
        connection.request("POST", "/v1/decode", body=two, headers=octet)
        refused = connection.getresponse()
        assert refused.status == 503 and refused.headers["Retry-After"] == "1"
        refused.read()
        started = time.perf_counter()
        connection.request("POST", "/v1/decode", body=one, headers=octet)  # same connection, at once
        answer = connection.getresponse()
        held = time.perf_counter() - started
        assert answer.status == 200 and held >= 0.5, (answer.status, held)
        # The twin: a connection that was not refused is read at once.
        fresh = http.client.HTTPConnection(host, port, timeout=30)
        started = time.perf_counter()
        fresh.request("POST", "/v1/decode", body=one, headers=octet)
        assert fresh.getresponse().status == 200 and time.perf_counter() - started < 0.5
        connection.close()
        fresh.close()


def _timed_post(url: str, body: bytes) -> tuple[int, dict, http.client.HTTPMessage, float]:
    host, port = _host_port(url)
    connection = http.client.HTTPConnection(host, port, timeout=30)
    started = time.perf_counter()
    try:
        connection.request("POST", "/v1/decode", body=body, headers={"Content-Type": "application/octet-stream"})
        response = connection.getresponse()
        return response.status, json.loads(response.read()), response.headers, time.perf_counter() - started  # headers: case-insensitive
    finally:
        connection.close()


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


# ---- slow, idle and too many clients ------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded_server(int8_export):
    with running_server(int8_export, "--client-timeout", "1", "--max-connections", "6") as server:
        yield server


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_a_client_that_never_finishes_its_head_is_closed(guarded_server):
    host, port = _host_port(guarded_server.url)
    idle, slow = socket.create_connection((host, port)), socket.create_connection((host, port))
    slow.sendall(b"POST /v1/decode HTTP/1.1\r\nHost: x\r\nContent-Ty")  # and then nothing
    assert _closed_within(idle, 5) and _closed_within(slow, 5)
    assert get(guarded_server.url, "/healthz")[0] == 200


def test_twin_a_client_that_sends_in_time_is_answered(guarded_server, int8_export):
    host, port = _host_port(guarded_server.url)
    sock = socket.create_connection((host, port))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(5)
    assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    sock.close()


def test_a_body_that_never_arrives_gets_408(guarded_server):
    host, port = _host_port(guarded_server.url)
    sock = socket.create_connection((host, port))
    sock.sendall(b"POST /v1/decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n0123")
    sock.settimeout(5)
    answer = b""
    while chunk := sock.recv(4096):  # the server closes the connection after a 408
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer, answer
    sock.close()


def test_too_many_connections_get_503_with_retry_after(guarded_server):
    host, port = _host_port(guarded_server.url)
    held = [socket.create_connection((host, port)) for _ in range(6)]
    try:
        time.sleep(0.2)
        status, body = get(guarded_server.url, "/healthz")
        assert status == 503 and json.loads(body)["status"] == 503 and "too many connections" in json.loads(body)["error"]
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    assert get(guarded_server.url, "/healthz")[0] == 200


def test_405_carries_allow(guarded_server):
    host, port = _host_port(guarded_server.url)
    connection = http.client.HTTPConnection(host, port, timeout=10)
    connection.request("DELETE", "/v1/decode")
    response = connection.getresponse()
    assert response.status == 405 and response.getheader("Allow") == "POST", response.getheaders()
    assert json.loads(response.read())["status"] == 405


# ---- flags that set limits reach the running server ----------------------------------------------


@pytest.mark.parametrize("spare, status", [(-1, 413), (0, 200)])
def test_max_body_bytes_sets_the_body_limit(int8_export, spare, status):
    """--max-body-bytes N, N one byte under a 2-image message: 413 before the body is read. The twin,
    N = the message's length, decodes it. Both are far under the default limit (header + 32 images),
    so the flag is what decides."""
    model = Model(int8_export)
    body = model.message(model.wire_int8[:2])
    limit = len(body) + spare
    with running_server(int8_export, "--max-body-bytes", str(limit)) as server:
        assert f"body limit {limit} B" in server.log()
        got, answer = post(server.url, body)
    assert got == status, answer
    if status == 413:
        assert answer["error"] == f"body of {len(body)} bytes is over the limit of {limit} bytes"
    else:
        assert len(answer["predictions"]) == 2


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_sets_the_decoder_threads(int8_export, threads):
    """--threads N: the serving process runs torch with N threads (its start-up line reports
    torch.get_num_threads() after applying the flag). 2 and 3 are each other's twin, and at most
    one of them is the default (cores − 1)."""
    with running_server(int8_export, "--threads", str(threads)) as server:
        reported = re.search(r" (\d+) decoder threads;", server.log())
    assert reported is not None and int(reported.group(1)) == threads, server.log()


# ---- the API description ------------------------------------------------------------------------


def test_openapi_describes_the_wire_body_and_every_status(guarded_server):
    status, body = get(guarded_server.url, "/openapi.json")
    assert status == 200
    document = json.loads(body)
    decode = document["paths"]["/v1/decode"]["post"]
    assert decode["requestBody"]["content"]["application/octet-stream"]["schema"] == {"type": "string", "format": "binary"}
    assert {"200", "400", "408", "413", "415", "422", "503", "405"} <= set(decode["responses"])
    assert "Retry-After" in decode["responses"]["503"]["headers"]
    assert list(document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]


@pytest.mark.parametrize("secured", [False, True])
def test_schemathesis_finds_nothing(int8_export, tmp_path, secured):
    """A third-party API tester, every check, against the real server. One check is left out, for a
    reason no schema can fix: a wire message is bytes with a magic, a header and a length
    (docs/wire-format.md); OpenAPI can say only 'binary', so random bytes are schema-valid and
    rightly answered 400. Negative cases (bad bodies, content types, methods, parameters, auth) run."""
    args = []
    if secured:
        (tmp_path / "token").write_text(TOKEN)
        args = ["--token-file", str(tmp_path / "token")]
    with running_server(int8_export, *args) as server:
        st = Path(sys.executable).with_name("st")
        command = [str(st), "run", f"{server.url}/openapi.json", "--checks", "all", "--exclude-checks", "positive_data_acceptance",
                   "--max-examples", "40", "--seed", "1", "--no-color"]
        if secured:
            command += ["--header", f"Authorization: Bearer {TOKEN}"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "No issues found" in done.stdout or "passed" in done.stdout.lower(), done.stdout[-2000:]


# ---- TLS and the token --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate_authority(tmp_path_factory):
    import trustme

    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    leaf.private_key_pem.write_to_path(str(folder / "key.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    (folder / "token").write_text(TOKEN + "\n")
    return folder


@pytest.fixture(scope="module")
def tls_server(int8_export, certificate_authority):
    folder = certificate_authority
    context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
    with running_server(int8_export, "--tls-cert", str(folder / "cert.pem"), "--tls-key", str(folder / "key.pem"),
                        "--token-file", str(folder / "token"), ssl_context=context) as server:
        yield server, context


def _https(server_url: str, context, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    host, port = _host_port(server_url)
    connection = http.client.HTTPSConnection(host, port, timeout=30, context=context)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read()), response.headers  # case-insensitive
    finally:
        connection.close()


def test_https_and_the_token(tls_server, int8_export):
    server, context = tls_server
    assert server.url.startswith("https://")
    model = Model(int8_export)
    message = model.message(model.wire_int8[:1])
    octet = {"Content-Type": "application/octet-stream"}
    assert _https(server.url, context, "GET", "/healthz")[0] == 200  # open
    status, body, headers = _https(server.url, context, "POST", "/v1/decode", message, octet)
    assert status == 401 and headers.get("WWW-Authenticate") == "Bearer" and "Bearer" in body["error"]
    status, _, _ = _https(server.url, context, "POST", "/v1/decode", message, {**octet, "Authorization": "Bearer " + "x" * len(TOKEN)})
    assert status == 401
    status, body, _ = _https(server.url, context, "POST", "/v1/decode", message, {**octet, "Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and body["model_id"] == model.id
    assert _https(server.url, context, "GET", "/v1/models")[0] == 401
    assert _https(server.url, context, "GET", "/v1/models", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200


def test_twin_an_untrusted_certificate_is_refused(tls_server):
    server, _ = tls_server
    with pytest.raises(ssl.SSLCertVerificationError):
        _https(server.url, ssl.create_default_context(), "GET", "/healthz")


def test_client_over_https_with_the_token(tls_server, int8_export, certificate_authority):
    server, _ = tls_server
    folder = certificate_authority
    done = run_cli("client", str(int8_export), "--url", server.url, "--digits", "20", "--token-file", str(folder / "token"),
                   "--ca-file", str(folder / "ca.pem"))
    assert done.returncode == 0, done.stderr
    assert "20 images via ExecuTorch" in done.stdout + done.stderr
    done = run_cli("client", str(int8_export), "--url", server.url, "--digits", "2")  # the system store does not trust our CA
    assert_error_after_progress(done, "TLS failed")
    assert "--ca-file" in done.stderr
    done = run_cli("client", str(int8_export), "--url", server.url, "--digits", "2", "--ca-file", str(folder / "ca.pem"))
    assert done.returncode == 1 and "401" in done.stderr and TOKEN not in done.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--tls-cert", "CERT"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "CERT", "--tls-key", "MISSING"], "--tls-key MISSING: no such file"),
        (["--tls-cert", "KEY", "--tls-key", "CERT"], "not a matching PEM certificate and key"),
        (["--token-file", "SHORT"], "at least 16 printable characters"),
        (["--token-file", "MISSING"], "--token-file MISSING: no such file"),
    ],
)
def test_bad_tls_and_token_flags_exit_2(int8_export, certificate_authority, tmp_path, flags, message):
    (tmp_path / "short").write_text("abc")
    files = {"CERT": certificate_authority / "cert.pem", "KEY": certificate_authority / "key.pem", "SHORT": tmp_path / "short",
             "MISSING": tmp_path / "missing"}
    argv = [str(files.get(f, f)) for f in flags]
    done = run_cli("serve", str(int8_export), "--port", "0", *argv, timeout=120)
    assert_one_line_error(done, message.replace("MISSING", str(tmp_path / "missing")))


# ---- the client honours Retry-After --------------------------------------------------------------


class _Scripted(BaseHTTPRequestHandler):
    script: ClassVar[list[tuple[int, dict]]] = []
    seen: ClassVar[list[dict]] = []

    def _answer(self):
        self.seen.append(dict(self.headers))
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        status, headers = self.script.pop(0) if self.script else (200, {})
        body = json.dumps({"status": status, "error": "scripted"} if status != 200 else {"model_id": "m", "tasks": [], "predictions": [],
                                                                                       "timing": {"server_ms": 1}}).encode()
        self.send_response(status)
        for k, v in {**headers, "Content-Type": "application/json", "Content-Length": str(len(body))}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Scripted.seen.clear()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_client_retries_503_after_retry_after_and_gives_up_after_three(scripted):
    from dtconvert.client import DecoderClient, ServerError

    _, url = scripted
    waits = []
    _Scripted.script = [(503, {"Retry-After": "2"}), (503, {"Retry-After": "60"}), (200, {})]
    client = DecoderClient(url, token="t" * 20, sleep=waits.append)
    answer, _ = client.decode(b"x")
    assert answer["model_id"] == "m" and waits == [2.0, 5.0] and client.retried == 2  # 60 s capped at 5
    assert all(h.get("Authorization") == "Bearer " + "t" * 20 for h in _Scripted.seen)
    _Scripted.script = [(503, {"Retry-After": "soon"})] * 4
    waits.clear()
    with pytest.raises(ServerError, match="HTTP 503"):
        client.decode(b"x")
    assert waits == [1.0, 1.0, 1.0]  # unreadable Retry-After: the default; three retries, then the 503


def test_twin_client_does_not_retry_a_4xx(scripted):
    from dtconvert.client import DecoderClient, ServerError

    _, url = scripted
    waits = []
    _Scripted.script = [(422, {}), (200, {})]
    with pytest.raises(ServerError, match="HTTP 422"):
        DecoderClient(url, sleep=waits.append).decode(b"x")
    assert waits == []


# ---- exports are untrusted input: every Python reader ------------------------------------------------


def _doctored(export_dir: Path, tmp_path: Path, how: str) -> tuple[Path, str]:
    """A copy of the export whose ExecuTorch artifact path is made hostile in one way; returns it and the text
    the error must contain."""
    copy = Path(shutil.copytree(export_dir, tmp_path / "export"))
    manifest = manifest_of(copy)
    index, entry = next((i, a) for i, a in enumerate(manifest["artifacts"]) if a["target"] == "executorch")
    secret = tmp_path / "secret.pte"
    shutil.copy(copy / entry["path"], secret)
    if how == "dotdot":
        entry["path"] = "../secret.pte"
        expected = f"artifacts[{index}].path '../secret.pte' leaves the export directory"
    elif how == "absolute":
        entry["path"] = str(secret)
        expected = f"artifacts[{index}].path '{secret}' leaves the export directory"
    elif how == "symlink":
        (copy / entry["path"]).unlink()
        (copy / entry["path"]).symlink_to(secret)
        expected = f"artifacts[{index}].path '{entry['path']}' resolves to {secret}, outside the export directory"
    else:  # corrupt: bytes the manifest's sha256 vouches for, that ExecuTorch cannot load
        (copy / entry["path"]).write_bytes(b"not a program" * 100)
        entry.update(describe_file(copy, entry["path"]))
        entry.pop("delegation", None)
        expected = f"{entry['path']}: ExecuTorch XNNPACK cannot load it"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy, expected


PROGRESS = re.compile(r"^(✓ |\d+ images → )")  # the commands' own progress lines on stderr


def assert_error_after_progress(done: subprocess.CompletedProcess, expected: str) -> None:
    """Exit 2, no traceback, one 'error: ' line, last, naming the problem; anything before it is the
    command's own progress (no runtime or library chatter)."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and expected in lines[-1], done.stderr
    assert all(PROGRESS.match(line) for line in lines[:-1]), done.stderr


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "corrupt"])
@pytest.mark.parametrize("reader", ["verify", "serve", "client", "bench"])
def test_every_reader_refuses_a_hostile_export_in_one_line(int8_export, tmp_path, reader, how):
    copy, expected = _doctored(int8_export, tmp_path, how)
    if reader == "verify":
        if how == "corrupt":
            expected = expected.replace("ExecuTorch XNNPACK", "executorch")
        done = run_cli("verify", str(copy), "--limit", "4")
    elif reader == "serve":
        if how == "corrupt":  # serve loads only the decoder: break that one instead
            manifest = manifest_of(copy)
            entry = next(a for a in manifest["artifacts"] if a["target"] == "torchscript")
            (copy / entry["path"]).write_bytes(b"not a decoder" * 100)
            entry.update(describe_file(copy, entry["path"]))
            (copy / "manifest.json").write_text(json.dumps(manifest))
            expected = f"{entry['path']}: TorchScript cannot load it"
        done = run_cli("serve", str(copy), "--port", "0", timeout=120)
    elif reader == "client":
        done = run_cli("client", str(copy), "--url", "http://127.0.0.1:9", "--digits", "1")
    else:
        done = run_cli("bench", str(copy), "--runs", "1", "--warmup", "0", "--no-memory")
    assert_error_after_progress(done, expected)


def test_twin_every_reader_takes_the_intact_export(int8_export, tmp_path):
    """The same copy, undoctored, is taken by every reader of the test above, each run to the end."""
    copy = Path(shutil.copytree(int8_export, tmp_path / "export"))
    done = run_cli("verify", str(copy), "--limit", "4")
    assert done.returncode == 0, done.stderr
    done = run_cli("bench", str(copy), "--runs", "1", "--warmup", "0", "--no-memory")
    assert done.returncode == 0, done.stderr
    with running_server(copy) as server:  # serve: loads the decoder and answers
        done = run_cli("client", str(copy), "--url", server.url, "--digits", "1")
        assert done.returncode == 0, done.stderr
