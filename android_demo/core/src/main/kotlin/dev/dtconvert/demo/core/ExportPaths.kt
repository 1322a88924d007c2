package dev.dtconvert.demo.core

import java.io.File

// The object below is copied verbatim into app/build.gradle.kts, whose copyExport task runs in the
// build JVM where core's classes are not on the classpath; tests/test_android.py fails when the two
// copies differ, so the rule is tested here once and holds for both.

/**
 * An export directory is something users download and pass around, so every path its manifest
 * names must stay inside it: relative, no `..`, and no symlink that leads out.
 */
object ExportPaths {
    /**
     * Why the manifest path [path] cannot name a file inside its export, or null when it can.
     * `\` counts as a separator too, so a path written on Windows cannot climb either.
     */
    fun problem(path: String): String? = when {
        path.isEmpty() -> "it is empty"
        '\u0000' in path -> "it contains a NUL character"
        path.startsWith("/") || path.startsWith("\\") || WINDOWS_DRIVE.containsMatchIn(path) -> "it is absolute"
        path.split('/', '\\').any { it == ".." } -> "it contains \"..\""
        else -> null
    }

    /** The one sentence every reader gives for a path that leaves its export. */
    fun message(key: String, path: String, why: String): String = "$key \"$path\" leaves the export directory ($why)"

    /**
     * The file that [path], the value of the manifest field [key] (`artifacts[2].path`), names
     * inside [exportDir], every symlink resolved. Throws [IllegalArgumentException] with
     * [message] when the path is not confined to the export, also when a symlink leads out.
     */
    fun resolve(exportDir: File, path: String, key: String): File {
        problem(path)?.let { throw IllegalArgumentException(message(key, path, it)) }
        val root = exportDir.canonicalFile
        val file = File(root, path).canonicalFile
        if (file != root && !file.path.startsWith(root.path + File.separator)) {
            throw IllegalArgumentException(message(key, path, "it resolves to $file, outside $root"))
        }
        return file
    }

    private val WINDOWS_DRIVE = Regex("^[A-Za-z]:")
}
