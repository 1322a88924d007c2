package dev.dtconvert.demo.core

import dev.dtconvert.demo.core.ManifestKeys as K
import dev.dtconvert.demo.core.ManifestValues as V

/** A manifest that cannot drive the app; the message names the field and the problem. */
class ManifestException(message: String) : IllegalArgumentException(message)

data class TensorSpec(val name: String, val shape: List<Int>, val dtype: String) {
    val elements: Int get() = shape.fold(1) { a, b -> a * b }
}

/**
 * How uint8 pixels become the device input (`docs/manifest.md`, `dtconvert/data.py`):
 * `x * scale` → resize to [height]×[width] → `(x − mean[c]) / std[c]`.
 */
data class Preprocessing(
    val height: Int,
    val width: Int,
    val channels: Int,
    val resize: String,
    val scale: Double,
    val mean: List<Float>,
    val std: List<Float>,
)

data class DeviceInput(val name: String, val shape: List<Int>, val layout: String, val preprocessing: Preprocessing)

/** The int8 tensor sent to the cloud: `shape` is `[1, T, D]`, batch first. */
data class WireSpec(val name: String, val shape: List<Int>, val scale: Float, val zeroPoint: Int, val bytesPerImage: Int) {
    /** The shape of one image's wire tensor, without the batch dimension. */
    val imageShape: List<Int> get() = shape.drop(1)
}

data class TaskSpec(val name: String, val labels: List<String>)

/** [pathKey] is the manifest field [path] came from (`artifacts[2].path`), for error messages. */
data class Artifact(
    val path: String,
    val kind: String,
    val part: String,
    val target: String,
    val precision: String,
    val bytes: Long,
    val sha256: String,
    val inputs: List<TensorSpec>,
    val outputs: List<TensorSpec>,
    val pathKey: String,
)

/** The golden folder: [files] maps each file name to its sha256. */
data class Golden(val path: String, val count: Int, val files: Map<String, String>) {
    /** The manifest field that names the golden file [name], for error messages. */
    fun key(name: String): String = "${K.GOLDEN_FILES}.$name"
}

