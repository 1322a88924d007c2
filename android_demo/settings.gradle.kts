// The dtconvert Android demo: `:core` is plain Kotlin/JVM (manifest, preprocessing, wire format,
// HTTP client), `:app` is the Compose app that runs the device encoder and shows the answers.
pluginManagement {
    repositories {
        google {
            content {
                includeGroupByRegex("com\\.android.*")
                includeGroupByRegex("com\\.google.*")
                includeGroupByRegex("androidx.*")
            }
        }
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google() // androidx, LiteRT (com.google.ai.edge.litert)
        mavenCentral() // ExecuTorch (org.pytorch:executorch-android), kotlinx
    }
}

rootProject.name = "dtconvert-android-demo"
include(":app", ":core")
