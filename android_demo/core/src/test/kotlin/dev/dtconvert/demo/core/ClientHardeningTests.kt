package dev.dtconvert.demo.core

import java.io.File
import java.nio.file.Files
import java.security.KeyStore
import java.util.concurrent.TimeUnit
import javax.net.ssl.KeyManagerFactory
import javax.net.ssl.SSLContext
import javax.net.ssl.SSLException
import javax.net.ssl.TrustManagerFactory

private const val DECODED = """{"model_id": "0123456789abcdef", "tasks": ["digit"], "predictions": [{"digit": [{"label": "3", "index": 3, "score": 0.9}]}]}"""
private const val BUSY = """{"error": "the decode queue is full (64 images waiting); try again shortly", "status": 503}"""
private const val UNAUTHORIZED = """{"error": "this server needs a bearer token (Authorization: Bearer ...)", "status": 401}"""
private const val TOKEN = "s3cret-T0ken_for+tests/="

private fun busy(retryAfter: String?) = StubAnswer(503, BUSY, retryAfter?.let { mapOf(ServerApi.RETRY_AFTER to it) } ?: emptyMap())

private fun serverError(block: () -> Unit): ServerException {
    try {
        block()
    } catch (e: ServerException) {
        return e
    }
    fail("no ServerException was thrown")
}

/**
 * A self-signed certificate for 127.0.0.1 made by the JDK's keytool: the server's TLS context and
 * a client context that trusts exactly that certificate.
 */
private class LoopbackCertificate {
    val server: SSLContext
    val client: SSLContext

    init {
        val dir = Files.createTempDirectory("dtconvert-tls").toFile()
        try {
            val store = File(dir, "server.p12")
            val password = "changeit".toCharArray()
            val keytool = File(System.getProperty("java.home"), "bin/keytool")
            val process = ProcessBuilder(
                keytool.path, "-genkeypair", "-alias", "server", "-keyalg", "EC", "-groupname", "secp256r1",
                "-dname", "CN=127.0.0.1", "-ext", "san=ip:127.0.0.1", "-validity", "2", "-storetype", "PKCS12",
                "-keystore", store.path, "-storepass", String(password), "-keypass", String(password),
            ).redirectErrorStream(true).start()
            val output = process.inputStream.bufferedReader().readText()
            expect(process.waitFor(60, TimeUnit.SECONDS) && process.exitValue() == 0) { "keytool failed: $output" }
            val keys = KeyStore.getInstance("PKCS12").apply { store.inputStream().use { load(it, password) } }
            val keyManagers = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm()).apply { init(keys, password) }.keyManagers
            server = SSLContext.getInstance("TLS").apply { init(keyManagers, null, null) }
            val trusted = KeyStore.getInstance(KeyStore.getDefaultType()).apply {
                load(null, null)
                setCertificateEntry("server", keys.getCertificate("server"))
            }
            val trustManagers = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm()).apply { init(trusted) }.trustManagers
            client = SSLContext.getInstance("TLS").apply { init(null, trustManagers, null) }
        } finally {
            dir.deleteRecursively()
        }
    }
}

