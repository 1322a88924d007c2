package dev.dtconvert.demo.core

import java.io.File
import java.io.IOException
import java.nio.file.Files
import java.security.MessageDigest

private fun sha256(bytes: ByteArray): String = hex(MessageDigest.getInstance("SHA-256").digest(bytes))

private const val ENCODER = "tiny_encoder_executorch_int8.pte"
private val ENCODER_BYTES = ByteArray(10) { it.toByte() }
private val IMAGES = npyBytes(NpyArray.UINT8, listOf(2, 4, 4), ByteArray(32) { it.toByte() })

/**
 * The sample manifest as an export directory on disk: the encoder and `golden/image_uint8.npy`
 * with their real sha256 (so only what a test breaks is wrong), plus a `secret.txt` beside the
 * export for the tests to reach for. [images] replaces the golden array's bytes, digest included.
 */
private class DiskExport(images: ByteArray = IMAGES) {
    val base: File = Files.createTempDirectory("dtconvert-confinement").toFile()
    val dir = File(base, "export")
    val secret = File(base, "secret.txt")

    init {
        File(dir, "golden").mkdirs()
        File(dir, ENCODER).writeBytes(ENCODER_BYTES)
        File(dir, "golden/${GoldenFiles.SOURCE_IMAGES}").writeBytes(images)
        secret.writeBytes(ENCODER_BYTES) // the encoder's bytes: only the path rule can stop it
        val manifest = SAMPLE_MANIFEST
            .replace("\"sha256\": \"${"b".repeat(64)}\"", "\"sha256\": \"${sha256(ENCODER_BYTES)}\"")
            .replace(
                " \"data\":",
                " \"golden\": {\"path\": \"golden\", \"count\": 2, \"files\": {\"${GoldenFiles.SOURCE_IMAGES}\": \"${sha256(images)}\"}},\n \"data\":",
            )
        File(dir, Manifest.FILE_NAME).writeText(manifest)
    }

    fun open(): Export = Export.open(DirectoryExportFiles(dir))

    fun encoder(): Artifact = open().manifest.deviceArtifact(ManifestValues.TARGET_EXECUTORCH)

    /** Replace [relative] inside the export by a symlink to [target]. */
    fun link(relative: String, target: File) {
        val link = File(dir, relative)
        if (link.isDirectory) link.deleteRecursively() else link.delete()
        Files.createSymbolicLink(link.toPath(), target.toPath())
    }

    fun <T> use(block: (DiskExport) -> T): T =
        try {
            block(this)
        } finally {
            base.deleteRecursively()
        }
}

/** The error's message, which must be one line (a user reads it in one place on the screen). */
private inline fun <reified T : Throwable> oneLine(fragment: String, block: () -> Unit) {
    try {
        block()
    } catch (e: Throwable) {
        if (e !is T) fail("expected ${T::class.simpleName}, got ${e::class.simpleName}: ${e.message}")
        val message = e.message ?: ""
        expect(fragment in message) { "expected a message containing \"$fragment\", got \"$message\"" }
        expect('\n' !in message) { "the message is more than one line: \"$message\"" }
        return
    }
    fail("expected ${T::class.simpleName} (\"$fragment\"), nothing was thrown")
}

