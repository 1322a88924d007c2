package dev.dtconvert.demo.core

import java.io.File
import kotlin.system.exitProcess

/**
 * The core module's test runner: no JUnit or kotlin-test jars are needed, so the same tests run
 * from `kotlinc` on a machine without Gradle (`tests/test_android.py`) and from `./gradlew
 * :core:check` in Android Studio.
 *
 *     java -cp core-tests.jar dev.dtconvert.demo.core.TestRunnerKt unit [export] [roundtrip]
 *
 * Suites: `unit` (needs DT_GOLDEN_WIRE_DIR, the repository's tests/golden/wire), `export`
 * (needs DT_EXPORT_DIR, an int8 `dtconvert export` directory) and `roundtrip` (DT_EXPORT_DIR
 * and DT_SERVER_URL, a running `dtconvert serve` of that export). Prints one line per test,
 * then `N passed, N failed`; exits 1 when any test failed.
 */
class TestCase(val name: String, val body: () -> Unit)

fun test(name: String, body: () -> Unit) = TestCase(name, body)

val SUITES: Map<String, List<TestCase>> = mapOf(
    "unit" to jsonTests + wireFormatTests + quantizeTests + rankingTests + npyTests + preprocessTests + manifestTests + clientTests +
        confinementTests + clientHardeningTests,
    "export" to exportTests,
    "roundtrip" to roundTripTests,
)

fun main(args: Array<String>) {
    val names = args.toList().ifEmpty { listOf("unit") }
    val unknown = names.filter { it !in SUITES }
    if (unknown.isNotEmpty()) {
        System.err.println("unknown suite(s) ${unknown.joinToString()}; choose from ${SUITES.keys.joinToString()}")
        exitProcess(2)
    }
    var passed = 0
    var failed = 0
    for (suite in names) {
        for (case in SUITES.getValue(suite)) {
            try {
                case.body()
                passed++
                println("ok   $suite/${case.name}")
            } catch (e: Throwable) {
                failed++
                println("FAIL $suite/${case.name}: ${e::class.simpleName}: ${e.message}")
                e.stackTrace.firstOrNull { it.className.startsWith("dev.dtconvert") }?.let { println("     at $it") }
            }
        }
    }
    println("$passed passed, $failed failed")
    exitProcess(if (failed == 0) 0 else 1)
}

// ---- assertions: each failure message says what was expected and what came -------------------

class AssertionFailed(message: String) : AssertionError(message)

fun fail(message: String): Nothing = throw AssertionFailed(message)

fun expect(condition: Boolean, message: () -> String) {
    if (!condition) fail(message())
}

fun <T> assertEquals(expected: T, actual: T, what: String) {
    if (expected != actual) fail("$what: expected $expected, got $actual")
}

fun assertBytesEqual(expected: ByteArray, actual: ByteArray, what: String) {
    if (expected.size != actual.size) fail("$what: expected ${expected.size} bytes, got ${actual.size}")
    val at = expected.indices.firstOrNull { expected[it] != actual[it] } ?: return
    fail("$what: first difference at byte $at: expected ${expected[at]}, got ${actual[at]}")
}

fun assertClose(expected: FloatArray, actual: FloatArray, tolerance: Float, what: String) {
    if (expected.size != actual.size) fail("$what: expected ${expected.size} values, got ${actual.size}")
    var worst = 0
    for (i in expected.indices) if (Math.abs(expected[i] - actual[i]) > Math.abs(expected[worst] - actual[worst])) worst = i
    val error = Math.abs(expected[worst] - actual[worst])
    if (!(error <= tolerance)) fail("$what: max abs error $error at $worst (expected ${expected[worst]}, got ${actual[worst]}) > $tolerance")
}

/** Run [block], which must throw a [T] whose message contains [fragment]. */
inline fun <reified T : Throwable> assertThrows(fragment: String, block: () -> Unit) {
    try {
        block()
    } catch (e: Throwable) {
        if (e !is T) fail("expected ${T::class.simpleName}, got ${e::class.simpleName}: ${e.message}")
        if (fragment !in (e.message ?: "")) fail("expected a message containing \"$fragment\", got \"${e.message}\"")
        return
    }
    fail("expected ${T::class.simpleName} (\"$fragment\"), nothing was thrown")
}

fun env(name: String, what: String): String =
    System.getenv(name)?.takeIf { it.isNotBlank() } ?: fail("environment variable $name is not set: it must name $what")

fun goldenWireDir(): File = File(env("DT_GOLDEN_WIRE_DIR", "the repository's tests/golden/wire folder"))

fun exportDir(): File = File(env("DT_EXPORT_DIR", "an int8 dtconvert export directory"))

fun hex(bytes: ByteArray): String = bytes.joinToString("") { "%02x".format(it.toInt() and 0xFF) }
