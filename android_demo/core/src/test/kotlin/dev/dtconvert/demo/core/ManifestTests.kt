package dev.dtconvert.demo.core

import com.sun.net.httpserver.HttpServer
import com.sun.net.httpserver.HttpsConfigurator
import com.sun.net.httpserver.HttpsServer
import java.net.InetSocketAddress
import javax.net.ssl.SSLContext

/** A small manifest with the fields the app reads, in the shape `dtconvert export` writes. */
val SAMPLE_MANIFEST = """
{
 "schema_version": 1,
 "model": {"name": "tiny", "id": "0123456789abcdef", "checkpoint": {"file": "ckpt.pt", "sha256": "${"a".repeat(64)}"}, "created": "2026-11-21T00:00:00+00:00"},
 "precision": "int8",
 "device_input": {"name": "image", "shape": [1, 1, 4, 4], "dtype": "float32", "layout": "NCHW",
   "preprocessing": {"size": [4, 4], "channels": 1, "resize": "bilinear", "scale": 0.00392156862745098, "mean": [0.5], "std": [0.25]}},
 "wire": {"name": "wire", "shape": [1, 2, 3], "dtype": "int8", "scale": 0.028272707015275955, "zero_point": -3, "bytes_per_image": 6,
   "formula": "q = ...", "calibration": {"source": "test", "images": 32}},
 "communication": {"wire_int8_bytes": 6, "device_input_uint8_bytes": 16, "unpooled_fp32_token_bytes": 256},
 "tasks": [{"name": "digit", "labels": ["0", "1", "2"]}, {"name": "odd", "labels": ["even", "odd"]}],
 "artifacts": [
  {"path": "tiny_encoder_executorch_int8.pte", "kind": "file", "part": "device", "target": "executorch", "precision": "int8",
   "bytes": 10, "sha256": "${"b".repeat(64)}",
   "inputs": [{"name": "image", "shape": [1, 1, 4, 4], "dtype": "float32"}], "outputs": [{"name": "wire", "shape": [1, 2, 3], "dtype": "float32"}]},
  {"path": "tiny_decoder_torchscript_fp32.pt", "kind": "file", "part": "cloud", "target": "torchscript", "precision": "fp32",
   "bytes": 10, "sha256": "${"c".repeat(64)}"}
 ],
 "data": {"source": {}, "recipe": {}, "heldout": [3, 5]},
 "tools": {},
 "verification": null
}
"""

fun broken(from: String, to: String): String {
    expect(from in SAMPLE_MANIFEST) { "test bug: \"$from\" is not in the sample manifest" }
    return SAMPLE_MANIFEST.replace(from, to)
}