val clientHardeningTests = listOf(
    test("client waits what Retry-After asks and retries a 503") {
        val seen = mutableListOf<String>()
        val waits = mutableListOf<Long>()
        val result = withScriptedServer(listOf(busy("2"), StubAnswer(200, DECODED)), seen) { url ->
            DecodeClient(url, sleep = { waits += it }).decode(ByteArray(4))
        }
        assertEquals(listOf(2_000L), waits, "waits (ms)")
        assertEquals(2, seen.size, "requests")
        assertEquals(3, result.predictions.single().getValue("digit")[0].index, "the answer after the retry")
    },
    test("client caps each wait and gives up after maxRetries with the 503's own sentence") {
        val seen = mutableListOf<String>()
        val waits = mutableListOf<Long>()
        val e = serverError { withScriptedServer(listOf(busy("3600")), seen) { url -> DecodeClient(url, sleep = { waits += it }).decode(ByteArray(4)) } }
        assertEquals(503, e.status, "status")
        assertEquals("the decode queue is full (64 images waiting); try again shortly", e.message, "message")
        assertEquals(3, e.retries, "retries")
        assertEquals(listOf(5_000L, 5_000L, 5_000L), waits, "each wait capped at maxWaitMs")
        assertEquals(4, seen.size, "one request and three retries")
        // Twin: a policy of two retries stops one request earlier.
        seen.clear()
        serverError { withScriptedServer(listOf(busy("1")), seen) { url -> DecodeClient(url, retry = RetryPolicy(maxRetries = 2), sleep = {}).decode(ByteArray(4)) } }
        assertEquals(3, seen.size, "one request and two retries")
    },
    test("a missing or unreadable Retry-After waits the default") {
        val seen = mutableListOf<String>()
        val waits = mutableListOf<Long>()
        withScriptedServer(listOf(busy(null), busy("soon"), busy("-1"), StubAnswer(200, DECODED)), seen) { url ->
            DecodeClient(url, sleep = { waits += it }).decode(ByteArray(4))
        }
        assertEquals(listOf(1_000L, 1_000L, 1_000L), waits, "default waits (ms)")
        assertEquals(0L, RetryPolicy().waitMs("0"), "Retry-After: 0")
        assertEquals(5_000L, RetryPolicy().waitMs("${Long.MAX_VALUE}"), "a huge Retry-After does not overflow")
    },
    test("client never retries a 4xx, and retries nothing under RetryPolicy.NONE") {
        val seen = mutableListOf<String>()
        val waits = mutableListOf<Long>()
        val e = serverError { withScriptedServer(listOf(StubAnswer(401, UNAUTHORIZED, mapOf("WWW-Authenticate" to "Bearer"))), seen) { url ->
            DecodeClient(url, sleep = { waits += it }).decode(ByteArray(4))
        } }
        assertEquals(401, e.status, "status")
        assertEquals("this server needs a bearer token (Authorization: Bearer ...)", e.message, "message")
        assertEquals(1, seen.size, "a 401 is asked once")
        seen.clear()
        serverError { withScriptedServer(listOf(busy("1"), StubAnswer(200, DECODED)), seen) { url ->
            DecodeClient(url, retry = RetryPolicy.NONE, sleep = { waits += it }).decode(ByteArray(4))
        } }
        assertEquals(1, seen.size, "no retry under RetryPolicy.NONE")
        assertEquals(emptyList<Long>(), waits, "no waits")
    },
    test("client sends the bearer token on every request, and none without one") {
        val seen = mutableListOf<String>()
        val authorizations = mutableListOf<String?>()
        val health = """{"status": "ok", "model_id": "0123456789abcdef"}"""
        withScriptedServer(listOf(StubAnswer(200, DECODED), StubAnswer(200, health)), seen, authorizations) { url ->
            val client = DecodeClient(url, token = " $TOKEN\n")
            expect(client.hasToken) { "the client has no token" }
            client.decode(ByteArray(4))
            client.health()
        }
        assertEquals(listOf<String?>("Bearer $TOKEN", "Bearer $TOKEN"), authorizations, "Authorization headers")
        authorizations.clear()
        withScriptedServer(listOf(StubAnswer(200, DECODED)), seen, authorizations) { url -> DecodeClient(url, token = "  ").decode(ByteArray(4)) }
        assertEquals(listOf<String?>(null), authorizations, "a blank token sends no header")
    },
    test("a token that cannot be a header value is refused without repeating it") {
        for (bad in listOf("two words", "line\nbreak", "tab\there", "caf\u00e9")) {
            try {
                DecodeClient("https://example.test", token = bad)
                fail("token \"$bad\" was accepted")
            } catch (e: IllegalArgumentException) {
                assertEquals("the server token must be printable ASCII without spaces", e.message, "message")
            }
        }
    },
    test("client talks HTTPS to a server whose certificate it trusts, and refuses one it does not") {
        val certificate = LoopbackCertificate()
        val seen = mutableListOf<String>()
        val authorizations = mutableListOf<String?>()
        val result = withScriptedServer(listOf(StubAnswer(200, DECODED)), seen, authorizations, tls = certificate.server) { url ->
            expect(url.startsWith("https://")) { "not an https URL: $url" }
            DecodeClient(url, token = TOKEN, sslSocketFactory = certificate.client.socketFactory).decode(ByteArray(4))
        }
        assertEquals("0123456789abcdef", result.modelId, "model id over HTTPS")
        assertEquals(listOf<String?>("Bearer $TOKEN"), authorizations, "token over HTTPS")
        // Twin: the platform's trust store does not know the self-signed certificate.
        assertThrows<SSLException>("") {
            withScriptedServer(listOf(StubAnswer(200, DECODED)), seen, tls = certificate.server) { url -> DecodeClient(url).decode(ByteArray(4)) }
        }
        assertEquals(1, seen.size, "the untrusted server never saw a request")
    },
)
