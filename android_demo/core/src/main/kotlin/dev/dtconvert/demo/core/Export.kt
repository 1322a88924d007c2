package dev.dtconvert.demo.core

import java.io.File
import java.io.FileNotFoundException
import java.io.IOException
import java.security.MessageDigest

/**
 * Where an export directory's files come from: the app's assets on a phone, a folder on a JVM.
 * Paths are relative to the export directory, as the manifest spells them.
 */
fun interface ExportFiles {
    /** The bytes of [relativePath]; throw [FileNotFoundException] when it is not there. */
    fun read(relativePath: String): ByteArray
}

/** An export directory on disk. */
class DirectoryExportFiles(private val root: File) : ExportFiles {
    override fun read(relativePath: String): ByteArray {
        val file = File(root, relativePath)
        if (!file.isFile) throw FileNotFoundException("$file: no such file in the export directory")
        return file.readBytes()
    }
}

/** One grey source image, row-major uint8. */
class GreyImage(val pixels: ByteArray, val height: Int, val width: Int) {
    /** Opaque ARGB pixels (`android.graphics.Bitmap`'s format), for showing the image. */
    fun toArgb(): IntArray = IntArray(pixels.size) { i ->
        val v = pixels[i].toInt() and 0xFF
        (0xFF shl 24) or (v shl 16) or (v shl 8) or v
    }
}

/**
 * An export as the app uses it: the manifest, plus the golden files it ships (the bundled
 * held-out digits and what the export-time decoder answered for them).
 */
class Export(val manifest: Manifest, private val files: ExportFiles) {
    private fun goldenFile(name: String): NpyArray? {
        val golden = manifest.golden ?: return null
        if (name !in golden.files) return null
        val path = "${golden.path}/$name"
        return NpyArray.parse(files.read(path), path)
    }

    /** The held-out source images `dtconvert export` bundled (digits exports only), else empty. */
    fun heldoutImages(): List<GreyImage> {
        val array = goldenFile(GoldenFiles.SOURCE_IMAGES) ?: return emptyList()
        require(array.shape.size == 3) { "${GoldenFiles.SOURCE_IMAGES}: expected (N, H, W), got ${array.shape}" }
        val (count, height, width) = array.shape
        val bytes = array.bytes()
        return List(count) { i -> GreyImage(bytes.copyOfRange(i * height * width, (i + 1) * height * width), height, width) }
    }

    /** Export-time top-1 label per task for each held-out image (the cloud decoder on the golden wire). */
    fun heldoutReference(): List<Map<String, String>> {
        val perTask = manifest.tasks.associate { task ->
            val logits = goldenFile(GoldenFiles.logits(task.name)) ?: return emptyList()
            val values = logits.floats()
            task.name to List(logits.shape[0]) { i ->
                task.labels[Ranking.argmax(values.copyOfRange(i * logits.itemSize, (i + 1) * logits.itemSize))]
            }
        }
        val count = perTask.values.minOf { it.size }
        return List(count) { i -> perTask.mapValues { it.value[i] } }
    }

    /**
     * The bytes of an artifact, checked against the manifest's size and sha256 (to copy it where
     * a runtime can open it by path); throws [IOException] when they differ.
     */
    fun artifactBytes(artifact: Artifact): ByteArray {
        val bytes = files.read(artifact.path)
        val digest = MessageDigest.getInstance("SHA-256").digest(bytes).joinToString("") { "%02x".format(it.toInt() and 0xFF) }
        if (bytes.size.toLong() != artifact.bytes || digest != artifact.sha256) {
            throw IOException("${artifact.path}: ${bytes.size} bytes with sha256 $digest, but the manifest lists ${artifact.bytes} bytes with ${artifact.sha256}")
        }
        return bytes
    }

    companion object {
        fun open(files: ExportFiles): Export {
            val text = String(files.read(Manifest.FILE_NAME), Charsets.UTF_8)
            return Export(Manifest.parse(text), files)
        }
    }
}