val manifestTests = listOf(
    test("manifest parses the fields the app reads") {
        val m = Manifest.parse(SAMPLE_MANIFEST)
        assertEquals("0123456789abcdef", m.modelId, "model id")
        assertEquals(listOf(1, 1, 4, 4), m.deviceInput.shape, "input shape")
        assertEquals(Preprocessing(4, 4, 1, "bilinear", 1.0 / 255.0, listOf(0.5f), listOf(0.25f)), m.deviceInput.preprocessing, "preprocessing")
        assertEquals(0.028272707015275955.toFloat(), m.wire.scale, "wire scale as float32")
        assertEquals(-3, m.wire.zeroPoint, "zero point")
        assertEquals(listOf(2, 3), m.wire.imageShape, "wire shape per image")
        assertEquals(listOf("digit", "odd"), m.tasks.map { it.name }, "tasks")
        assertEquals(listOf("executorch"), m.androidTargets, "android targets")
        assertEquals("tiny_encoder_executorch_int8.pte", m.deviceArtifact("executorch").path, "artifact")
        assertEquals(null, m.golden, "no golden section")
        assertEquals(listOf(3, 5), m.heldout, "held-out indices")
        assertEquals(0b10L, m.taskMask(listOf("odd")), "task mask")
        assertEquals(0L, m.taskMask(emptyList()), "all tasks")
    },
    test("manifest errors name the field") {
        val cases = mapOf(
            broken("\"schema_version\": 1", "\"schema_version\": 2") to "schema_version is 2, newer than this app reads (1)",
            broken("\"id\": \"0123456789abcdef\"", "\"id\": \"XYZ\"") to "model.id must be 16 lowercase hex digits",
            broken("\"zero_point\": -3", "\"zero_point\": 200") to "wire.zero_point must be in -128..127, got 200",
            broken("\"scale\": 0.028272707015275955", "\"scale\": 0") to "wire.scale must be finite and positive",
            broken("\"scale\": 0.028272707015275955", "\"scale\": 1e300") to "wire.scale must be finite and positive as float32",
            broken("\"bytes_per_image\": 6", "\"bytes_per_image\": 7") to "wire.bytes_per_image is 7",
            broken("\"dtype\": \"int8\", \"scale\"", "\"dtype\": \"uint8\", \"scale\"") to "wire.dtype is uint8",
            broken("\"layout\": \"NCHW\"", "\"layout\": \"NHWC\"") to "device_input.layout is NHWC",
            broken("\"mean\": [0.5]", "\"mean\": [0.5, 0.5]") to "device_input.preprocessing.mean must have 1 values",
            broken("\"std\": [0.25]", "\"std\": [0]") to "device_input.preprocessing.std must be positive",
            broken("\"resize\": \"bilinear\"", "\"resize\": \"bicubic\"") to "device_input.preprocessing.resize must be bilinear or nearest",
            broken("\"shape\": [1, 1, 4, 4], \"dtype\": \"float32\", \"layout\"", "\"shape\": [1, 1, 8, 8], \"dtype\": \"float32\", \"layout\"") to
                "device_input.shape is [1, 1, 8, 8] but the preprocessing makes [1, 1, 4, 4]",
            broken("\"labels\": [\"even\", \"odd\"]", "\"labels\": [\"even\"]") to "tasks[1].labels must name at least 2 labels",
            broken("\"path\": \"tiny_encoder_executorch_int8.pte\", ", "") to "artifacts[0].path is missing",
            broken("\"precision\": \"int8\",\n \"device_input\"", "\"precision\": 8,\n \"device_input\"") to "precision must be a string",
        )
        for ((text, fragment) in cases) assertThrows<IllegalArgumentException>(fragment) { Manifest.parse(text) }
    },
    test("manifest device artifact lookup checks shapes and names what exists") {
        val m = Manifest.parse(SAMPLE_MANIFEST)
        assertThrows<ManifestException>("no device artifact for target tflite (this export has executorch)") { m.deviceArtifact("tflite") }
        val wrongOut = Manifest.parse(broken("\"outputs\": [{\"name\": \"wire\", \"shape\": [1, 2, 3]", "\"outputs\": [{\"name\": \"wire\", \"shape\": [1, 3, 2]"))
        assertThrows<ManifestException>("output shape [1, 3, 2] differs from wire.shape [1, 2, 3]") { wrongOut.deviceArtifact("executorch") }
        assertThrows<ManifestException>("no task named mod3") { m.taskMask(listOf("mod3")) }
    },
    test("export refuses an artifact whose bytes differ from the manifest") {
        val files = ExportFiles { path, _ -> if (path == Manifest.FILE_NAME) SAMPLE_MANIFEST.toByteArray() else ByteArray(10) }
        val export = Export.open(files)
        val artifact = export.manifest.deviceArtifact(ManifestValues.TARGET_EXECUTORCH)
        assertThrows<java.io.IOException>(
            "artifacts[0].path \"tiny_encoder_executorch_int8.pte\": 10 bytes with sha256 01d448afd928065458cf670b60f5a594d735af0172c8d67f22a81680132681ca",
        ) {
            export.artifactBytes(artifact)
        }
        assertEquals(emptyList<GreyImage>(), export.heldoutImages(), "no golden section, no bundled images")
    },
    test("wire encoder quantizes, checks sizes and stacks a batch") {
        val m = Manifest.parse(SAMPLE_MANIFEST)
        val encoder = WireEncoder(m)
        val out = FloatArray(6) { (it - 2) * m.wire.scale }
        val message = WireFormat.decode(encoder.encode(listOf(out, out), taskMask = 1))
        assertEquals(listOf(2, 2, 3), message.shape, "batch shape")
        assertEquals(listOf<Byte>(-5, -4, -3, -2, -1, 0), message.values.copyOfRange(0, 6).toList(), "quantized with zero point -3")
        assertEquals(m.modelId, message.modelId, "model id")
        assertEquals(1L, message.taskMask, "task mask")
        assertThrows<IllegalArgumentException>("returned 5 values; wire.shape [1, 2, 3] needs 6") { encoder.quantize(FloatArray(5)) }
        assertThrows<IllegalArgumentException>("at least one image") { encoder.messageOf(emptyList()) }
    },
)

