"""``dtconvert client``: the reference device client, doing exactly what the demo apps do.

Per image: preprocess per the manifest, run the device artifact in its real runtime
(ExecuTorch or LiteRT), quantize its output with the manifest's wire scale and zero point,
encode a wire-format message, POST it to ``/v1/decode`` and read the predictions. It measures
the on-device time, the payload bytes and the round-trip time of each request.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from dtconvert.errors import UserError, unloadable
from dtconvert.targets import PRIMARY_RUNTIME, Run, load_target, runtime_label
from dtconvert.wire import CONTENT_TYPE

CLIENT_TARGETS = ("executorch", "tflite")  # the runtimes the demo apps use (Core ML predicts only on Apple platforms)


class ServerError(Exception):
    """The server answered with an error; the message is its own."""


RETRIES = 3  # 503 answers retried at most this many times per request
MAX_RETRY_WAIT = 5.0  # seconds: a Retry-After above it is capped
DEFAULT_RETRY_WAIT = 1.0  # seconds, when a 503 names no (readable) Retry-After


class DecoderClient:
    """One keep-alive HTTP(S) connection to a ``dtconvert serve`` instance.

    ``token``: sent as ``Authorization: Bearer`` on every request (never logged). ``cafile``: a
    PEM bundle to trust for https (the system's store otherwise). A 503 is retried after its
    ``Retry-After`` (capped at MAX_RETRY_WAIT s), at most ``retries`` times; no other status is."""

    def __init__(
        self,
        url: str,
        timeout: float = 30.0,
        token: str | None = None,
        cafile: Path | None = None,
        retries: int = RETRIES,
        sleep=time.sleep,
    ) -> None:
        import ssl

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"--url {url!r}: expected http://HOST:PORT or https://HOST:PORT")
        self.url = url.rstrip("/")
        self.base = parts.path.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.retries, self.sleep, self.retried = retries, sleep, 0
        self.connection: http.client.HTTPConnection  # HTTPS or plain
        if parts.scheme == "https":
            try:
                context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
            except (OSError, ssl.SSLError) as e:
                raise UserError(f"--ca-file {cafile}: not a readable PEM certificate bundle ({e})") from None
            self.connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=context)
        else:
            if cafile is not None:
                raise UserError(f"--ca-file is for an https URL; {url} is plain http")
            self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
        for retry in range(self.retries + 1):
            status, answer, retry_after = self._once(method, path, body, {**self.headers, **(headers or {})})
            if status != 503 or retry == self.retries:
                return status, answer
            self.retried += 1
            self.sleep(retry_after)
        raise AssertionError("unreachable")

    def _once(self, method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, dict, float]:
        import ssl

        for attempt in (0, 1):  # one reconnect: a keep-alive connection the server closed while idle
            try:
                self.connection.request(method, self.base + path, body=body, headers=headers)
                response = self.connection.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.connection.close()
                if attempt:
                    raise ServerError(f"{self.url}: the server closed the connection") from None
            except ssl.SSLError as e:
                self.connection.close()
                raise UserError(
                    f"{self.url}: TLS failed ({e.reason or e}); pass --ca-file with the server's certificate authority"
                ) from None
            except (ConnectionRefusedError, OSError) as e:
                self.connection.close()
                raise UserError(f"cannot reach the decoder server at {self.url}: {e.strerror or e}") from None
        try:
            answer = json.loads(data)
        except ValueError:
            raise ServerError(f"{self.url}{path}: HTTP {response.status}, not a JSON answer") from None
        return response.status, answer, _retry_wait(response.getheader("Retry-After"))

    def model_ids(self) -> list[str]:
        """The model ids the server serves (``/healthz``: ``model_ids``, or the one ``model_id`` of an older server)."""
        status, answer = self._request("GET", "/healthz")
        if status != 200:
            raise ServerError(f"{self.url}/healthz: HTTP {status}: {answer.get('error', answer)}")
        return list(answer.get("model_ids") or [answer.get("model_id")])

    def decode(self, message: bytes, top_k: int = 3) -> tuple[dict, float]:
        """POST one wire message; return the JSON answer and the round-trip time in ms."""
        started = time.perf_counter()
        status, answer = self._request("POST", f"/v1/decode?top_k={top_k}", message, {"Content-Type": CONTENT_TYPE})
        rtt_ms = (time.perf_counter() - started) * 1000.0
        if status != 200:
            raise ServerError(f"server answered HTTP {status}: {answer.get('error', answer)}")
        return answer, rtt_ms

    def close(self) -> None:
        self.connection.close()


def _retry_wait(header: str | None) -> float:
    """Seconds to wait for a Retry-After value (delay seconds; an HTTP date or garbage: the default)."""
    if header is not None and header.strip().isdigit():
        return min(float(header.strip()), MAX_RETRY_WAIT)
    return DEFAULT_RETRY_WAIT


@dataclass
class ClientReport:
    target: str
    runtime: str
    url: str
    images: list[str]
    predictions: list[dict] = field(default_factory=list)
    payload_bytes: list[int] = field(default_factory=list)
    device_ms: list[float] = field(default_factory=list)
    rtt_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    accuracy: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        def pct(values, q):
            return round(float(np.percentile(values, q)), 3) if values else None

        return {
            "target": self.target,
            "runtime": self.runtime,
            "url": self.url,
            "images": len(self.images),
            "accuracy": self.accuracy,
            "payload_bytes": int(np.median(self.payload_bytes)) if self.payload_bytes else None,
            "device_ms": {"p50": pct(self.device_ms, 50), "p95": pct(self.device_ms, 95)},
            "rtt_ms": {"p50": pct(self.rtt_ms, 50), "p95": pct(self.rtt_ms, 95)},
            "server_ms": {"p50": pct(self.server_ms, 50), "p95": pct(self.server_ms, 95)},
        }

    def write_json(self, path: Path) -> None:
        """Every prediction and timing to ``path`` (written whole or not at all)."""
        from dtconvert.checkpoint import atomic_write

        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n"))

    def to_json(self) -> dict:
        return {
            "summary": self.summary(),
            "results": [
                {"image": name, "predictions": p, "payload_bytes": b, "device_ms": round(d, 3), "rtt_ms": round(r, 3)}
                for name, p, b, d, r in zip(self.images, self.predictions, self.payload_bytes, self.device_ms, self.rtt_ms, strict=True)
            ],
        }


def device_runner(export_dir: Path, manifest: dict, target: str) -> Run:
    """The device artifact for ``target`` in its runtime: a function (1, C, H, W) → float wire."""
    if target not in CLIENT_TARGETS:
        raise UserError(f"--target must be one of {', '.join(CLIENT_TARGETS)}, got {target!r} (Core ML runs only on iOS/macOS)")
    entries = [a for a in manifest["artifacts"] if a["part"] == "device" and a["target"] == target]
    if not entries:
        have = sorted(a["target"] for a in manifest["artifacts"] if a["part"] == "device")
        raise UserError(f"{export_dir}: the export has no {target} device artifact (it has: {', '.join(have) or 'none'})")
    path = export_dir / entries[0]["path"]
    if not path.exists():
        raise UserError(f"{path}: the device artifact the manifest lists is missing")
    try:
        run = load_target(target).runner(path)
        run(np.zeros(manifest["device_input"]["shape"], dtype=np.float32))  # some runtimes fail only on the first call
    except Exception as e:  # noqa: BLE001  the runtime raises anything on bytes it cannot load: reported as a broken export
        raise unloadable(path, runtime_label(PRIMARY_RUNTIME[target]), e) from None
    return run


def client_images(export_dir: Path, manifest: dict, folder: Path | None, digits: int | None):
    """(images (N, C, H, W) float32, labels (N, tasks) or None, names) as the apps would preprocess them."""
    from dtconvert.evaluation import folder_labels, heldout_images

    if folder is not None:
        import torch

        from dtconvert.data import IMAGE_SUFFIXES, image_files, load_image_file, normalize

        files = image_files(folder)
        if not files:
            raise UserError(f"--images {folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)} files)")
        pre = manifest["device_input"]["preprocessing"]
        unit = torch.cat([load_image_file(f, pre["size"][0], pre["channels"], pre["resize"]) for f in files])
        images = normalize(unit, pre["mean"], pre["std"]).numpy().astype(np.float32)
        return images, folder_labels(folder, manifest), [str(f.relative_to(folder)) for f in files]
    images, labels = heldout_images(manifest, digits)
    index = manifest["data"]["heldout"]
    return images, labels, [f"held-out #{i}" for i in index[: len(images)]]


def run_client(
    export_dir: Path,
    target: str,
    url: str,
    images: np.ndarray,
    labels: np.ndarray | None,
    names: list[str],
    top_k: int = 3,
    progress=None,
    token: str | None = None,
    cafile: Path | None = None,
) -> ClientReport:
    from dtconvert.manifest import load_manifest
    from dtconvert.wire import encode_payload, quantize_wire

    manifest = load_manifest(export_dir)
    run = device_runner(export_dir, manifest, target)
    wire = manifest["wire"]
    scale, zero_point, model_id = float(np.float32(wire["scale"])), int(wire["zero_point"]), manifest["model"]["id"]
    client = DecoderClient(url, token=token, cafile=cafile)
    try:
        served = client.model_ids()
        if model_id not in served:
            raise UserError(
                f"{url} serves model {', '.join(served)}, but {export_dir} is model {model_id}; "
                "start the server on this export (several exports may share one server)"
            )
        report = ClientReport(target, runtime_label(PRIMARY_RUNTIME[target]), url, names)
        tasks = [t["name"] for t in manifest["tasks"]]
        for i in range(len(images)):
            started = time.perf_counter()
            encoded = run(images[i : i + 1])
            report.device_ms.append((time.perf_counter() - started) * 1000.0)
            message = encode_payload(quantize_wire(encoded, scale, zero_point), scale, zero_point, model_id)
            answer, rtt = client.decode(message, top_k)
            report.payload_bytes.append(len(message))
            report.rtt_ms.append(rtt)
            report.server_ms.append(answer["timing"]["server_ms"])
            report.predictions.append(answer["predictions"][0])
            if progress is not None:
                progress(i + 1, len(images))
    finally:
        client.close()
    if labels is not None:
        for t, task in enumerate(tasks):
            known = labels[:, t] >= 0
            if known.any():
                top1 = np.array([p[task][0]["index"] for p in report.predictions])
                report.accuracy[task] = round(float((top1[known] == labels[known, t]).mean()), 6)
    return report


def check_client_options(images: Path | None, digits: int | None, ca_file: Path | None) -> None:
    """``dtconvert client``'s options that typer cannot check alone."""
    if (images is None) == (digits is None):
        raise UserError("pass one of --images DIR or --digits N")
    if images is not None and not images.is_dir():
        raise UserError(f"--images {images}: not a directory")
    if ca_file is not None and not ca_file.is_file():
        raise UserError(f"--ca-file {ca_file}: no such file")
