package dev.dtconvert.demo.core

import java.io.ByteArrayOutputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder

/** A .npy file as numpy writes it (version 1, header padded to 64 bytes). */
fun npyBytes(dtype: String, shape: List<Int>, data: ByteArray, major: Int = 1): ByteArray {
    val dims = if (shape.size == 1) "${shape[0]}," else shape.joinToString(", ")
    var header = "{'descr': '$dtype', 'fortran_order': False, 'shape': ($dims), }"
    val prefix = if (major == 1) 10 else 12
    header += " ".repeat(63 - (prefix + header.length) % 64) + "\n"
    val out = ByteArrayOutputStream()
    out.write(byteArrayOf(0x93.toByte()) + "NUMPY".toByteArray() + byteArrayOf(major.toByte(), 0))
    val length = ByteBuffer.allocate(if (major == 1) 2 else 4).order(ByteOrder.LITTLE_ENDIAN)
    if (major == 1) length.putShort(header.length.toShort()) else length.putInt(header.length)
    out.write(length.array())
    out.write(header.toByteArray(Charsets.ISO_8859_1))
    out.write(data)
    return out.toByteArray()
}

private fun floatBytes(values: FloatArray): ByteArray =
    ByteBuffer.allocate(4 * values.size).order(ByteOrder.LITTLE_ENDIAN).apply { values.forEach { putFloat(it) } }.array()

private val GREY_3X3 = byteArrayOf(0, 64, 255.toByte(), 10, 200.toByte(), 30, 255.toByte(), 0, 128.toByte())

private fun preprocessing(height: Int, width: Int, resize: String, channels: Int = 1) = Preprocessing(
    height = height, width = width, channels = channels, resize = resize, scale = 1.0 / 255.0,
    mean = List(channels) { 0.5f }, std = List(channels) { 0.5f },
)

val rankingTests = listOf(
    test("top-k orders by score, lower index first on ties") {
        val labels = listOf("a", "b", "c", "d")
        val top = Ranking.topK(floatArrayOf(0.1f, 0.4f, 0.4f, 0.1f), labels, 3)
        assertEquals(listOf(1, 2, 0), top.map { it.index }, "indices")
        assertEquals(listOf("b", "c", "a"), top.map { it.label }, "labels")
        assertThrows<IllegalArgumentException>("k must be in 1..4") { Ranking.topK(FloatArray(4), labels, 5) }
        assertThrows<IllegalArgumentException>("3 scores but 4 labels") { Ranking.topK(FloatArray(3), labels, 1) }
    },
    test("softmax sums to one and survives large logits") {
        val p = Ranking.softmax(floatArrayOf(1000f, 999f, -1000f))
        expect(Math.abs(p.sum() - 1f) < 1e-6f) { "sum ${p.sum()}" }
        assertClose(floatArrayOf(0.7310586f, 0.26894143f, 0f), p, 1e-6f, "probabilities")
        assertEquals(0, Ranking.argmax(floatArrayOf(2f, 2f, 1f)), "argmax takes the first of equal maxima")
    },
)

val npyTests = listOf(
    test("npy reads float32, int8, uint8 and int64 arrays, versions 1 and 2") {
        val f = NpyArray.parse(npyBytes("<f4", listOf(2, 2), floatBytes(floatArrayOf(1f, -2f, 0.5f, 3e-8f))))
        assertEquals(listOf(2, 2), f.shape, "shape")
        assertClose(floatArrayOf(1f, -2f, 0.5f, 3e-8f), f.floats(), 0f, "floats")
        assertEquals(listOf<Byte>(-1, 127), NpyArray.parse(npyBytes("|i1", listOf(2), byteArrayOf(-1, 127))).bytes().toList(), "int8")
        assertEquals(255, NpyArray.parse(npyBytes("|u1", listOf(1), byteArrayOf(-1), major = 2)).bytes()[0].toInt() and 0xFF, "uint8, v2")
        val longs = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(1L shl 40).array()
        assertEquals(1L shl 40, NpyArray.parse(npyBytes("<i8", listOf(1), longs)).longs()[0], "int64")
    },
    test("npy refuses what it cannot read, naming the file") {
        assertThrows<NpyException>("x.npy: not a .npy file") { NpyArray.parse("hello world".toByteArray(), "x.npy") }
        assertThrows<NpyException>("unsupported dtype >f4") { NpyArray.parse(npyBytes(">f4", listOf(1), ByteArray(4))) }
        assertThrows<NpyException>("needs 8 data bytes, file has 4") { NpyArray.parse(npyBytes("<f4", listOf(2), ByteArray(4))) }
        val fortran = String(npyBytes("<f4", listOf(1), ByteArray(4)), Charsets.ISO_8859_1).replace("False", "True ")
        assertThrows<NpyException>("C-order") { NpyArray.parse(fortran.toByteArray(Charsets.ISO_8859_1)) }
        assertThrows<NpyException>("expected <f4") { NpyArray.parse(npyBytes("|i1", listOf(1), ByteArray(1))).floats() }
    },
)

