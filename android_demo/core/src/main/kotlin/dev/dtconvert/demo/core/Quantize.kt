package dev.dtconvert.demo.core

/**
 * The wire tensor's int8 quantization, exactly as `dtconvert.quantize.quantize_wire`:
 *
 *     q = clamp(round_half_even(float32(x) / float32(scale)) + zero_point, -128, 127)
 *
 * The division is float32 (a float64 division rounds a few values differently), rounding is
 * half to even (`Math.rint`, as `np.round`), and ±infinity clamp to the int8 range. NaN has no
 * defined int8 value in numpy; an encoder that outputs NaN is broken, so it is rejected here.
 */
object WireQuantizer {
    const val INT8_MIN = -128
    const val INT8_MAX = 127

    fun quantize(x: FloatArray, scale: Float, zeroPoint: Int): ByteArray =
        ByteArray(x.size) { i -> quantizeOne(x[i], scale, zeroPoint) }

    fun quantizeOne(x: Float, scale: Float, zeroPoint: Int): Byte {
        require(!x.isNaN()) { "the device encoder returned NaN; it has no int8 value" }
        val rounded = Math.rint((x / scale).toDouble()) // the float32 quotient, rounded half to even
        return (rounded + zeroPoint).coerceIn(INT8_MIN.toDouble(), INT8_MAX.toDouble()).toInt().toByte()
    }

    /** `(q − zero_point) · scale`, the value the cloud decoder sees. */
    fun dequantize(q: ByteArray, scale: Float, zeroPoint: Int): FloatArray =
        FloatArray(q.size) { i -> (q[i] - zeroPoint).toFloat() * scale }
}

/**
 * Turns device-encoder outputs into one wire message for the manifest's model: checks each
 * output against `wire.shape`, quantizes with `wire.scale` / `wire.zero_point`, and stacks the
 * images into a batch.
 */
class WireEncoder(private val manifest: Manifest) {
    private val wire = manifest.wire

    /** Values one image's encoder output must have (`prod(wire.shape[1:])`). */
    val valuesPerImage: Int get() = wire.bytesPerImage

    /** Quantize one image's float wire tensor to its int8 bytes. */
    fun quantize(encoderOutput: FloatArray): ByteArray {
        require(encoderOutput.size == valuesPerImage) {
            "the device encoder returned ${encoderOutput.size} values; wire.shape ${wire.shape} needs $valuesPerImage per image"
        }
        return WireQuantizer.quantize(encoderOutput, wire.scale, wire.zeroPoint)
    }

    /** A message carrying already quantized images (each [valuesPerImage] bytes), batch first. */
    fun messageOf(quantizedImages: List<ByteArray>, taskMask: Long = 0L): WireMessage {
        require(quantizedImages.isNotEmpty()) { "a wire message needs at least one image" }
        val payload = ByteArray(quantizedImages.size * valuesPerImage)
        quantizedImages.forEachIndexed { i, image ->
            require(image.size == valuesPerImage) { "image $i has ${image.size} bytes; wire.shape ${wire.shape} needs $valuesPerImage" }
            image.copyInto(payload, i * valuesPerImage)
        }
        return WireMessage(manifest.modelId, taskMask, wire.scale, wire.zeroPoint, listOf(quantizedImages.size) + wire.imageShape, payload)
    }

    /** Quantize each image's encoder output and encode them as one wire message. */
    fun encode(encoderOutputs: List<FloatArray>, taskMask: Long = 0L): ByteArray =
        WireFormat.encode(messageOf(encoderOutputs.map(::quantize), taskMask))
}
