import com.android.build.api.variant.BuildConfigField
import groovy.json.JsonSlurper
import java.io.File
import java.net.URI
import java.security.MessageDigest
import javax.inject.Inject

// AGP 9 compiles Kotlin itself (built-in Kotlin): no org.jetbrains.kotlin.android plugin here.
plugins {
    alias(libs.plugins.android.application)
    alias(libs.plugins.kotlin.compose)
}

/** Where the export lands inside the app's assets; the app reads it back from BuildConfig. */
val exportAssetFolder = "export"

/** `-PdtServerUrl`, checked once: the default server the app talks to, and the cleartext host. */
val serverUrl: Provider<String> = providers.gradleProperty("dtServerUrl").map { url ->
    val uri = try {
        URI(url)
    } catch (e: Exception) {
        throw GradleException("dtServerUrl=$url is not a URL (${e.message})")
    }
    if (uri.scheme != "http" && uri.scheme != "https") throw GradleException("dtServerUrl=$url must start with http:// or https://")
    if (uri.host.isNullOrEmpty() || !Regex("^[A-Za-z0-9.\\-\\[\\]:]+$").matches(uri.host)) throw GradleException("dtServerUrl=$url has no usable host")
    url.trimEnd('/')
}

android {
    namespace = "dev.dtconvert.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "dev.dtconvert.demo"
        minSdk = 24
        targetSdk = 35
        versionCode = 1
        versionName = "1.0"
        buildConfigField("String", "EXPORT_ASSET_DIR", "\"$exportAssetFolder\"")
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    buildFeatures {
        compose = true
        buildConfig = true
    }

    // Runtimes map their model files; keep them (and the golden .npy arrays) stored, not deflated.
    androidResources {
        noCompress += listOf("pte", "tflite", "npy")
    }

    packaging {
        jniLibs {
            // ExecuTorch (through fbjni) and LiteRT may both bring the shared C++ runtime.
            pickFirsts += "**/libc++_shared.so"
        }
    }
}

/** `manifest.json` keys this script reads; tests/test_android.py checks them against the schema like core's ManifestKeys. */
object ManifestKeys {
    const val ARTIFACTS = "artifacts"
    const val ARTIFACT_PATH = "artifacts[].path"
    const val ARTIFACT_KIND = "artifacts[].kind"
    const val ARTIFACT_PART = "artifacts[].part"
    const val ARTIFACT_TARGET = "artifacts[].target"
    const val ARTIFACT_SHA256 = "artifacts[].sha256"
    const val GOLDEN_PATH = "golden.path"
    const val GOLDEN_FILES = "golden.files"
}

// The export confinement rule: a verbatim copy of core's ExportPaths.kt (this script runs in the
// build JVM, where core's classes are not on the classpath). tests/test_android.py fails when the
// two copies differ, so core's unit tests of the rule hold for this copy too.
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

/**
 * Copies what the app needs from a `dtconvert export` directory into generated assets: the
 * manifest, the Android device encoders it lists (ExecuTorch and LiteRT), and the golden files it
 * lists (the bundled held-out digits). The cloud decoder, Core ML package and Triton repository
 * stay out.
 *
 * The export is untrusted input: every path the manifest names must stay inside it
 * ([ExportPaths]: no `..`, nothing absolute, no symlink leading out) and every copied file must
 * match its sha256. Everything is checked before anything is copied, so a bad export fails the
 * build with one sentence naming the manifest field and leaves the previous assets as they were.
 */
abstract class CopyExportTask : DefaultTask() {
    // InputFiles rather than InputDirectory: a missing export gets the message below, not Gradle's.
    @get:InputFiles
    @get:PathSensitive(PathSensitivity.RELATIVE)
    abstract val exportDir: DirectoryProperty

    @get:Input
    abstract val assetFolder: Property<String>

    @get:OutputDirectory
    abstract val outputDir: DirectoryProperty

    @get:Inject
    abstract val fileSystem: FileSystemOperations

    @TaskAction
    fun copy() {
        val export = exportDir.get().asFile
        val manifestFile = export.resolve("manifest.json")
        if (!manifestFile.isFile) {
            throw GradleException(
                "dtExportDir=$export has no manifest.json: run `dtconvert export CKPT --target all --out DIR` and pass -PdtExportDir=DIR",
            )
        }
        val files = try {
            appFiles(export)
        } catch (e: IllegalArgumentException) {
            throw GradleException("dtExportDir=$export: ${e.message}")
        }
        // Explicit files, not include patterns: a manifest path is never read as a glob.
        fileSystem.sync {
            into(outputDir.dir(assetFolder))
            for ((relative, source) in files) {
                from(source) {
                    val folder = relative.substringBeforeLast('/', "")
                    if (folder.isNotEmpty()) into(folder)
                    rename { relative.substringAfterLast('/') }
                }
            }
        }
    }

