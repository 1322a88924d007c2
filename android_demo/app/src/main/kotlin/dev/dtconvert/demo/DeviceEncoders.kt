package dev.dtconvert.demo

import com.google.ai.edge.litert.Accelerator
import com.google.ai.edge.litert.CompiledModel
import com.google.ai.edge.litert.TensorBuffer
import dev.dtconvert.demo.core.Artifact
import dev.dtconvert.demo.core.ManifestValues
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import java.io.File
import java.io.IOException

/**
 * The device half of the split model: the preprocessed image (flat, NCHW) in, the float wire
 * tensor (flat, C order) out. Quantization happens afterwards in core, the same for every runtime.
 */
interface DeviceEncoder : AutoCloseable {
    fun encode(input: FloatArray): FloatArray
}

/** The int8 XNNPACK `.pte` through ExecuTorch's Android AAR. */
class ExecuTorchEncoder(file: File, artifact: Artifact) : DeviceEncoder {
    // The shape the artifact itself reported when the exporter reloaded it.
    private val inputShape = artifact.inputs.single().shape.map { it.toLong() }.toLongArray()
    private val module = Module.load(file.absolutePath)

    override fun encode(input: FloatArray): FloatArray {
        val outputs = module.forward(EValue.from(Tensor.fromBlob(input, inputShape)))
        return outputs[0].toTensor().dataAsFloatArray
    }

    override fun close() {
        module.destroy()
    }
}

/** The full-integer `.tflite` through LiteRT's CompiledModel API on the CPU (XNNPACK). */
class LiteRtEncoder(file: File) : DeviceEncoder {
    private val model = CompiledModel.create(file.absolutePath, CompiledModel.Options(Accelerator.CPU))
    private val inputs: List<TensorBuffer> = model.createInputBuffers()
    private val outputs: List<TensorBuffer> = model.createOutputBuffers()

    override fun encode(input: FloatArray): FloatArray {
        inputs[0].writeFloat(input)
        model.run(inputs, outputs)
        return outputs[0].readFloat()
    }

    override fun close() {
        (inputs + outputs).forEach { it.close() }
        model.close()
    }
}

/** An artifact whose sha256 matched the manifest but which its runtime cannot load or run. */
class UnloadableArtifactException(message: String, cause: Throwable) : IOException(message, cause)

/** Open the encoder for a manifest target (`executorch` or `tflite`). */
fun openEncoder(target: String, file: File, artifact: Artifact): DeviceEncoder = when (target) {
    ManifestValues.TARGET_EXECUTORCH -> ExecuTorchEncoder(file, artifact)
    ManifestValues.TARGET_TFLITE -> LiteRtEncoder(file)
    else -> throw IllegalArgumentException("no Android runtime for target $target")
}

/**
 * Open the encoder and run it once on zeros of [inputSize] values (the first run is the slow one,
 * and a file a runtime opens lazily fails here rather than on the user's image). A file the
 * runtime cannot load becomes one sentence naming the manifest field, not a runtime stack trace.
 * A runtime that crashes natively on a malformed file cannot be caught from Kotlin.
 */
fun openWarmEncoder(target: String, file: File, artifact: Artifact, inputSize: Int): DeviceEncoder {
    var opened: DeviceEncoder? = null
    try {
        opened = openEncoder(target, file, artifact)
        opened.encode(FloatArray(inputSize))
        return opened
    } catch (e: Exception) {
        opened?.close()
        val reason = e.message?.lineSequence()?.firstOrNull()?.takeIf { it.isNotBlank() } ?: e.javaClass.simpleName
        throw UnloadableArtifactException(
            "${artifact.pathKey} \"${artifact.path}\": the $target runtime cannot load it though its sha256 matches ($reason); re-export",
            e,
        )
    }
}