/** One canned answer of the stub server. */
class StubAnswer(val status: Int, val body: String, val headers: Map<String, String> = emptyMap())

/**
 * A throwaway HTTP server on loopback (HTTPS when [tls] is given) answering the n-th request with
 * `answers[n]` (the last one again once they run out). Each request is recorded in [seen] as
 * `METHOD URI CONTENT-TYPE BYTES`, and its Authorization header in [authorizations].
 */
fun <T> withScriptedServer(
    answers: List<StubAnswer>,
    seen: MutableList<String>,
    authorizations: MutableList<String?> = mutableListOf(),
    tls: SSLContext? = null,
    block: (String) -> T,
): T {
    val address = InetSocketAddress("127.0.0.1", 0)
    val server = if (tls == null) HttpServer.create(address, 0) else HttpsServer.create(address, 0).apply { httpsConfigurator = HttpsConfigurator(tls) }
    var requests = 0
    server.createContext("/") { exchange ->
        val request = exchange.requestBody.readBytes()
        val answer = synchronized(seen) {
            seen += "${exchange.requestMethod} ${exchange.requestURI} ${exchange.requestHeaders.getFirst("Content-Type")} ${request.size}"
            authorizations += exchange.requestHeaders.getFirst(ServerApi.AUTHORIZATION)
            answers[minOf(++requests, answers.size) - 1]
        }
        val bytes = answer.body.toByteArray()
        exchange.responseHeaders.add("Content-Type", "application/json")
        for ((name, value) in answer.headers) exchange.responseHeaders.add(name, value)
        exchange.sendResponseHeaders(answer.status, bytes.size.toLong())
        exchange.responseBody.use { it.write(bytes) }
    }
    server.start()
    try {
        val scheme = if (tls == null) "http" else "https"
        return block("$scheme://127.0.0.1:${server.address.port}/")
    } finally {
        server.stop(0)
    }
}

/** A throwaway HTTP server on loopback answering every request with [status] and [body]. */
private fun <T> withStubServer(status: Int, body: String, seen: MutableList<String>, block: (String) -> T): T =
    withScriptedServer(listOf(StubAnswer(status, body)), seen, block = block)

val clientTests = listOf(
    test("client posts the message and parses predictions and timing") {
        val answer = """{"model_id": "0123456789abcdef", "tasks": ["digit"],
            "predictions": [{"digit": [{"label": "3", "index": 3, "score": 0.9}, {"label": "5", "index": 5, "score": 0.05}]}],
            "timing": {"queue_ms": 0.4, "decode_ms": 1.2, "server_ms": 1.9, "batch_images": 1}}"""
        val seen = mutableListOf<String>()
        val result = withStubServer(200, answer, seen) { url -> DecodeClient(url).decode(ByteArray(108), topK = 2) }
        assertEquals(listOf("POST /v1/decode?top_k=2 application/octet-stream 108"), seen, "request")
        assertEquals(listOf(3, 5), result.predictions.single().getValue("digit").map { it.index }, "indices")
        assertEquals(0.9f, result.predictions.single().getValue("digit")[0].score, "score")
        assertEquals(ServerTiming(0.4, 1.2, 1.9, 1), result.timing, "timing")
        expect(result.roundTripMs > 0.0) { "round trip ${result.roundTripMs} ms" }
    },
    test("client turns an error answer into its sentence and status") {
        val seen = mutableListOf<String>()
        val error = """{"error": "model_id ffff does not match the loaded model 0123", "status": 422}"""
        val e = try {
            withStubServer(422, error, seen) { url -> DecodeClient(url).decode(ByteArray(1)) }
            fail("no exception for a 422")
        } catch (e: ServerException) {
            e
        }
        assertEquals(422, e.status, "status")
        assertEquals("model_id ffff does not match the loaded model 0123", e.message, "message")
        assertEquals(listOf("POST /v1/decode application/octet-stream 1"), seen, "no top_k when not asked")
        assertThrows<ServerException>("HTTP 502: <html>") { withStubServer(502, "<html>bad gateway</html>", seen) { DecodeClient(it).health() } }
    },
    test("client refuses a URL it cannot use") {
        assertThrows<IllegalArgumentException>("must start with http:// or https://") { DecodeClient("ftp://host/") }
        assertThrows<IllegalArgumentException>("has no host") { DecodeClient("http:///v1") }
        assertEquals("http://10.0.2.2:8000", DecodeClient(" http://10.0.2.2:8000/ ").baseUrl, "trimmed")
    },
)
