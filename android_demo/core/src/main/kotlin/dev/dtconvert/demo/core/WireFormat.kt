package dev.dtconvert.demo.core

import java.nio.ByteBuffer
import java.nio.ByteOrder

/** A byte string that is not a valid wire message; the text names the field and the problem. */
class WireFormatException(message: String) : IllegalArgumentException(message)

/**
 * One wire-format v1 message (`docs/wire-format.md`): an int8 tensor, batch first, with the
 * quantization that made it and the model it is meant for.
 *
 * @property modelId the manifest's `model.id`, 16 hex digits
 * @property taskMask uint32: bit i requests the manifest's task i; 0 means all tasks
 * @property shape every dimension >= 1, batch first (`[B, T, D]`)
 * @property values the int8 payload, row-major, `shape.product()` bytes
 */
class WireMessage(
    val modelId: String,
    val taskMask: Long,
    val scale: Float,
    val zeroPoint: Int,
    val shape: List<Int>,
    val values: ByteArray,
) {
    override fun equals(other: Any?): Boolean =
        other is WireMessage && modelId == other.modelId && taskMask == other.taskMask &&
            scale.toRawBits() == other.scale.toRawBits() && zeroPoint == other.zeroPoint &&
            shape == other.shape && values.contentEquals(other.values)

    override fun hashCode(): Int = listOf(modelId, taskMask, scale.toRawBits(), zeroPoint, shape, values.contentHashCode()).hashCode()

    override fun toString(): String = "WireMessage(model=$modelId, mask=$taskMask, scale=$scale, zp=$zeroPoint, shape=$shape)"
}

/** Encoder and validating decoder for wire format v1, byte for byte as `dtconvert/wire.py`. */
object WireFormat {
    val MAGIC = byteArrayOf(0x44, 0x54, 0x57, 0x31) // "DTW1"
    const val VERSION = 1
    const val FIXED_HEADER_BYTES = 32
    const val DTYPE_INT8 = 1
    const val MAX_RANK = 8
    const val CONTENT_TYPE = "application/octet-stream"
    private const val UINT32_MAX = 0xFFFF_FFFFL

    /** Serialize [message]; throw [WireFormatException] for a field the format cannot carry. */
    fun encode(message: WireMessage): ByteArray {
        val rank = message.shape.size
        if (rank !in 1..MAX_RANK) throw WireFormatException("tensor rank must be 1..$MAX_RANK, got $rank")
        if (message.shape.any { it < 1 }) throw WireFormatException("shape ${message.shape} has a dimension < 1")
        val count = message.shape.fold(1L) { a, b -> a * b }
        if (count != message.values.size.toLong()) {
            throw WireFormatException("shape ${message.shape} needs $count values, got ${message.values.size}")
        }
        if (message.taskMask !in 0..UINT32_MAX) throw WireFormatException("task mask must fit in 32 bits, got ${message.taskMask}")
        if (!message.scale.isFinite() || message.scale <= 0f) throw WireFormatException("scale must be finite and positive, got ${message.scale}")
        if (message.zeroPoint !in -128..127) throw WireFormatException("zero_point must be in -128..127, got ${message.zeroPoint}")
        val headerBytes = FIXED_HEADER_BYTES + 4 * rank
        val buffer = ByteBuffer.allocate(headerBytes + message.values.size).order(ByteOrder.LITTLE_ENDIAN)
        buffer.put(MAGIC)
        buffer.putShort(VERSION.toShort())
        buffer.putShort(headerBytes.toShort())
        buffer.put(modelIdBytes(message.modelId))
        buffer.putInt(message.taskMask.toInt())
        buffer.put(DTYPE_INT8.toByte())
        buffer.put(rank.toByte())
        buffer.putShort(0) // reserved
        buffer.putFloat(message.scale)
        buffer.putInt(message.zeroPoint)
        for (dim in message.shape) buffer.putInt(dim)
        buffer.put(message.values)
        return buffer.array()
    }

    /** Parse and validate a message; throw [WireFormatException] naming the first problem. */
    fun decode(data: ByteArray, maxBytes: Int? = null): WireMessage {
        if (maxBytes != null && data.size > maxBytes) throw WireFormatException("payload is ${data.size} bytes, more than the limit of $maxBytes")
        if (data.size < FIXED_HEADER_BYTES) {
            throw WireFormatException("payload is ${data.size} bytes, shorter than the $FIXED_HEADER_BYTES-byte header")
        }
        val buffer = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN)
        val magic = ByteArray(4).also { buffer.get(it) }
        if (!magic.contentEquals(MAGIC)) throw WireFormatException("bad magic ${magic.toHex()}, expected ${MAGIC.toHex()} (DTW1)")
        val version = buffer.short.toInt() and 0xFFFF
        val headerBytes = buffer.short.toInt() and 0xFFFF
        val model = ByteArray(8).also { buffer.get(it) }
        val taskMask = buffer.int.toLong() and UINT32_MAX
        val dtype = buffer.get().toInt() and 0xFF
        val rank = buffer.get().toInt() and 0xFF
        val reserved = buffer.short.toInt()
        val scale = buffer.float
        val zeroPoint = buffer.int
        if (version != VERSION) throw WireFormatException("unsupported wire format version $version (this reader speaks $VERSION)")
        if (dtype != DTYPE_INT8) throw WireFormatException("unknown dtype code $dtype ($DTYPE_INT8 = int8)")
        if (rank !in 1..MAX_RANK) throw WireFormatException("rank must be 1..$MAX_RANK, got $rank")
        if (reserved != 0) throw WireFormatException("reserved header bytes must be zero")
        if (headerBytes != FIXED_HEADER_BYTES + 4 * rank) {
            throw WireFormatException("header_bytes is $headerBytes, expected ${FIXED_HEADER_BYTES + 4 * rank} for rank $rank")
        }
        if (!scale.isFinite() || scale <= 0f) throw WireFormatException("scale must be finite and positive, got $scale")
        if (zeroPoint !in -128..127) throw WireFormatException("zero_point must be in -128..127, got $zeroPoint")
        if (data.size < headerBytes) throw WireFormatException("payload is ${data.size} bytes, shorter than its $headerBytes-byte header")
        val shape = List(rank) { buffer.int.toLong() and UINT32_MAX }
        if (shape.any { it == 0L }) throw WireFormatException("shape $shape has a zero dimension")
        // A product past 2^63 cannot match any real body; saturate instead of overflowing.
        val count = shape.fold(1L) { a, b -> if (a > Long.MAX_VALUE / b) Long.MAX_VALUE else a * b }
        val body = (data.size - headerBytes).toLong()
        if (body != count) {
            val problem = if (body < count) "truncated" else "has trailing bytes"
            throw WireFormatException("tensor data $problem: shape $shape needs $count bytes, got $body")
        }
        return WireMessage(model.toHex(), taskMask, scale, zeroPoint, shape.map { it.toInt() }, data.copyOfRange(headerBytes, data.size))
    }

    private fun modelIdBytes(modelId: String): ByteArray {
        val ok = modelId.length == 16 && modelId.all { it in '0'..'9' || it in 'a'..'f' || it in 'A'..'F' }
        if (!ok) throw WireFormatException("model id must be 16 hex digits, got \"$modelId\"")
        return ByteArray(8) { i -> modelId.substring(2 * i, 2 * i + 2).toInt(16).toByte() }
    }

    private fun ByteArray.toHex(): String = joinToString("") { "%02x".format(it.toInt() and 0xFF) }
}
