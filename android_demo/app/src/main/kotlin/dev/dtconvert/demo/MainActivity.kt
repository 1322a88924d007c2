package dev.dtconvert.demo

import android.content.ActivityNotFoundException
import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.setContent
import androidx.activity.enableEdgeToEdge
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import androidx.activity.viewModels
import androidx.compose.material3.MaterialTheme
import androidx.compose.runtime.getValue
import androidx.lifecycle.compose.collectAsStateWithLifecycle

/** The one screen: pick or capture an image (or a bundled held-out digit), run it, see the answers. */
class MainActivity : ComponentActivity() {
    private val viewModel: DemoViewModel by viewModels()

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        enableEdgeToEdge()
        val pickImage = registerForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri ->
            if (uri != null) viewModel.selectPhoto(uri)
        }
        val capture = registerForActivityResult(ActivityResultContracts.TakePicturePreview()) { bitmap ->
            if (bitmap != null) viewModel.selectBitmap(bitmap)
        }
        setContent {
            MaterialTheme {
                val state by viewModel.state.collectAsStateWithLifecycle()
                DemoScreen(
                    state = state,
                    onPick = { pickImage.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly)) },
                    onCapture = {
                        try {
                            capture.launch(null)
                        } catch (e: ActivityNotFoundException) {
                            viewModel.showError(getString(R.string.no_camera_app))
                        }
                    },
                    onSelect = viewModel::select,
                    onRuntime = viewModel::setRuntime,
                    onServerUrl = viewModel::setServerUrl,
                    onServerToken = viewModel::setServerToken,
                    onTopK = viewModel::setTopK,
                    onRun = viewModel::encodeAndSend,
                )
            }
        }
    }
}
