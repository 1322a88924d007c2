import com.android.build.api.variant.BuildConfigField
import groovy.json.JsonSlurper
import java.net.URI
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
    const val GOLDEN_PATH = "golden.path"
}

/**
 * Copies what the app needs from a `dtconvert export` directory into generated assets: the
 * manifest, the Android device encoders it lists (ExecuTorch and LiteRT), and the golden folder
 * (the bundled held-out digits). The cloud decoder, Core ML package and Triton repository stay out.
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
        val manifest = JsonSlurper().parse(manifestFile) as Map<*, *>
        fun at(node: Any?, key: String): Any? = key.substringAfterLast("[].").split('.').fold(node) { n, part -> (n as? Map<*, *>)?.get(part) }
        val artifacts = (at(manifest, ManifestKeys.ARTIFACTS) as? List<*>).orEmpty()
        val encoders = artifacts.filter {
            at(it, ManifestKeys.ARTIFACT_PART) == "device" && at(it, ManifestKeys.ARTIFACT_KIND) == "file" &&
                at(it, ManifestKeys.ARTIFACT_TARGET) in listOf("executorch", "tflite")
        }.map { at(it, ManifestKeys.ARTIFACT_PATH) as String }
        if (encoders.isEmpty()) {
            throw GradleException("$manifestFile lists no executorch or tflite device encoder: export with --target executorch,tflite (or all)")
        }
        val golden = at(manifest, ManifestKeys.GOLDEN_PATH) as String?
        fileSystem.sync {
            from(export) {
                include(manifestFile.name)
                encoders.forEach { include(it) }
                if (golden != null) include("$golden/**")
            }
            into(outputDir.dir(assetFolder))
        }
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
