package dev.dtconvert.demo

import android.graphics.Bitmap
import androidx.compose.foundation.BorderStroke
import androidx.compose.foundation.Image
import androidx.compose.foundation.border
import androidx.compose.foundation.clickable
import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.PaddingValues
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.layout.size
import androidx.compose.foundation.lazy.LazyColumn
import androidx.compose.foundation.lazy.LazyRow
import androidx.compose.foundation.lazy.items
import androidx.compose.foundation.text.KeyboardOptions
import androidx.compose.material3.Button
import androidx.compose.material3.Card
import androidx.compose.material3.CircularProgressIndicator
import androidx.compose.material3.ExperimentalMaterial3Api
import androidx.compose.material3.FilterChip
import androidx.compose.material3.HorizontalDivider
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedButton
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.Scaffold
import androidx.compose.material3.Text
import androidx.compose.material3.TopAppBar
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.setValue
import androidx.compose.ui.Alignment
import androidx.compose.ui.Modifier
import androidx.compose.ui.graphics.FilterQuality
import androidx.compose.ui.graphics.asImageBitmap
import androidx.compose.ui.layout.ContentScale
import androidx.compose.ui.res.stringResource
import androidx.compose.ui.text.font.FontWeight
import androidx.compose.ui.text.input.KeyboardType
import androidx.compose.ui.text.input.PasswordVisualTransformation
import androidx.compose.ui.unit.dp
import dev.dtconvert.demo.core.Manifest
import dev.dtconvert.demo.core.ManifestValues

/** Top-k choices offered besides the server's default, capped by the largest task's class count. */
private const val MAX_TOP_K_CHOICE = 5

@OptIn(ExperimentalMaterial3Api::class)
@Composable
fun DemoScreen(
    state: DemoState,
    onPick: () -> Unit,
    onCapture: () -> Unit,
    onSelect: (InputImage) -> Unit,
    onRuntime: (String) -> Unit,
    onServerUrl: (String) -> Unit,
    onServerToken: (String) -> Unit,
    onTopK: (Int?) -> Unit,
    onRun: () -> Unit,
) {
    Scaffold(topBar = { TopAppBar(title = { Text(stringResource(R.string.app_name)) }) }) { padding ->
        LazyColumn(
            modifier = Modifier.fillMaxSize().padding(padding),
            contentPadding = PaddingValues(16.dp),
            verticalArrangement = Arrangement.spacedBy(12.dp),
        ) {
            state.loadError?.let { item { ErrorText(it) } }
            state.manifest?.let { manifest -> item { ModelCard(manifest) } }
            item { SettingsCard(state, onRuntime, onServerUrl, onServerToken, onTopK) }
            item { ImageCard(state, onPick, onCapture, onSelect) }
            item {
                Button(onClick = onRun, enabled = !state.busy && state.selected != null && state.runtime != null, modifier = Modifier.fillMaxWidth()) {
                    if (state.busy) {
                        CircularProgressIndicator(modifier = Modifier.size(18.dp), strokeWidth = 2.dp)
                        Text(stringResource(R.string.running), modifier = Modifier.padding(start = 8.dp))
                    } else {
                        Text(stringResource(R.string.run))
                    }
                }
            }
            state.error?.let { item { ErrorText(it) } }
            state.result?.let { result -> item { ResultCard(result) } }
        }
    }
}

@Composable
private fun ModelCard(manifest: Manifest) {
    Card(modifier = Modifier.fillMaxWidth()) {
        Column(modifier = Modifier.padding(16.dp), verticalArrangement = Arrangement.spacedBy(4.dp)) {
            Text(
                stringResource(R.string.model_title, manifest.modelName, manifest.modelId, manifest.precision),
                style = MaterialTheme.typography.titleMedium,
            )
            Text(stringResource(R.string.model_input, manifest.deviceInput.shape.joinToString("×")))
            Text(stringResource(R.string.model_wire, manifest.wire.shape.joinToString("×"), manifest.wire.bytesPerImage))
            for (task in manifest.tasks) Text(stringResource(R.string.model_task, task.name, task.labels.size))
        }
    }
}

@Composable
private fun runtimeName(target: String): String = when (target) {
    ManifestValues.TARGET_EXECUTORCH -> stringResource(R.string.runtime_executorch)
    ManifestValues.TARGET_TFLITE -> stringResource(R.string.runtime_tflite)
    else -> target
}

@Composable
private fun SettingsCard(
    state: DemoState,
    onRuntime: (String) -> Unit,
    onServerUrl: (String) -> Unit,
    onServerToken: (String) -> Unit,
    onTopK: (Int?) -> Unit,
) {
    Card(modifier = Modifier.fillMaxWidth()) {
        Column(modifier = Modifier.padding(16.dp), verticalArrangement = Arrangement.spacedBy(8.dp)) {
            Text(stringResource(R.string.runtime), style = MaterialTheme.typography.labelLarge)
            Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
                for (target in state.runtimes) {
                    FilterChip(selected = target == state.runtime, onClick = { onRuntime(target) }, label = { Text(runtimeName(target)) })
                }
            }
            OutlinedTextField(
                value = state.serverUrl,
                onValueChange = onServerUrl,
                label = { Text(stringResource(R.string.server_url)) },
                singleLine = true,
                keyboardOptions = KeyboardOptions(keyboardType = KeyboardType.Uri),
                modifier = Modifier.fillMaxWidth(),
            )
            ServerTokenField(state.serverTokenSet, onServerToken)
            Text(stringResource(R.string.top_k), style = MaterialTheme.typography.labelLarge)
            val largestTask = state.manifest?.tasks?.maxOf { it.labels.size } ?: 1
            val choices = listOf<Int?>(null) + (1..minOf(MAX_TOP_K_CHOICE, largestTask)).toList()
            LazyRow(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
                items(choices) { k ->
                    FilterChip(
                        selected = k == state.topK,
                        onClick = { onTopK(k) },
                        label = { Text(k?.toString() ?: stringResource(R.string.top_k_server_default)) },
                    )
                }
            }
        }
    }
}

