import org.jetbrains.kotlin.gradle.dsl.JvmTarget

// Plain Kotlin/JVM: no android.* imports (tests/test_android.py checks), so the module also
// compiles and runs its tests with a bare kotlinc on a machine without the Android SDK.
plugins {
    alias(libs.plugins.kotlin.jvm)
}

java {
    sourceCompatibility = JavaVersion.VERSION_17
    targetCompatibility = JavaVersion.VERSION_17
}

kotlin {
    compilerOptions {
        jvmTarget.set(JvmTarget.JVM_17)
        allWarningsAsErrors.set(true)
    }
}

// The tests have their own runner (TestRunner.kt) instead of JUnit, so the same tests run from
// kotlinc where there is no Maven repository. The wire golden vectors are the repository's.
val coreTests by tasks.registering(JavaExec::class) {
    description = "Runs the core unit tests against tests/golden/wire of the dtconvert repository."
    group = "verification"
    classpath = sourceSets["test"].runtimeClasspath
    mainClass.set("dev.dtconvert.demo.core.TestRunnerKt")
    args("unit")
    environment("DT_GOLDEN_WIRE_DIR", rootProject.layout.projectDirectory.dir("../tests/golden/wire").asFile.absolutePath)
}

tasks.named("check") { dependsOn(coreTests) }
