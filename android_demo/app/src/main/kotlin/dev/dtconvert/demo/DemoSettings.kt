package dev.dtconvert.demo

import android.content.Context

/**
 * What the user changes on the screen, kept across launches. The server URL starts as the
 * build's `-PdtServerUrl` (BuildConfig.DT_SERVER_URL); the runtime starts as the manifest's first.
 * The server token is typed by the user and kept encrypted ([ServerTokenStore]), never in the
 * build and never in these plain preferences.
 */
class DemoSettings(context: Context) {
    private val prefs = context.getSharedPreferences("dtconvert_demo", Context.MODE_PRIVATE)
    private val tokens = ServerTokenStore(context)

    var serverUrl: String
        get() = prefs.getString(KEY_SERVER_URL, null) ?: BuildConfig.DT_SERVER_URL
        set(value) = prefs.edit().putString(KEY_SERVER_URL, value.trim()).apply()

    var runtime: String?
        get() = prefs.getString(KEY_RUNTIME, null)
        set(value) = prefs.edit().putString(KEY_RUNTIME, value).apply()

    /** The bearer token for a server started with `--token-file`; null when none is set. */
    var serverToken: String?
        get() = tokens.read()
        set(value) = tokens.write(value)

    /** Ranked classes asked per task; null lets the server use its default. */
    var topK: Int?
        get() = prefs.getInt(KEY_TOP_K, 0).takeIf { it > 0 }
        set(value) = prefs.edit().putInt(KEY_TOP_K, value ?: 0).apply()

    private companion object {
        const val KEY_SERVER_URL = "server_url"
        const val KEY_RUNTIME = "runtime"
        const val KEY_TOP_K = "top_k"
    }
}
