package dev.dtconvert.demo.core

import java.io.IOException
import java.net.HttpURLConnection
import java.net.URI
import javax.net.ssl.HttpsURLConnection
import javax.net.ssl.SSLSocketFactory

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

    /** The overloaded server's answer; the only status a client retries. */
    const val OVERLOADED = 503
    const val RETRY_AFTER = "Retry-After"
    const val AUTHORIZATION = "Authorization"
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

/**
 * A 4xx/5xx answer; [message] is the server's one sentence naming the field and the problem.
 * [retries] is how many times a 503 was retried before it was given up.
 */
class ServerException(val status: Int, message: String, val retries: Int = 0) : IOException(message)

/**
 * How [DecodeClient] treats an overloaded server (`503` with `Retry-After: <seconds>`): wait what
 * the server asks, but at most [maxWaitMs] (a missing or unreadable header waits [defaultWaitMs]),
 * and ask again, at most [maxRetries] times; then the 503 surfaces as a [ServerException].
 *
 * Only a 503 is retried. A 4xx is the request's own fault and would fail the same way again, and a
 * refused connection means no server is listening, which waiting a few seconds rarely fixes and
 * would only hide from the user.
 */
data class RetryPolicy(val maxRetries: Int = 3, val maxWaitMs: Long = 5_000, val defaultWaitMs: Long = 1_000) {
    init {
        require(maxRetries >= 0 && maxWaitMs >= 0 && defaultWaitMs >= 0) { "retry counts and waits cannot be negative: $this" }
    }

    /** How long to wait before the next try, given the 503's `Retry-After` header (null when absent). */
    fun waitMs(retryAfter: String?): Long {
        val seconds = retryAfter?.trim()?.toLongOrNull()?.takeIf { it >= 0 } ?: return minOf(defaultWaitMs, maxWaitMs)
        // Compare in seconds first: a huge header must not overflow the multiplication.
        return if (seconds > maxWaitMs / 1_000) maxWaitMs else seconds * 1_000
    }

    companion object {
        /** Never retry: the first 503 surfaces at once. */
        val NONE = RetryPolicy(maxRetries = 0)
    }
}

/** One HTTP answer: [status], [body] and the `Retry-After` header, if any. */
data class HttpReply(val status: Int, val body: String, val retryAfter: String?)

/**
 * A blocking client for `dtconvert serve` (call it off the main thread on Android).
 * Plain `java.net`, so the same code runs in the app and in the JVM tests against the real server.
 *
 * @param baseUrl `http://` or `https://` (a server started with `--tls-cert`); HTTPS is checked
 *   against the platform's trusted certificates, or against [sslSocketFactory] when given (a
 *   self-signed development certificate)
 * @param token sent as `Authorization: Bearer <token>` (a server started with `--token-file`);
 *   null or blank sends none. Never logged and never part of an error message.
 * @param retry what a 503 gets ([RetryPolicy]); [sleep] waits between tries (tests record it)
 */
