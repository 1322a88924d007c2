package dev.dtconvert.demo.core

/**
 * uint8 pixels → the device encoder's float32 NCHW input, as `dtconvert/data.py` defines it:
 * `x · scale` → `interpolate(size, mode, align_corners=False, antialias=False)` →
 * `(x − mean[c]) / std[c]`, all in float32 like torch on the CPU.
 *
 * Colour images become one channel the way PIL's `convert("L")` does (ITU-R 601-2 luma with
 * PIL's integer rounding), so a photo is preprocessed as `dtconvert` preprocesses an image file.
 */
class Preprocessor(private val spec: Preprocessing) {
    /** Values of one preprocessed image, `channels · height · width`. */
    val inputSize: Int get() = spec.channels * spec.height * spec.width

    /** One grey image, row-major uint8 (as in `image_uint8.npy`). */
    fun fromGray(pixels: ByteArray, height: Int, width: Int): FloatArray {
        require(pixels.size == height * width) { "a ${height}x$width grey image has ${height * width} pixels, got ${pixels.size}" }
        val grey = IntArray(pixels.size) { pixels[it].toInt() and 0xFF }
        return fromPlanes(Array(spec.channels) { grey }, height, width)
    }

    /** One colour image as packed ARGB ints, row-major (what `android.graphics.Bitmap.getPixels` returns). */
    fun fromArgb(pixels: IntArray, height: Int, width: Int): FloatArray {
        require(pixels.size == height * width) { "a ${height}x$width image has ${height * width} pixels, got ${pixels.size}" }
        val planes = if (spec.channels == 1) {
            arrayOf(IntArray(pixels.size) { luma(pixels[it]) })
        } else {
            arrayOf(
                IntArray(pixels.size) { (pixels[it] shr 16) and 0xFF },
                IntArray(pixels.size) { (pixels[it] shr 8) and 0xFF },
                IntArray(pixels.size) { pixels[it] and 0xFF },
            )
        }
        return fromPlanes(planes, height, width)
    }

    private fun fromPlanes(planes: Array<IntArray>, height: Int, width: Int): FloatArray {
        require(height >= 1 && width >= 1) { "an image needs at least one pixel, got ${height}x$width" }
        val out = FloatArray(inputSize)
        val plane = spec.height * spec.width
        for (c in 0 until spec.channels) {
            // x · scale in double, rounded once to float32: the float32 of x / 255 for scale 1/255
            val unit = FloatArray(planes[c].size) { (planes[c][it] * spec.scale).toFloat() }
            val resized = resize(unit, height, width)
            val mean = spec.mean[c]
            val std = spec.std[c]
            for (i in 0 until plane) out[c * plane + i] = (resized[i] - mean) / std
        }
        return out
    }

    private fun resize(src: FloatArray, inH: Int, inW: Int): FloatArray {
        if (inH == spec.height && inW == spec.width) return src
        return if (spec.resize == ManifestValues.RESIZE_NEAREST) nearest(src, inH, inW) else bilinear(src, inH, inW)
    }

    /** torch's CPU `upsample_bilinear2d` (align_corners=False), float32 arithmetic. */
    private fun bilinear(src: FloatArray, inH: Int, inW: Int): FloatArray {
        val rows = linearTaps(inH, spec.height)
        val cols = linearTaps(inW, spec.width)
        val out = FloatArray(spec.height * spec.width)
        for (y in 0 until spec.height) {
            val r0 = rows.index0[y] * inW
            val r1 = rows.index1[y] * inW
            for (x in 0 until spec.width) {
                val c0 = cols.index0[x]
                val c1 = cols.index1[x]
                val top = src[r0 + c0] * cols.weight0[x] + src[r0 + c1] * cols.weight1[x]
                val bottom = src[r1 + c0] * cols.weight0[x] + src[r1 + c1] * cols.weight1[x]
                out[y * spec.width + x] = top * rows.weight0[y] + bottom * rows.weight1[y]
            }
        }
        return out
    }

    private class Taps(val index0: IntArray, val index1: IntArray, val weight0: FloatArray, val weight1: FloatArray)

    private fun linearTaps(inSize: Int, outSize: Int): Taps {
        val scale = inSize.toFloat() / outSize.toFloat()
        val taps = Taps(IntArray(outSize), IntArray(outSize), FloatArray(outSize), FloatArray(outSize))
        for (o in 0 until outSize) {
            val source = maxOf(scale * (o + 0.5f) - 0.5f, 0f)
            val i0 = source.toInt() // floor: source >= 0
            val lambda = (source - i0).coerceIn(0f, 1f)
            taps.index0[o] = i0
            taps.index1[o] = if (i0 < inSize - 1) i0 + 1 else i0
            taps.weight0[o] = 1f - lambda
            taps.weight1[o] = lambda
        }
        return taps
    }

    /** torch's `upsample_nearest2d`: source index `floor(o · in / out)`. */
    private fun nearest(src: FloatArray, inH: Int, inW: Int): FloatArray {
        val rows = IntArray(spec.height) { nearestIndex(it, inH, spec.height) }
        val cols = IntArray(spec.width) { nearestIndex(it, inW, spec.width) }
        return FloatArray(spec.height * spec.width) { i -> src[rows[i / spec.width] * inW + cols[i % spec.width]] }
    }

    private fun nearestIndex(o: Int, inSize: Int, outSize: Int): Int = when (outSize) {
        inSize -> o
        2 * inSize -> o shr 1
        else -> minOf((o * (inSize.toFloat() / outSize)).toInt(), inSize - 1)
    }

    companion object {
        /** PIL's `convert("L")`: `(R·19595 + G·38470 + B·7471 + 0x8000) >> 16`. */
        fun luma(argb: Int): Int {
            val r = (argb shr 16) and 0xFF
            val g = (argb shr 8) and 0xFF
            val b = argb and 0xFF
            return (r * 19595 + g * 38470 + b * 7471 + 0x8000) shr 16
        }
    }
}
