package dev.dtconvert.demo

import android.app.Application
import android.graphics.Bitmap
import android.net.Uri
import android.security.NetworkSecurityPolicy
import androidx.lifecycle.AndroidViewModel
import androidx.lifecycle.viewModelScope
import dev.dtconvert.demo.core.DecodeClient
import dev.dtconvert.demo.core.Export
import dev.dtconvert.demo.core.GreyImage
import dev.dtconvert.demo.core.Manifest
import dev.dtconvert.demo.core.Prediction
import dev.dtconvert.demo.core.Preprocessor
import dev.dtconvert.demo.core.ServerException
import dev.dtconvert.demo.core.ServerTiming
import dev.dtconvert.demo.core.Stopwatch
import dev.dtconvert.demo.core.WireEncoder
import dev.dtconvert.demo.core.WireFormat
import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.flow.update
import kotlinx.coroutines.launch
import kotlinx.coroutines.sync.Mutex
import kotlinx.coroutines.sync.withLock
import kotlinx.coroutines.withContext
import java.io.IOException
import javax.net.ssl.SSLException

/** An image the user can run: one of the held-out digits the export bundles, or a photo. */
sealed interface InputImage {
    val preview: Bitmap

    /** [position] in the bundle; [sample] its index in the data set; [reference] the export-time answer per task. */
    class Heldout(val position: Int, val sample: Int?, val image: GreyImage, val reference: Map<String, String>, override val preview: Bitmap) : InputImage

    class Photo(val argb: IntArray, val width: Int, val height: Int, override val preview: Bitmap) : InputImage
}

/** One run: device → wire → cloud, with what each step cost. */
data class RunResult(
    val runtime: String,
    val preprocessMs: Double,
    val deviceMs: Double,
    val wireBytes: Int,
    val messageBytes: Int,
    val roundTripMs: Double,
    val server: ServerTiming?,
    val predictions: Map<String, List<Prediction>>,
    val reference: Map<String, String>?,
)

data class DemoState(
    val manifest: Manifest? = null,
    val loadError: String? = null,
    val heldout: List<InputImage.Heldout> = emptyList(),
    val selected: InputImage? = null,
    val runtimes: List<String> = emptyList(),
    val runtime: String? = null,
    val serverUrl: String = "",
    /** Whether a server token is saved; the token itself never enters the UI state. */
    val serverTokenSet: Boolean = false,
    val topK: Int? = null,
    val busy: Boolean = false,
    val result: RunResult? = null,
    val error: String? = null,
)

class DemoViewModel(application: Application) : AndroidViewModel(application) {
    private val settings = DemoSettings(application)
    private val _state = MutableStateFlow(DemoState(serverUrl = settings.serverUrl, topK = settings.topK))
    val state: StateFlow<DemoState> = _state.asStateFlow()

    private var export: Export? = null
    private val encoderLock = Mutex()
    // The token field saves on every keystroke; a fair lock keeps the writes in typing order.
    private val tokenLock = Mutex()
    private var encoder: DeviceEncoder? = null
    private var encoderTarget: String? = null

    init {
        viewModelScope.launch { load() }
        viewModelScope.launch {
            // The Keystore can be slow on first use: read the token off the main thread.
            val saved = withContext(Dispatchers.IO) { settings.serverToken != null }
            _state.update { it.copy(serverTokenSet = saved) }
        }
    }

    private suspend fun load() {
        try {
            val loaded = withContext(Dispatchers.IO) { Export.open(AssetExportFiles(getApplication<Application>().assets)) }
            val heldout = withContext(Dispatchers.IO) {
                val reference = loaded.heldoutReference()
                loaded.heldoutImages().mapIndexed { i, image ->
                    InputImage.Heldout(i, loaded.manifest.heldout.getOrNull(i), image, reference.getOrElse(i) { emptyMap() }, image.toBitmap())
                }
            }
            export = loaded
            val manifest = loaded.manifest
            val runtimes = manifest.androidTargets
            _state.update {
                it.copy(
                    manifest = manifest,
                    heldout = heldout,
                    selected = heldout.firstOrNull(),
                    runtimes = runtimes,
                    runtime = settings.runtime?.takeIf { saved -> saved in runtimes } ?: runtimes.firstOrNull(),
                    loadError = if (runtimes.isEmpty()) "the bundled export has no ExecuTorch or LiteRT device encoder" else null,
                )
            }
        } catch (e: CancellationException) {
            throw e
        } catch (e: Exception) {
            _state.update { it.copy(loadError = e.message ?: e.toString()) }
        }
    }

    fun select(image: InputImage) = _state.update { it.copy(selected = image, result = null, error = null) }

    fun selectBitmap(bitmap: Bitmap) = select(bitmap.toPhoto())

    fun selectPhoto(uri: Uri) {
        viewModelScope.launch {
            try {
                val bitmap = withContext(Dispatchers.IO) { decodeImage(getApplication(), uri) }
                select(bitmap.toPhoto())
            } catch (e: CancellationException) {
                throw e
            } catch (e: Exception) {
                _state.update { it.copy(error = e.message ?: e.toString()) }
            }
        }
    }

