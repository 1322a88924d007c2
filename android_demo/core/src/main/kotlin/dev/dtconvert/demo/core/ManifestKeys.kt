package dev.dtconvert.demo.core

/**
 * Every `manifest.json` key the Kotlin code reads, spelled as a path from the document root
 * (`[]` steps into each element of an array). [Manifest.parse] reads the manifest only through
 * these constants, and `tests/test_android.py` checks each one against
 * `dtconvert/manifest.schema.json`, so a key renamed on the Python side fails a test instead
 * of a phone. Documented in `docs/manifest.md`.
 */
object ManifestKeys {
    const val SCHEMA_VERSION = "schema_version"

    const val MODEL_NAME = "model.name"
    const val MODEL_ID = "model.id"

    const val PRECISION = "precision"

    const val INPUT_NAME = "device_input.name"
    const val INPUT_SHAPE = "device_input.shape"
    const val INPUT_DTYPE = "device_input.dtype"
    const val INPUT_LAYOUT = "device_input.layout"
    const val PRE_SIZE = "device_input.preprocessing.size"
    const val PRE_CHANNELS = "device_input.preprocessing.channels"
    const val PRE_RESIZE = "device_input.preprocessing.resize"
    const val PRE_SCALE = "device_input.preprocessing.scale"
    const val PRE_MEAN = "device_input.preprocessing.mean"
    const val PRE_STD = "device_input.preprocessing.std"

    const val WIRE_NAME = "wire.name"
    const val WIRE_SHAPE = "wire.shape"
    const val WIRE_DTYPE = "wire.dtype"
    const val WIRE_SCALE = "wire.scale"
    const val WIRE_ZERO_POINT = "wire.zero_point"
    const val WIRE_BYTES_PER_IMAGE = "wire.bytes_per_image"

    const val TASKS = "tasks"
    const val TASK_NAME = "tasks[].name"
    const val TASK_LABELS = "tasks[].labels"

    const val ARTIFACTS = "artifacts"
    const val ARTIFACT_PATH = "artifacts[].path"
    const val ARTIFACT_KIND = "artifacts[].kind"
    const val ARTIFACT_PART = "artifacts[].part"
    const val ARTIFACT_TARGET = "artifacts[].target"
    const val ARTIFACT_PRECISION = "artifacts[].precision"
    const val ARTIFACT_BYTES = "artifacts[].bytes"
    const val ARTIFACT_SHA256 = "artifacts[].sha256"
    const val ARTIFACT_INPUTS = "artifacts[].inputs"
    const val ARTIFACT_INPUT_NAME = "artifacts[].inputs[].name"
    const val ARTIFACT_INPUT_SHAPE = "artifacts[].inputs[].shape"
    const val ARTIFACT_INPUT_DTYPE = "artifacts[].inputs[].dtype"
    const val ARTIFACT_OUTPUTS = "artifacts[].outputs"
    const val ARTIFACT_OUTPUT_NAME = "artifacts[].outputs[].name"
    const val ARTIFACT_OUTPUT_SHAPE = "artifacts[].outputs[].shape"
    const val ARTIFACT_OUTPUT_DTYPE = "artifacts[].outputs[].dtype"

    const val GOLDEN = "golden"
    const val GOLDEN_PATH = "golden.path"
    const val GOLDEN_COUNT = "golden.count"
    const val GOLDEN_FILES = "golden.files"

    const val DATA_HELDOUT = "data.heldout"
}

/**
 * Values of manifest fields that the code compares against: the schema's enums and consts.
 * Checked against the schema by the same test as [ManifestKeys].
 */
object ManifestValues {
    const val SCHEMA_VERSION = 1
    const val PART_DEVICE = "device"
    const val TARGET_EXECUTORCH = "executorch"
    const val TARGET_TFLITE = "tflite"
    const val KIND_FILE = "file"
    const val LAYOUT_NCHW = "NCHW"
    const val DTYPE_FLOAT32 = "float32"
    const val DTYPE_INT8 = "int8"
    const val RESIZE_BILINEAR = "bilinear"
    const val RESIZE_NEAREST = "nearest"
}

/**
 * Names of the files `dtconvert export` writes into the manifest's `golden.path` folder
 * (`write_golden` in `dtconvert/export.py`); each is a key of `golden.files`.
 */
object GoldenFiles {
    /** Preprocessed float32 images, (N, C, H, W). */
    const val INPUT = "input.npy"
    /** The bundled digits as uint8 source images, (N, 8, 8); only in digits exports. */
    const val SOURCE_IMAGES = "image_uint8.npy"
    /** The fp32 encoder's float wire tensors, (N, T, D). */
    const val WIRE_FP32 = "wire_fp32.npy"
    /** [WIRE_FP32] quantized with the manifest's scale and zero point, int8. */
    const val WIRE_INT8 = "wire_int8.npy"

    /** The cloud decoder's logits for [WIRE_INT8], one file per task. */
    fun logits(task: String) = "logits_$task.npy"
}
