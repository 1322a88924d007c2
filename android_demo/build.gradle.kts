// Plugin versions live in gradle/libs.versions.toml. The Kotlin plugin on this classpath is
// also the Kotlin that AGP's built-in Kotlin support compiles :app with.
plugins {
    alias(libs.plugins.android.application) apply false
    alias(libs.plugins.kotlin.jvm) apply false
    alias(libs.plugins.kotlin.compose) apply false
}