    fun setRuntime(target: String) {
        settings.runtime = target
        _state.update { it.copy(runtime = target, result = null) }
    }

    fun setServerUrl(url: String) {
        settings.serverUrl = url
        _state.update { it.copy(serverUrl = url) }
    }

    /** Save the server token (blank removes it); only whether one is set reaches the UI state. */
    fun setServerToken(token: String) {
        viewModelScope.launch {
            try {
                tokenLock.withLock { withContext(Dispatchers.IO) { settings.serverToken = token } }
                _state.update { it.copy(serverTokenSet = token.isNotBlank()) }
            } catch (e: CancellationException) {
                throw e
            } catch (e: Exception) {
                _state.update { it.copy(error = "cannot save the server token: ${e.javaClass.simpleName}") }
            }
        }
    }

    fun setTopK(k: Int?) {
        settings.topK = k
        _state.update { it.copy(topK = k) }
    }

    fun showError(message: String) = _state.update { it.copy(error = message) }

    /** Preprocess → device encoder → quantize → wire message → POST → predictions. */
    fun encodeAndSend() {
        val current = _state.value
        val loaded = export ?: return
        val image = current.selected ?: return
        val target = current.runtime ?: return
        if (current.busy) return
        _state.update { it.copy(busy = true, error = null) }
        viewModelScope.launch {
            // Only an IOException while talking to the server means it cannot be reached.
            var sending = false
            try {
                val token = withContext(Dispatchers.IO) { settings.serverToken }
                val client = DecodeClient(current.serverUrl, token = token)
                if (client.isCleartext && !NetworkSecurityPolicy.getInstance().isCleartextTrafficPermitted(client.host)) {
                    throw IllegalStateException(
                        "this build allows plain HTTP only to the -PdtServerUrl host; rebuild with -PdtServerUrl=${client.baseUrl} or serve over HTTPS",
                    )
                }
                val manifest = loaded.manifest
                val preprocessor = Preprocessor(manifest.deviceInput.preprocessing)
                val preprocessClock = Stopwatch()
                val input = withContext(Dispatchers.Default) {
                    when (image) {
                        is InputImage.Heldout -> preprocessor.fromGray(image.image.pixels, image.image.height, image.image.width)
                        is InputImage.Photo -> preprocessor.fromArgb(image.argb, image.height, image.width)
                    }
                }
                val preprocessMs = preprocessClock.elapsedMs
                val (wireTensor, deviceMs) = withContext(Dispatchers.Default) {
                    encoderLock.withLock {
                        val device = encoderFor(loaded, target, preprocessor.inputSize)
                        val clock = Stopwatch()
                        val output = device.encode(input)
                        output to clock.elapsedMs
                    }
                }
                val wireEncoder = WireEncoder(manifest)
                val message = WireFormat.encode(wireEncoder.messageOf(listOf(wireEncoder.quantize(wireTensor))))
                sending = true
                val answer = withContext(Dispatchers.IO) { client.decode(message, current.topK) }
                val result = RunResult(
                    runtime = target,
                    preprocessMs = preprocessMs,
                    deviceMs = deviceMs,
                    wireBytes = manifest.wire.bytesPerImage,
                    messageBytes = message.size,
                    roundTripMs = answer.roundTripMs,
                    server = answer.timing,
                    predictions = answer.predictions.single(),
                    reference = (image as? InputImage.Heldout)?.reference?.takeIf { it.isNotEmpty() },
                )
                _state.update { it.copy(busy = false, result = result) }
            } catch (e: CancellationException) {
                throw e
            } catch (e: Exception) {
                _state.update { it.copy(busy = false, error = describe(e, current.serverUrl, sending)) }
            }
        }
    }

    /** The encoder for [target], opened once and warmed up so the shown latency is steady-state. */
    private fun encoderFor(loaded: Export, target: String, inputSize: Int): DeviceEncoder {
        encoder?.takeIf { encoderTarget == target }?.let { return it }
        encoder?.close()
        encoder = null
        val artifact = loaded.manifest.deviceArtifact(target)
        val opened = openWarmEncoder(target, artifactFile(getApplication(), loaded, artifact), artifact, inputSize)
        encoder = opened
        encoderTarget = target
        return opened
    }

    private fun describe(e: Exception, url: String, sending: Boolean): String = when {
        e is ServerException && e.status == HTTP_UNAUTHORIZED ->
            "the server answered 401: ${e.message} (enter the token it was started with under Server token)"
        e is ServerException && e.retries > 0 -> "the server answered ${e.status} after ${e.retries} retries: ${e.message}"
        e is ServerException -> "the server answered ${e.status}: ${e.message}"
        e is SSLException && sending -> "cannot reach $url securely: ${e.message ?: e.javaClass.simpleName}"
        e is IOException && sending -> "cannot reach $url: ${e.message ?: e.javaClass.simpleName}"
        else -> e.message ?: e.toString()
    }

    private companion object {
        const val HTTP_UNAUTHORIZED = 401
    }

    override fun onCleared() {
        encoder?.close()
        encoder = null
    }
}