val preprocessTests = listOf(
    test("bilinear resize matches torch interpolate(align_corners=False, antialias=False)") {
        // torch: F.interpolate(x / 255, size=(5, 4), mode="bilinear"), then (x - 0.5) / 0.5
        val expected = floatArrayOf(
            -1.00000000f, -0.68627453f, 0.06372547f, 1.00000000f, -0.96862745f, -0.40784311f, 0.06568635f, 0.29411769f,
            -0.92156863f, 0.00980389f, 0.06862748f, -0.76470590f, 0.23137283f, -0.14607847f, -0.34666675f, -0.30352932f,
            1.00000000f, -0.25000000f, -0.62352943f, 0.00392163f,
        )
        assertClose(expected, Preprocessor(preprocessing(5, 4, ManifestValues.RESIZE_BILINEAR)).fromGray(GREY_3X3, 3, 3), 1e-6f, "up")
        val down = floatArrayOf(-0.79313725f, 0.36127460f, 0.23774505f, -0.29313719f)
        assertClose(down, Preprocessor(preprocessing(2, 2, ManifestValues.RESIZE_BILINEAR)).fromGray(GREY_3X3, 3, 3), 1e-6f, "down")
    },
    test("nearest resize matches torch interpolate(mode=nearest)") {
        val expected = floatArrayOf(
            -1.00000000f, -1.00000000f, -0.49803919f, 1.00000000f, -1.00000000f, -1.00000000f, -0.49803919f, 1.00000000f,
            -0.92156863f, -0.92156863f, 0.56862748f, -0.76470590f, -0.92156863f, -0.92156863f, 0.56862748f, -0.76470590f,
            1.00000000f, 1.00000000f, -1.00000000f, 0.00392163f,
        )
        assertClose(expected, Preprocessor(preprocessing(5, 4, ManifestValues.RESIZE_NEAREST)).fromGray(GREY_3X3, 3, 3), 1e-6f, "nearest")
    },
    test("colour pixels become grey as PIL convert(L), or three NCHW planes") {
        val argb = intArrayOf(0xFFFF0000.toInt(), 0xFF00FF00.toInt(), 0xFF0000FF.toInt(), 0xFF11C863.toInt())
        assertEquals(listOf(76, 150, 29, 134), argb.map(Preprocessor::luma), "luma") // PIL's own answer
        val grey = Preprocessor(preprocessing(1, 4, ManifestValues.RESIZE_BILINEAR)).fromArgb(argb, 1, 4)
        assertClose(floatArrayOf(76f, 150f, 29f, 134f).map { (it / 255f - 0.5f) / 0.5f }.toFloatArray(), grey, 1e-6f, "grey")
        val rgb = Preprocessor(preprocessing(1, 4, ManifestValues.RESIZE_BILINEAR, channels = 3)).fromArgb(argb, 1, 4)
        assertClose(floatArrayOf(1f, -1f, -1f, (17 / 255f - 0.5f) / 0.5f), rgb.copyOfRange(0, 4), 1e-6f, "red plane")
        assertClose(floatArrayOf(-1f, -1f, 1f, (99 / 255f - 0.5f) / 0.5f), rgb.copyOfRange(8, 12), 1e-6f, "blue plane")
    },
    test("preprocessing refuses a pixel count that does not match the size") {
        assertThrows<IllegalArgumentException>("has 9 pixels, got 8") {
            Preprocessor(preprocessing(2, 2, ManifestValues.RESIZE_BILINEAR)).fromGray(ByteArray(8), 3, 3)
        }
    },
)
