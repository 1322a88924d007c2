package dev.dtconvert.demo.core

import java.io.File
import java.io.FileNotFoundException
import java.io.IOException
import java.security.MessageDigest

/**
 * Where an export directory's files come from: the app's assets on a phone, a folder on a JVM.
 * Paths are relative to the export directory, as the manifest spells them; [Manifest.parse] has
 * already refused any that is absolute or climbs with `..`.
 */
fun interface ExportFiles {
    /**
     * The bytes of [relativePath], the value of the manifest field [manifestKey] (named in errors);
     * throw [FileNotFoundException] when it is not there, [IllegalArgumentException] when it leads
     * out of the export.
     */
    fun read(relativePath: String, manifestKey: String): ByteArray
}

/** An export directory on disk: a symlink that leads out of it is refused ([ExportPaths.resolve]). */
class DirectoryExportFiles(private val root: File) : ExportFiles {
    override fun read(relativePath: String, manifestKey: String): ByteArray {
        val file = ExportPaths.resolve(root, relativePath, manifestKey)
        if (!file.isFile) throw FileNotFoundException("$manifestKey \"$relativePath\" is not a file in the export directory $root")
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
    /**
     * A golden array, checked against its sha256 in `golden.files`; a file that matches but is no
     * readable `.npy` is one sentence naming the manifest field ([NpyException]).
     */
    private fun goldenFile(name: String): NpyArray? {
        val golden = manifest.golden ?: return null
        val digest = golden.files[name] ?: return null
        val path = "${golden.path}/$name"
        val key = golden.key(name)
        val bytes = files.read(path, key)
        checkDigest(bytes, key, path, expectedBytes = null, expectedSha256 = digest)
        return NpyArray.parse(bytes, "$key \"$path\"")
    }

    /** The held-out source images `dtconvert export` bundled (digits exports only), else empty. */
    fun heldoutImages(): List<GreyImage> {
        val array = goldenFile(GoldenFiles.SOURCE_IMAGES) ?: return emptyList()
        if (array.shape.size != 3) {
            throw NpyException("${manifest.golden?.key(GoldenFiles.SOURCE_IMAGES)}: expected (N, H, W) images, got shape ${array.shape}")
        }
        val (count, height, width) = array.shape
        val bytes = array.bytes()
        return List(count) { i -> GreyImage(bytes.copyOfRange(i * height * width, (i + 1) * height * width), height, width) }
    }

    /** Export-time top-1 label per task for each held-out image (the cloud decoder on the golden wire). */
    fun heldoutReference(): List<Map<String, String>> {
        val perTask = manifest.tasks.associate { task ->
            val logits = goldenFile(GoldenFiles.logits(task.name)) ?: return emptyList()
            if (logits.shape.size != 2 || logits.shape[1] != task.labels.size) {
                // argmax below indexes the labels: a wrong width would be an index error, not a sentence.
                throw NpyException(
                    "${manifest.golden?.key(GoldenFiles.logits(task.name))}: expected (N, ${task.labels.size}) logits for task ${task.name}, got shape ${logits.shape}",
                )
            }
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
        val bytes = files.read(artifact.path, artifact.pathKey)
        checkDigest(bytes, artifact.pathKey, artifact.path, artifact.bytes, artifact.sha256)
        return bytes
    }

    private fun checkDigest(bytes: ByteArray, key: String, path: String, expectedBytes: Long?, expectedSha256: String) {
        val digest = MessageDigest.getInstance("SHA-256").digest(bytes).joinToString("") { "%02x".format(it.toInt() and 0xFF) }
        if ((expectedBytes != null && bytes.size.toLong() != expectedBytes) || digest != expectedSha256) {
            val listed = if (expectedBytes != null) "$expectedBytes bytes with $expectedSha256" else "sha256 $expectedSha256"
            throw IOException("$key \"$path\": ${bytes.size} bytes with sha256 $digest, but the manifest lists $listed (modified or corrupt; re-export)")
        }
    }

    companion object {
        /** What [ExportFiles.read] calls the manifest in errors (it is no field of itself). */
        const val MANIFEST_KEY = "the manifest"

        fun open(files: ExportFiles): Export {
            val text = String(files.read(Manifest.FILE_NAME, MANIFEST_KEY), Charsets.UTF_8)
            return Export(Manifest.parse(text), files)
        }
    }
}