/**
 * The bearer token for a server started with `--token-file`. Write-only: the saved token is never
 * shown or put back into the field; typing replaces it, Clear removes it.
 */
@Composable
private fun ServerTokenField(tokenSet: Boolean, onServerToken: (String) -> Unit) {
    var draft by remember { mutableStateOf("") }
    Column(verticalArrangement = Arrangement.spacedBy(4.dp)) {
        OutlinedTextField(
            value = draft,
            onValueChange = {
                draft = it
                onServerToken(it)
            },
            label = { Text(stringResource(R.string.server_token)) },
            placeholder = { Text(stringResource(if (tokenSet) R.string.server_token_saved else R.string.server_token_none)) },
            singleLine = true,
            visualTransformation = PasswordVisualTransformation(),
            keyboardOptions = KeyboardOptions(keyboardType = KeyboardType.Password),
            modifier = Modifier.fillMaxWidth(),
        )
        OutlinedButton(
            onClick = {
                draft = ""
                onServerToken("")
            },
            enabled = tokenSet || draft.isNotEmpty(),
        ) { Text(stringResource(R.string.server_token_clear)) }
    }
}

@Composable
private fun ImageCard(state: DemoState, onPick: () -> Unit, onCapture: () -> Unit, onSelect: (InputImage) -> Unit) {
    Card(modifier = Modifier.fillMaxWidth()) {
        Column(modifier = Modifier.padding(16.dp), verticalArrangement = Arrangement.spacedBy(8.dp)) {
            Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
                OutlinedButton(onClick = onPick) { Text(stringResource(R.string.pick_image)) }
                OutlinedButton(onClick = onCapture) { Text(stringResource(R.string.take_photo)) }
            }
            if (state.heldout.isNotEmpty()) {
                Text(stringResource(R.string.heldout_title), style = MaterialTheme.typography.labelLarge)
                LazyRow(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
                    items(state.heldout) { image ->
                        Column(horizontalAlignment = Alignment.CenterHorizontally) {
                            Pixels(
                                bitmap = image.preview,
                                description = stringResource(R.string.heldout_description, image.sample ?: image.position),
                                modifier = Modifier
                                    .size(56.dp)
                                    .border(
                                        BorderStroke(2.dp, if (image === state.selected) MaterialTheme.colorScheme.primary else MaterialTheme.colorScheme.outlineVariant),
                                    )
                                    .clickable { onSelect(image) },
                            )
                            Text(stringResource(R.string.heldout_caption, image.sample ?: image.position), style = MaterialTheme.typography.labelSmall)
                        }
                    }
                }
            }
            state.selected?.let { selected ->
                Pixels(selected.preview, stringResource(R.string.selected_description), Modifier.size(160.dp))
                if (selected is InputImage.Photo) Text(stringResource(R.string.photo_hint), style = MaterialTheme.typography.bodySmall)
            }
        }
    }
}

/** An image drawn with hard pixel edges: an 8×8 digit stays readable when scaled up. */
@Composable
private fun Pixels(bitmap: Bitmap, description: String, modifier: Modifier = Modifier) {
    val image = remember(bitmap) { bitmap.asImageBitmap() }
    Image(bitmap = image, contentDescription = description, modifier = modifier, contentScale = ContentScale.Fit, filterQuality = FilterQuality.None)
}

@Composable
private fun ResultCard(result: RunResult) {
    Card(modifier = Modifier.fillMaxWidth()) {
        Column(modifier = Modifier.padding(16.dp), verticalArrangement = Arrangement.spacedBy(4.dp)) {
            Text(stringResource(R.string.device_latency, runtimeName(result.runtime), result.deviceMs, result.preprocessMs))
            Text(stringResource(R.string.payload, result.wireBytes, result.messageBytes))
            Text(stringResource(R.string.round_trip, result.roundTripMs))
            result.server?.let { Text(stringResource(R.string.server_timing, it.decodeMs, it.queueMs, it.serverMs, it.batchImages)) }
            for ((task, ranked) in result.predictions) {
                HorizontalDivider(modifier = Modifier.padding(vertical = 4.dp))
                Text(task, style = MaterialTheme.typography.titleSmall)
                ranked.forEachIndexed { rank, prediction ->
                    Text(
                        stringResource(R.string.prediction, prediction.label, prediction.score * 100),
                        fontWeight = if (rank == 0) FontWeight.Bold else FontWeight.Normal,
                    )
                }
                result.reference?.get(task)?.let { Text(stringResource(R.string.reference, it), style = MaterialTheme.typography.bodySmall) }
            }
        }
    }
}

@Composable
private fun ErrorText(message: String) {
    Text(stringResource(R.string.error, message), color = MaterialTheme.colorScheme.error)
}