    /**
     * (asset path, source file) for everything the app needs, each confined to [export] and
     * checked against its sha256; throws IllegalArgumentException with one sentence otherwise.
     */
    private fun appFiles(export: File): List<Pair<String, File>> {
        val manifestFile = ExportPaths.resolve(export, "manifest.json", "the manifest")
        val manifest = try {
            JsonSlurper().parse(manifestFile) as Map<*, *>
        } catch (e: Exception) {
            throw IllegalArgumentException("manifest.json is not a JSON object (${e.message?.lineSequence()?.first()})")
        }
        fun at(node: Any?, key: String): Any? = key.substringAfterLast("[].").split('.').fold(node) { n, part -> (n as? Map<*, *>)?.get(part) }
        fun string(node: Any?, key: String, where: String): String =
            at(node, key) as? String ?: throw IllegalArgumentException("manifest.json: $where must be a string")
        // (manifest field, path, sha256) of each file to copy.
        val wanted = mutableListOf<Triple<String, String, String>>()
        (at(manifest, ManifestKeys.ARTIFACTS) as? List<*>).orEmpty().forEachIndexed { i, artifact ->
            val key = ManifestKeys.ARTIFACT_PATH.replace("[]", "[$i]")
            val path = string(artifact, ManifestKeys.ARTIFACT_PATH, key)
            // Every artifact path, copied or not: the app's reader refuses the whole manifest otherwise.
            ExportPaths.problem(path)?.let { throw IllegalArgumentException(ExportPaths.message(key, path, it)) }
            val encoder = at(artifact, ManifestKeys.ARTIFACT_PART) == "device" && at(artifact, ManifestKeys.ARTIFACT_KIND) == "file" &&
                at(artifact, ManifestKeys.ARTIFACT_TARGET) in listOf("executorch", "tflite")
            if (encoder) wanted += Triple(key, path, string(artifact, ManifestKeys.ARTIFACT_SHA256, ManifestKeys.ARTIFACT_SHA256.replace("[]", "[$i]")))
        }
        if (wanted.isEmpty()) {
            throw IllegalArgumentException("manifest.json lists no executorch or tflite device encoder: export with --target executorch,tflite (or all)")
        }
        val golden = at(manifest, ManifestKeys.GOLDEN_PATH) as String?
        if (golden != null) {
            ExportPaths.problem(golden)?.let { throw IllegalArgumentException(ExportPaths.message(ManifestKeys.GOLDEN_PATH, golden, it)) }
            for ((name, digest) in (at(manifest, ManifestKeys.GOLDEN_FILES) as? Map<*, *>).orEmpty()) {
                val key = "${ManifestKeys.GOLDEN_FILES}.$name"
                ExportPaths.problem("$name")?.let { throw IllegalArgumentException(ExportPaths.message(key, "$name", it)) }
                wanted += Triple(key, "$golden/$name", digest as? String ?: throw IllegalArgumentException("manifest.json: $key must be a string"))
            }
        }
        val files = wanted.map { (key, path, sha256) ->
            val file = ExportPaths.resolve(export, path, key)
            if (!file.isFile) throw IllegalArgumentException("$key \"$path\" is not a file in the export")
            val digest = MessageDigest.getInstance("SHA-256").digest(file.readBytes()).joinToString("") { "%02x".format(it.toInt() and 0xFF) }
            if (digest != sha256) throw IllegalArgumentException("$key \"$path\" has sha256 $digest, but the manifest lists $sha256 (modified or corrupt; re-export)")
            path to file
        }
        return listOf("manifest.json" to manifestFile) + files
    }
}

/**
 * Writes res/xml/network_security_config.xml: HTTPS everywhere, plus cleartext HTTP to the
 * dtServerUrl host in debug builds only (Android blocks cleartext from API 28 otherwise).
 */
abstract class NetworkSecurityConfigTask : DefaultTask() {
    @get:Input
    @get:Optional
    abstract val cleartextHost: Property<String>

    @get:OutputDirectory
    abstract val outputDir: DirectoryProperty

    @TaskAction
    fun write() {
        val host = cleartextHost.orNull
        val exception = if (host == null) "" else """
            |    <domain-config cleartextTrafficPermitted="true">
            |        <domain includeSubdomains="false">$host</domain>
            |    </domain-config>
            |""".trimMargin()
        val file = outputDir.file("xml/network_security_config.xml").get().asFile
        file.parentFile.mkdirs()
        file.writeText(
            """
            |<?xml version="1.0" encoding="utf-8"?>
            |<!-- Generated by :app:${name} from dtServerUrl; do not edit. -->
            |<network-security-config>
            |    <base-config cleartextTrafficPermitted="false" />
            |$exception</network-security-config>
            |""".trimMargin(),
        )
    }
}

val copyExport = tasks.register<CopyExportTask>("copyExport") {
    description = "Copies the dtconvert export named by -PdtExportDir into the app's assets."
    exportDir.set(rootProject.layout.projectDirectory.dir(providers.gradleProperty("dtExportDir")))
    assetFolder.set(exportAssetFolder)
}

androidComponents {
    onVariants { variant ->
        // Generated sources: the merge tasks depend on these, so they run before assets and resources are merged.
        variant.sources.assets?.addGeneratedSourceDirectory(copyExport, CopyExportTask::outputDir)
        val securityConfig = tasks.register<NetworkSecurityConfigTask>("generate${variant.name.replaceFirstChar { it.uppercase() }}NetworkSecurityConfig") {
            if (variant.buildType == "debug") {
                cleartextHost.set(serverUrl.map { url -> URI(url).takeIf { it.scheme == "http" }?.host ?: "" }.filter { it.isNotEmpty() })
            }
        }
        variant.sources.res?.addGeneratedSourceDirectory(securityConfig, NetworkSecurityConfigTask::outputDir)
        variant.buildConfigFields?.put("DT_SERVER_URL", serverUrl.map { BuildConfigField("String", "\"$it\"", "-PdtServerUrl") })
    }
}

dependencies {
    implementation(project(":core"))

    implementation(libs.androidx.core.ktx)
    implementation(libs.androidx.activity.compose)
    implementation(libs.androidx.lifecycle.viewmodel.compose)
    implementation(libs.androidx.lifecycle.runtime.compose)
    implementation(libs.kotlinx.coroutines.android)
    implementation(platform(libs.compose.bom))
    implementation(libs.compose.ui)
    implementation(libs.compose.ui.graphics)
    implementation(libs.compose.ui.tooling.preview)
    implementation(libs.compose.material3)
    debugImplementation(libs.compose.ui.tooling)

    // The two device runtimes the user picks between in the app.
    implementation(libs.executorch.android)
    implementation(libs.litert)
}