/** What `dtconvert export` wrote: the only source of file names, shapes and numbers in the app. */
data class Manifest(
    val schemaVersion: Int,
    val modelName: String,
    val modelId: String,
    val precision: String,
    val deviceInput: DeviceInput,
    val wire: WireSpec,
    val tasks: List<TaskSpec>,
    val artifacts: List<Artifact>,
    val golden: Golden?,
    val heldout: List<Int>,
) {
    /** Device-encoder targets this export has and the Android app can run, in manifest order. */
    val androidTargets: List<String>
        get() = artifacts.filter { it.part == V.PART_DEVICE && it.target in ANDROID_TARGETS }.map { it.target }

    /**
     * The device encoder for [target] (`executorch` or `tflite`), checked against the
     * manifest's input and wire shapes; throws [ManifestException] when the export lacks it.
     */
    fun deviceArtifact(target: String): Artifact {
        val artifact = artifacts.firstOrNull { it.part == V.PART_DEVICE && it.target == target }
            ?: throw ManifestException(
                "$FILE_NAME: no device artifact for target $target (this export has ${androidTargets.ifEmpty { listOf("none") }.joinToString()})",
            )
        if (artifact.kind != V.KIND_FILE) throw ManifestException("$FILE_NAME: ${artifact.path} is a ${artifact.kind}, expected a file")
        val input = artifact.inputs.singleOrNull()
            ?: throw ManifestException("$FILE_NAME: ${artifact.path} must list exactly one input, lists ${artifact.inputs.size}")
        val output = artifact.outputs.singleOrNull()
            ?: throw ManifestException("$FILE_NAME: ${artifact.path} must list exactly one output, lists ${artifact.outputs.size}")
        if (input.shape != deviceInput.shape) {
            throw ManifestException("$FILE_NAME: ${artifact.path} input shape ${input.shape} differs from device_input.shape ${deviceInput.shape}")
        }
        if (output.shape != wire.shape) {
            throw ManifestException("$FILE_NAME: ${artifact.path} output shape ${output.shape} differs from wire.shape ${wire.shape}")
        }
        if (input.dtype != V.DTYPE_FLOAT32 || output.dtype != V.DTYPE_FLOAT32) {
            throw ManifestException("$FILE_NAME: ${artifact.path} must take and return float32, has ${input.dtype} -> ${output.dtype}")
        }
        return artifact
    }

    /** The wire-format task mask requesting [names] (empty: all tasks, mask 0). */
    fun taskMask(names: Collection<String>): Long {
        var mask = 0L
        for (name in names) {
            val index = tasks.indexOfFirst { it.name == name }
            if (index < 0) throw ManifestException("$FILE_NAME: no task named $name (tasks: ${tasks.joinToString { it.name }})")
            mask = mask or (1L shl index)
        }
        return mask
    }

    companion object {
        /** The manifest's file name in an export directory. */
        const val FILE_NAME = "manifest.json"

        /** Device targets with an Android runtime in this app. */
        val ANDROID_TARGETS = listOf(V.TARGET_EXECUTORCH, V.TARGET_TFLITE)

        /** The wire format's task mask is 32 bits wide. */
        private const val MAX_TASKS = 32

        /** Parse and check a manifest; throw an IllegalArgumentException naming the field. */
        fun parse(text: String, source: String = FILE_NAME): Manifest {
            val root = JsonField.parse(text, source)
            val version = root.at(K.SCHEMA_VERSION)
            if (version.int() > V.SCHEMA_VERSION) {
                version.fail("is ${version.int()}, newer than this app reads (${V.SCHEMA_VERSION}); update the app")
            }
            val modelId = root.at(K.MODEL_ID)
            if (!HEX16.matches(modelId.string())) modelId.fail("must be 16 lowercase hex digits, got \"${modelId.string()}\"")
            return Manifest(
                schemaVersion = version.int(),
                modelName = root.at(K.MODEL_NAME).string(),
                modelId = modelId.string(),
                precision = root.at(K.PRECISION).string(),
                deviceInput = deviceInput(root),
                wire = wire(root),
                tasks = tasks(root),
                artifacts = root.at(K.ARTIFACTS).items().map(::artifact),
                golden = root.optionalAt(K.GOLDEN)?.let { golden(root) },
                heldout = root.optionalAt(K.DATA_HELDOUT)?.ints()?.toList() ?: emptyList(),
            )
        }

        private val HEX16 = Regex("^[0-9a-f]{16}$")
        private val HEX64 = Regex("^[0-9a-f]{64}$")

        /**
         * A path the manifest names, confined to the export ([ExportPaths]): a manifest that points
         * outside its export is refused whole, whichever file the app would have read.
         */
        private fun exportPath(field: JsonField): String {
            val path = field.string()
            ExportPaths.problem(path)?.let { throw ManifestException(ExportPaths.message(field.where, path, it)) }
            return path
        }

        /** A sha256 as the manifest writes it; the app also names folders after it, so nothing else passes. */
        private fun sha256(field: JsonField): String {
            val digest = field.string()
            if (!HEX64.matches(digest)) field.fail("must be 64 lowercase hex digits, got \"${digest.take(80)}\"")
            return digest
        }

        private fun shape(field: JsonField): List<Int> {
            val dims = field.ints().toList()
            if (dims.isEmpty() || dims.any { it < 1 }) field.fail("must be a non-empty list of dimensions >= 1, got $dims")
            return dims
        }

        private fun deviceInput(root: JsonField): DeviceInput {
            val shapeField = root.at(K.INPUT_SHAPE)
            val shape = shape(shapeField)
            val layout = root.at(K.INPUT_LAYOUT)
            if (layout.string() != V.LAYOUT_NCHW) layout.fail("is ${layout.string()}; this app feeds ${V.LAYOUT_NCHW}")
            val dtype = root.at(K.INPUT_DTYPE)
            if (dtype.string() != V.DTYPE_FLOAT32) dtype.fail("is ${dtype.string()}; this app feeds ${V.DTYPE_FLOAT32}")
            val size = root.at(K.PRE_SIZE)
            val hw = size.ints()
            if (hw.size != 2 || hw.any { it < 1 }) size.fail("must be [height, width], got ${hw.toList()}")
            val channelsField = root.at(K.PRE_CHANNELS)
            val channels = channelsField.int()
            if (channels != 1 && channels != 3) channelsField.fail("must be 1 or 3, got $channels")
            val resize = root.at(K.PRE_RESIZE)
            if (resize.string() != V.RESIZE_BILINEAR && resize.string() != V.RESIZE_NEAREST) {
                resize.fail("must be ${V.RESIZE_BILINEAR} or ${V.RESIZE_NEAREST}, got ${resize.string()}")
            }
            val scale = root.at(K.PRE_SCALE)
            if (!(scale.double() > 0.0)) scale.fail("must be positive, got ${scale.double()}")
            val mean = root.at(K.PRE_MEAN)
            val std = root.at(K.PRE_STD)
            if (mean.doubles().size != channels) mean.fail("must have $channels values, has ${mean.doubles().size}")
            if (std.doubles().size != channels) std.fail("must have $channels values, has ${std.doubles().size}")
            if (std.doubles().any { !(it > 0.0) }) std.fail("must be positive")
            if (shape != listOf(1, channels, hw[0], hw[1])) {
                shapeField.fail("is $shape but the preprocessing makes [1, $channels, ${hw[0]}, ${hw[1]}]")
            }
            return DeviceInput(
                name = root.at(K.INPUT_NAME).string(),
                shape = shape,
                layout = layout.string(),
                preprocessing = Preprocessing(
                    height = hw[0],
                    width = hw[1],
                    channels = channels,
                    resize = resize.string(),
                    scale = scale.double(),
                    // float32, as torch.tensor(mean) is in dtconvert.data.normalize
                    mean = mean.doubles().map { it.toFloat() },
                    std = std.doubles().map { it.toFloat() },
                ),
            )
        }

        private fun wire(root: JsonField): WireSpec {
            val dtype = root.at(K.WIRE_DTYPE)
            if (dtype.string() != V.DTYPE_INT8) dtype.fail("is ${dtype.string()}; wire format v1 carries ${V.DTYPE_INT8}")
            val shapeField = root.at(K.WIRE_SHAPE)
            val shape = shape(shapeField)
            if (shape.size < 2 || shape[0] != 1) shapeField.fail("must be [1, ...] (batch first), got $shape")
            val scaleField = root.at(K.WIRE_SCALE)
            // The wire carries the scale as float32; the Python side rounds the same way.
            val scale = scaleField.double().toFloat()
            if (!scale.isFinite() || scale <= 0f) scaleField.fail("must be finite and positive as float32, got ${scaleField.double()}")
            val zeroPointField = root.at(K.WIRE_ZERO_POINT)
            val zeroPoint = zeroPointField.int()
            if (zeroPoint !in -128..127) zeroPointField.fail("must be in -128..127, got $zeroPoint")
            val bytesField = root.at(K.WIRE_BYTES_PER_IMAGE)
            val perImage = shape.drop(1).fold(1) { a, b -> a * b }
            if (bytesField.int() != perImage) bytesField.fail("is ${bytesField.int()} but wire.shape $shape holds $perImage values per image")
            return WireSpec(root.at(K.WIRE_NAME).string(), shape, scale, zeroPoint, perImage)
        }

        private fun tasks(root: JsonField): List<TaskSpec> {
            val field = root.at(K.TASKS)
            val tasks = field.items().map { task ->
                val labels = task.at(K.TASK_LABELS)
                if (labels.strings().size < 2) labels.fail("must name at least 2 labels")
                TaskSpec(task.at(K.TASK_NAME).string(), labels.strings())
            }
            if (tasks.isEmpty()) field.fail("must list at least one task")
            if (tasks.size > MAX_TASKS) field.fail("lists ${tasks.size} tasks; the wire format's task mask has $MAX_TASKS bits")
            return tasks
        }

        private fun artifact(item: JsonField): Artifact {
            fun tensors(key: String, nameKey: String, shapeKey: String, dtypeKey: String) =
                item.optionalAt(key)?.items()?.map { t ->
                    TensorSpec(t.at(nameKey).string(), shape(t.at(shapeKey)), t.at(dtypeKey).string())
                } ?: emptyList()
            val pathField = item.at(K.ARTIFACT_PATH)
            return Artifact(
                path = exportPath(pathField),
                kind = item.at(K.ARTIFACT_KIND).string(),
                part = item.at(K.ARTIFACT_PART).string(),
                target = item.at(K.ARTIFACT_TARGET).string(),
                precision = item.at(K.ARTIFACT_PRECISION).string(),
                bytes = item.at(K.ARTIFACT_BYTES).long(),
                sha256 = sha256(item.at(K.ARTIFACT_SHA256)),
                inputs = tensors(K.ARTIFACT_INPUTS, K.ARTIFACT_INPUT_NAME, K.ARTIFACT_INPUT_SHAPE, K.ARTIFACT_INPUT_DTYPE),
                outputs = tensors(K.ARTIFACT_OUTPUTS, K.ARTIFACT_OUTPUT_NAME, K.ARTIFACT_OUTPUT_SHAPE, K.ARTIFACT_OUTPUT_DTYPE),
                pathKey = pathField.where,
            )
        }

        private fun golden(root: JsonField): Golden =
            Golden(
                path = exportPath(root.at(K.GOLDEN_PATH)),
                count = root.at(K.GOLDEN_COUNT).int(),
                files = root.at(K.GOLDEN_FILES).entries().associate { (name, digest) ->
                    ExportPaths.problem(name)?.let { throw ManifestException(ExportPaths.message(digest.where, name, it)) }
                    name to sha256(digest)
                },
            )
    }
}
