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

/** Open the encoder for a manifest target (`executorch` or `tflite`). */
fun openEncoder(target: String, file: File, artifact: Artifact): DeviceEncoder = when (target) {
    ManifestValues.TARGET_EXECUTORCH -> ExecuTorchEncoder(file, artifact)
    ManifestValues.TARGET_TFLITE -> LiteRtEncoder(file)
    else -> throw IllegalArgumentException("no Android runtime for target $target")
}
