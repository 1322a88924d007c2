package dev.dtconvert.demo

import android.content.Context
import android.content.res.AssetManager
import dev.dtconvert.demo.core.Artifact
import dev.dtconvert.demo.core.Export
import dev.dtconvert.demo.core.ExportFiles
import java.io.File
import java.io.FileNotFoundException
import java.io.IOException

/**
 * The export that the `copyExport` Gradle task put into `assets/<BuildConfig.EXPORT_ASSET_DIR>/`.
 * Every path comes from the manifest, which core has already confined to the export (no `..`, not
 * absolute); assets hold no symlinks, and copyExport refused any that led out of the export.
 */
class AssetExportFiles(private val assets: AssetManager, private val folder: String = BuildConfig.EXPORT_ASSET_DIR) : ExportFiles {
    override fun read(relativePath: String, manifestKey: String): ByteArray =
        try {
            assets.open("$folder/$relativePath").use { it.readBytes() }
        } catch (e: FileNotFoundException) {
            throw FileNotFoundException("$manifestKey \"$relativePath\" is missing from assets/$folder: rebuild the app with -PdtExportDir=<your export directory>")
        }
}

/**
 * Runtimes open a model by file path, so a device artifact is copied out of the APK once into a
 * folder named after its sha256 (a rebuilt app with a new export never reuses an old file);
 * [Export.artifactBytes] checks it against the manifest's digest on the way.
 */
fun artifactFile(context: Context, export: Export, artifact: Artifact): File {
    val dir = File(context.noBackupFilesDir, "artifacts/${artifact.sha256}")
    val file = File(dir, File(artifact.path).name)
    if (file.isFile && file.length() == artifact.bytes) return file
    val bytes = export.artifactBytes(artifact)
    if (!dir.isDirectory && !dir.mkdirs()) throw IOException("cannot create $dir")
    val partial = File(dir, "${file.name}.partial")
    partial.writeBytes(bytes)
    if (!partial.renameTo(file)) throw IOException("cannot move $partial to $file")
    return file
}
