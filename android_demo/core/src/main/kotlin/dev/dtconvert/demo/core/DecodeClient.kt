package dev.dtconvert.demo.core

import java.io.IOException
import java.net.HttpURLConnection
import java.net.URI

/** The HTTP API of `dtconvert serve`: paths, the query parameter and the JSON keys it answers with. */
object ServerApi {
    const val DECODE_PATH = "/v1/decode"
    const val HEALTH_PATH = "/healthz"
    const val TOP_K_PARAM = "top_k"

    const val MODEL_ID = "model_id"
    const val MODEL_IDS = "model_ids"
    const val TASKS = "tasks"
    const val PREDICTIONS = "predictions"
    const val LABEL = "label"
    const val INDEX = "index"
    const val SCORE = "score"
    const val TIMING = "timing"
    const val QUEUE_MS = "queue_ms"
    const val DECODE_MS = "decode_ms"
    const val SERVER_MS = "server_ms"
    const val BATCH_IMAGES = "batch_images"
    const val ERROR = "error"
    const val STATUS = "status"
}

/** Wall time since construction, in milliseconds (monotonic clock). */
class Stopwatch {
    private val startNanos = System.nanoTime()

    val elapsedMs: Double get() = (System.nanoTime() - startNanos) / 1e6
}

/** The server's own account of a request (`timing` in its answer). */
data class ServerTiming(val queueMs: Double, val decodeMs: Double, val serverMs: Double, val batchImages: Int)

/**
 * The cloud decoder's answer to one wire message.
 *
 * @property predictions one map per image in the message, in order: task name → top-k, highest first
 * @property roundTripMs wall time from opening the request to the last byte of the answer, measured here
 */
data class DecodeResult(
    val modelId: String,
    val tasks: List<String>,
    val predictions: List<Map<String, List<Prediction>>>,
    val timing: ServerTiming?,
    val roundTripMs: Double,
)

/**
 * `/healthz`: [modelId] is the server's first model; [modelIds] every model it serves (a shared
 * cloud serves several device variants; a server before that answered one `model_id` only).
 */
data class Health(val status: String, val modelId: String, val modelIds: List<String> = listOf(modelId)) {
    fun serves(id: String): Boolean = id in modelIds
}

/** A 4xx/5xx answer; [message] is the server's one sentence naming the field and the problem. */
class ServerException(val status: Int, message: String) : IOException(message)

/**
 * A blocking client for `dtconvert serve` (call it off the main thread on Android).
 * Plain `java.net`, so the same code runs in the app and in the JVM tests against the real server.
 */
class DecodeClient(baseUrl: String, private val connectTimeoutMs: Int = 5_000, private val readTimeoutMs: Int = 15_000) {
    val baseUrl: String = baseUrl.trim().trimEnd('/')

    init {
        val uri = try {
            URI(this.baseUrl)
        } catch (e: Exception) {
            throw IllegalArgumentException("server URL \"$baseUrl\" is not a URL (${e.message})")
        }
        require(uri.scheme == "http" || uri.scheme == "https") { "server URL \"$baseUrl\" must start with http:// or https://" }
        require(!uri.host.isNullOrEmpty()) { "server URL \"$baseUrl\" has no host" }
    }

    /** The host this client talks to (for the app's cleartext check). */
    val host: String get() = URI(baseUrl).host

    /** Whether requests go out as plain HTTP, which Android allows only to hosts its build names. */
    val isCleartext: Boolean get() = URI(baseUrl).scheme == "http"

    /** POST one encoded wire message to `/v1/decode`; [topK] null lets the server pick its default. */
    fun decode(message: ByteArray, topK: Int? = null): DecodeResult {
        val query = topK?.let { "?${ServerApi.TOP_K_PARAM}=$it" } ?: ""
        val clock = Stopwatch()
        val (status, body) = exchange("POST", ServerApi.DECODE_PATH + query, message, WireFormat.CONTENT_TYPE)
        val roundTripMs = clock.elapsedMs
        val root = answer(status, body, ServerApi.DECODE_PATH)
        val tasks = root[ServerApi.TASKS].strings()
        val predictions = root[ServerApi.PREDICTIONS].items().map { image ->
            image.entries().associate { (task, ranked) ->
                task to ranked.items().map { entry ->
                    Prediction(
                        label = entry[ServerApi.LABEL].string(),
                        index = entry[ServerApi.INDEX].int(),
                        score = entry[ServerApi.SCORE].double().toFloat(),
                    )
                }
            }
        }
        val timing = root.optional(ServerApi.TIMING)?.let { t ->
            ServerTiming(
                queueMs = t[ServerApi.QUEUE_MS].double(),
                decodeMs = t[ServerApi.DECODE_MS].double(),
                serverMs = t[ServerApi.SERVER_MS].double(),
                batchImages = t[ServerApi.BATCH_IMAGES].int(),
            )
        }
        return DecodeResult(root[ServerApi.MODEL_ID].string(), tasks, predictions, timing, roundTripMs)
    }

    /** GET `/healthz`. */
    fun health(): Health {
        val (status, body) = exchange("GET", ServerApi.HEALTH_PATH, null, null)
        val root = answer(status, body, ServerApi.HEALTH_PATH)
        val first = root[ServerApi.MODEL_ID].string()
        val all = root.optional(ServerApi.MODEL_IDS)?.strings() ?: listOf(first)
        return Health(root[ServerApi.STATUS].string(), first, all)
    }

    /**
     * Send a raw request and return the status and body: [decode] and [health] use it, and
     * tests use it to send what a correct client never would (a wrong content type).
     */
    fun exchange(method: String, path: String, body: ByteArray?, contentType: String?): Pair<Int, String> {
        val connection = URI(baseUrl + path).toURL().openConnection() as HttpURLConnection
        connection.connectTimeout = connectTimeoutMs
        connection.readTimeout = readTimeoutMs
        connection.requestMethod = method
        connection.setRequestProperty("Accept", "application/json")
        if (body != null) {
            connection.doOutput = true
            if (contentType != null) connection.setRequestProperty("Content-Type", contentType)
            connection.setFixedLengthStreamingMode(body.size)
            connection.outputStream.use { it.write(body) }
        }
        val status = connection.responseCode
        val stream = if (status >= 400) connection.errorStream else connection.inputStream
        val text = stream?.use { String(it.readBytes(), Charsets.UTF_8) } ?: ""
        return status to text
    }

    private fun answer(status: Int, body: String, path: String): JsonField {
        val source = "$baseUrl$path"
        if (status !in 200..299) {
            val sentence = try {
                JsonField.parse(body, source)[ServerApi.ERROR].string()
            } catch (e: IllegalArgumentException) {
                "HTTP $status: ${body.take(200).ifBlank { "empty body" }}"
            }
            throw ServerException(status, sentence)
        }
        return JsonField.parse(body, source)
    }
}