val confinementTests = listOf(
    test("path rule: relative paths inside the export pass, everything else is named") {
        for (fine in listOf("a.pte", "golden/input.npy", "a..b/c.pte", "./a.pte", "dir/.hidden")) {
            assertEquals(null, ExportPaths.problem(fine), "problem with $fine")
        }
        val cases = mapOf(
            "" to "it is empty",
            "../secret.txt" to "it contains \"..\"",
            "golden/../../secret.txt" to "it contains \"..\"",
            "golden\\..\\..\\secret.txt" to "it contains \"..\"",
            "/etc/passwd" to "it is absolute",
            "\\\\server\\share" to "it is absolute",
            "C:/Windows/system.ini" to "it is absolute",
            "a\u0000.pte" to "it contains a NUL character",
        )
        for ((path, why) in cases) assertEquals(why, ExportPaths.problem(path), "problem with \"$path\"")
    },
    test("manifest refuses artifact and golden paths that leave the export, naming the field") {
        val withGolden = broken(" \"data\":", " \"golden\": {\"path\": \"golden\", \"count\": 2, \"files\": {\"input.npy\": \"${"d".repeat(64)}\"}},\n \"data\":")
        Manifest.parse(withGolden) // twin: the same manifest with confined paths parses
        val cases = mapOf(
            broken(ENCODER, "../secret.txt") to "artifacts[0].path \"../secret.txt\" leaves the export directory (it contains \"..\")",
            broken("\"tiny_decoder_torchscript_fp32.pt\"", "\"/etc/passwd\"") to
                "artifacts[1].path \"/etc/passwd\" leaves the export directory (it is absolute)",
            withGolden.replace("\"path\": \"golden\"", "\"path\": \"../golden\"") to "golden.path \"../golden\" leaves the export directory",
            withGolden.replace("\"input.npy\":", "\"../input.npy\":") to "golden.files.../input.npy \"../input.npy\" leaves the export directory",
            broken("\"sha256\": \"${"b".repeat(64)}\"", "\"sha256\": \"../../x\"") to "artifacts[0].sha256 must be 64 lowercase hex digits",
        )
        for ((text, fragment) in cases) oneLine<IllegalArgumentException>(fragment) { Manifest.parse(text) }
    },
    test("an export on disk reads its encoder and golden images (twin of the refusals below)") {
        DiskExport().use { export ->
            assertBytesEqual(ENCODER_BYTES, export.open().artifactBytes(export.encoder()), "encoder bytes")
            assertEquals(2, export.open().heldoutImages().size, "held-out images")
            // A symlink that stays inside the export is fine.
            File(export.dir, "real").mkdirs()
            File(export.dir, ENCODER).copyTo(File(export.dir, "real/encoder.bin"))
            export.link(ENCODER, File(export.dir, "real/encoder.bin"))
            assertBytesEqual(ENCODER_BYTES, export.open().artifactBytes(export.encoder()), "encoder through an inside symlink")
        }
    },
    test("an artifact that is a symlink leading out of the export is refused, nothing read") {
        DiskExport().use { export ->
            export.link(ENCODER, export.secret)
            oneLine<IllegalArgumentException>("artifacts[0].path \"$ENCODER\" leaves the export directory (it resolves to ${export.secret.canonicalPath}, outside") {
                export.open().artifactBytes(export.encoder())
            }
        }
    },
    test("a golden folder that is a symlink leading out of the export is refused") {
        DiskExport().use { export ->
            val outside = File(export.base, "elsewhere").apply { mkdirs() }
            File(export.dir, "golden/${GoldenFiles.SOURCE_IMAGES}").copyTo(File(outside, GoldenFiles.SOURCE_IMAGES))
            export.link("golden", outside)
            oneLine<IllegalArgumentException>("golden.files.${GoldenFiles.SOURCE_IMAGES} \"golden/${GoldenFiles.SOURCE_IMAGES}\" leaves the export directory") {
                export.open().heldoutImages()
            }
        }
    },
    test("a manifest that is a symlink leading out of the export is refused") {
        DiskExport().use { export ->
            val outside = File(export.base, "manifest.json")
            File(export.dir, Manifest.FILE_NAME).copyTo(outside)
            export.link(Manifest.FILE_NAME, outside)
            oneLine<IllegalArgumentException>("the manifest \"manifest.json\" leaves the export directory") { export.open() }
        }
    },
    test("a golden array whose sha256 matches but which is no .npy is one sentence naming the field") {
        DiskExport(images = "not an array".toByteArray()).use { export ->
            oneLine<NpyException>("golden.files.${GoldenFiles.SOURCE_IMAGES} \"golden/${GoldenFiles.SOURCE_IMAGES}\": not a .npy file (bad magic)") {
                export.open().heldoutImages()
            }
        }
        val wrongShape = npyBytes(NpyArray.UINT8, listOf(32), ByteArray(32))
        DiskExport(images = wrongShape).use { export ->
            oneLine<NpyException>("golden.files.${GoldenFiles.SOURCE_IMAGES}: expected (N, H, W) images, got shape [32]") { export.open().heldoutImages() }
        }
    },
    test("a golden array that differs from its sha256 is refused before it is parsed") {
        DiskExport().use { export ->
            File(export.dir, "golden/${GoldenFiles.SOURCE_IMAGES}").writeBytes(IMAGES.copyOf().also { it[it.size - 1] = 99 })
            oneLine<IOException>("golden.files.${GoldenFiles.SOURCE_IMAGES} \"golden/${GoldenFiles.SOURCE_IMAGES}\": ${IMAGES.size} bytes with sha256") {
                export.open().heldoutImages()
            }
        }
    },
)
