package dev.dtconvert.demo.core

import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * A numpy `.npy` array (format versions 1–3, C order, little-endian): what `dtconvert export`
 * writes into its `golden/` folder, read here for the bundled held-out images and the tests.
 */
class NpyArray(val dtype: String, val shape: List<Int>, private val data: ByteArray) {
    val size: Int get() = shape.fold(1) { a, b -> a * b }

    fun floats(): FloatArray {
        expect(FLOAT32)
        val buffer = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer()
        return FloatArray(size).also { buffer.get(it) }
    }

    /** int8 or uint8 elements as raw bytes (uint8 values above 127 read back negative). */
    fun bytes(): ByteArray {
        if (dtype != INT8 && dtype != UINT8) throw NpyException("array is $dtype, expected $INT8 or $UINT8")
        return data.copyOf()
    }

    fun longs(): LongArray {
        expect(INT64)
        val buffer = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN).asLongBuffer()
        return LongArray(size).also { buffer.get(it) }
    }

    /** Element count of one item along the first axis (one image of a batch). */
    val itemSize: Int get() = shape.drop(1).fold(1) { a, b -> a * b }

    private fun expect(wanted: String) {
        if (dtype != wanted) throw NpyException("array is $dtype, expected $wanted")
    }

    companion object {
        const val FLOAT32 = "<f4"
        const val INT8 = "|i1"
        const val UINT8 = "|u1"
        const val INT64 = "<i8"
        private val ITEM_BYTES = mapOf(FLOAT32 to 4, INT8 to 1, UINT8 to 1, INT64 to 8)
        private val MAGIC = byteArrayOf(0x93.toByte(), 'N'.code.toByte(), 'U'.code.toByte(), 'M'.code.toByte(), 'P'.code.toByte(), 'Y'.code.toByte())
        private val DESCR = Regex("'descr'\\s*:\\s*'([^']+)'")
        private val FORTRAN = Regex("'fortran_order'\\s*:\\s*(True|False)")
        private val SHAPE = Regex("'shape'\\s*:\\s*\\(([^)]*)\\)")

        /** Parse a whole `.npy` file; throw [NpyException] naming what is wrong. */
        fun parse(bytes: ByteArray, source: String = "npy"): NpyArray {
            fun fail(problem: String): Nothing = throw NpyException("$source: $problem")
            if (bytes.size < 10 || !bytes.copyOfRange(0, 6).contentEquals(MAGIC)) fail("not a .npy file (bad magic)")
            val major = bytes[6].toInt()
            val buffer = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN)
            val (headerLength, headerStart) = when (major) {
                1 -> (buffer.getShort(8).toInt() and 0xFFFF) to 10
                2, 3 -> {
                    if (bytes.size < 12) fail("truncated header")
                    buffer.getInt(8) to 12
                }
                else -> fail("unsupported .npy version $major")
            }
            if (headerLength < 0 || headerStart + headerLength > bytes.size) fail("truncated header")
            val header = String(bytes, headerStart, headerLength, Charsets.ISO_8859_1)
            val dtype = DESCR.find(header)?.groupValues?.get(1) ?: fail("header has no 'descr'")
            val itemBytes = ITEM_BYTES[dtype] ?: fail("unsupported dtype $dtype (supported: ${ITEM_BYTES.keys.joinToString()})")
            if (FORTRAN.find(header)?.groupValues?.get(1) != "False") fail("only C-order arrays are supported")
            val dims = SHAPE.find(header)?.groupValues?.get(1) ?: fail("header has no 'shape'")
            val shape = dims.split(',').map { it.trim() }.filter { it.isNotEmpty() }.map { it.toIntOrNull() ?: fail("bad shape ($dims)") }
            val count = shape.fold(1L) { a, b -> a * b }
            val dataStart = headerStart + headerLength
            if (bytes.size - dataStart.toLong() != count * itemBytes) {
                fail("shape $shape of $dtype needs ${count * itemBytes} data bytes, file has ${bytes.size - dataStart}")
            }
            return NpyArray(dtype, shape, bytes.copyOfRange(dataStart, bytes.size))
        }
    }
}

class NpyException(message: String) : IllegalArgumentException(message)