class DecodeClient(
    baseUrl: String,
    token: String? = null,
    private val retry: RetryPolicy = RetryPolicy(),
    private val connectTimeoutMs: Int = 5_000,
    private val readTimeoutMs: Int = 15_000,
    private val sslSocketFactory: SSLSocketFactory? = null,
    private val sleep: (Long) -> Unit = { Thread.sleep(it) },
) {
    val baseUrl: String = baseUrl.trim().trimEnd('/')
    private val token: String? = token?.trim()?.ifEmpty { null }

    init {
        val uri = try {
            URI(this.baseUrl)
        } catch (e: Exception) {
            throw IllegalArgumentException("server URL \"$baseUrl\" is not a URL (${e.message})")
        }
        require(uri.scheme == "http" || uri.scheme == "https") { "server URL \"$baseUrl\" must start with http:// or https://" }
        require(!uri.host.isNullOrEmpty()) { "server URL \"$baseUrl\" has no host" }
        // A header value cannot hold spaces or control characters; the message must not repeat the token.
        require(this.token == null || this.token.all { it in '!'..'~' }) { "the server token must be printable ASCII without spaces" }
    }

    /** Whether requests carry a bearer token. */
    val hasToken: Boolean get() = token != null

    /** The host this client talks to (for the app's cleartext check). */
    val host: String get() = URI(baseUrl).host

    /** Whether requests go out as plain HTTP, which Android allows only to hosts its build names. */
    val isCleartext: Boolean get() = URI(baseUrl).scheme == "http"

    /** POST one encoded wire message to `/v1/decode`; [topK] null lets the server pick its default. */
    fun decode(message: ByteArray, topK: Int? = null): DecodeResult {
        val query = topK?.let { "?${ServerApi.TOP_K_PARAM}=$it" } ?: ""
        val clock = Stopwatch()
        val (reply, retries) = exchangeRetrying("POST", ServerApi.DECODE_PATH + query, message, WireFormat.CONTENT_TYPE)
        val roundTripMs = clock.elapsedMs
        val root = answer(reply, retries, ServerApi.DECODE_PATH)
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
        val (reply, retries) = exchangeRetrying("GET", ServerApi.HEALTH_PATH, null, null)
        val root = answer(reply, retries, ServerApi.HEALTH_PATH)
        val first = root[ServerApi.MODEL_ID].string()
        val all = root.optional(ServerApi.MODEL_IDS)?.strings() ?: listOf(first)
        return Health(root[ServerApi.STATUS].string(), first, all)
    }

    /**
     * Send one raw request (with the token, without retries) and return the answer: [decode] and
     * [health] use it, and tests use it to send what a correct client never would (a wrong
     * content type).
     */
    fun exchange(method: String, path: String, body: ByteArray?, contentType: String?): HttpReply {
        val connection = URI(baseUrl + path).toURL().openConnection() as HttpURLConnection
        connection.connectTimeout = connectTimeoutMs
        connection.readTimeout = readTimeoutMs
        // The server never redirects; following one could carry the token to another host.
        connection.instanceFollowRedirects = false
        if (connection is HttpsURLConnection && sslSocketFactory != null) connection.sslSocketFactory = sslSocketFactory
        connection.requestMethod = method
        connection.setRequestProperty("Accept", "application/json")
        token?.let { connection.setRequestProperty(ServerApi.AUTHORIZATION, "Bearer $it") }
        if (body != null) {
            connection.doOutput = true
            if (contentType != null) connection.setRequestProperty("Content-Type", contentType)
            // Buffered, not setFixedLengthStreamingMode: in streaming mode the JDK answers a 401 that
            // carries `WWW-Authenticate` with no body, and the server's sentence would be lost.
            // A wire message is a few hundred bytes.
            connection.outputStream.use { it.write(body) }
        }
        val status = connection.responseCode
        val stream = if (status >= 400) connection.errorStream else connection.inputStream
        val text = stream?.use { String(it.readBytes(), Charsets.UTF_8) } ?: ""
        return HttpReply(status, text, connection.getHeaderField(ServerApi.RETRY_AFTER))
    }

    /** [exchange], retrying a 503 as [retry] says; returns the last answer and how many retries it took. */
    private fun exchangeRetrying(method: String, path: String, body: ByteArray?, contentType: String?): Pair<HttpReply, Int> {
        var retries = 0
        while (true) {
            val reply = exchange(method, path, body, contentType)
            if (reply.status != ServerApi.OVERLOADED || retries >= retry.maxRetries) return reply to retries
            sleep(retry.waitMs(reply.retryAfter))
            retries++
        }
    }

    private fun answer(reply: HttpReply, retries: Int, path: String): JsonField {
        val source = "$baseUrl$path"
        if (reply.status !in 200..299) {
            val sentence = try {
                JsonField.parse(reply.body, source)[ServerApi.ERROR].string()
            } catch (e: IllegalArgumentException) {
                "HTTP ${reply.status}: ${reply.body.take(200).ifBlank { "empty body" }}"
            }
            throw ServerException(reply.status, sentence, retries)
        }
        return JsonField.parse(reply.body, source)
    }
}
