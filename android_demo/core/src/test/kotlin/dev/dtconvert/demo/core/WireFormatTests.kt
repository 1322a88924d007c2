package dev.dtconvert.demo.core

import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.util.Random

/** The golden vectors of tests/golden/wire: a JSON description and the exact bytes (.bin). */
private class WireVector(val name: String, val spec: JsonField, val bytes: ByteArray) {
    val scale: Float get() = Float.fromBits(java.lang.Long.decode(spec["scale_float32_bits"].string()).toInt())

    fun message() = WireMessage(
        modelId = spec["model_id"].string(),
        taskMask = spec["task_mask"].long(),
        scale = scale,
        zeroPoint = spec["zero_point"].int(),
        shape = spec["shape"].ints().toList(),
        values = spec["values"].ints().map { it.toByte() }.toByteArray(),
    )
}

private fun wireVectors(): List<WireVector> {
    val dir = goldenWireDir()
    val vectors = dir.listFiles { f: File -> f.name.endsWith(".json") && File(dir, f.nameWithoutExtension + ".bin").isFile }
        ?.sortedBy { it.name }
        ?.map { WireVector(it.nameWithoutExtension, JsonField.parse(it.readText(), it.name), File(dir, it.nameWithoutExtension + ".bin").readBytes()) }
        ?: fail("$dir is not a directory")
    expect(vectors.size >= 2) { "$dir: expected at least 2 golden wire vectors (*.json + *.bin), found ${vectors.size}" }
    return vectors
}

private fun digitsB1(): ByteArray = wireVectors().first { it.name == "digits_b1" }.bytes

private fun patched(data: ByteArray, offset: Int, write: ByteBuffer.() -> Unit): ByteArray {
    val copy = data.copyOf()
    ByteBuffer.wrap(copy).order(ByteOrder.LITTLE_ENDIAN).apply { position(offset) }.write()
    return copy
}

val wireFormatTests = listOf(
    test("wire golden vectors encode byte for byte") {
        for (vector in wireVectors()) {
            expect(vector.scale.toDouble() == vector.spec["scale"].double()) { "${vector.name}: scale bits and decimal disagree" }
            assertEquals(vector.spec["bytes"].int(), vector.bytes.size, "${vector.name}.bin length")
            assertBytesEqual(vector.bytes, WireFormat.encode(vector.message()), "${vector.name}.bin")
        }
    },
    test("wire golden vectors decode to their fields") {
        for (vector in wireVectors()) {
            val decoded = WireFormat.decode(vector.bytes)
            assertEquals(vector.message(), decoded, vector.name)
            assertEquals(vector.spec["model_id"].string(), decoded.modelId, "${vector.name} model id")
            assertEquals(vector.scale.toRawBits(), decoded.scale.toRawBits(), "${vector.name} scale bits")
        }
    },
    test("wire layout by hand matches the spec's offsets") {
        val data = wireVectors().first { it.name == "batch2_extremes" }.bytes
        val le = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN)
        assertEquals("DTW1", String(data, 0, 4, Charsets.US_ASCII), "magic")
        assertEquals(1, le.getShort(4).toInt(), "version")
        assertEquals(32 + 4 * 3, le.getShort(6).toInt(), "header_bytes")
        assertEquals("ffeeddccbbaa9988", hex(data.copyOfRange(8, 16)), "model id")
        assertEquals(2, le.getInt(16), "task mask")
        assertEquals(listOf<Byte>(1, 3, 0, 0), data.copyOfRange(20, 24).toList(), "dtype, rank, reserved")
        assertEquals(1.5e-3f, le.getFloat(24), "scale")
        assertEquals(-7, le.getInt(28), "zero point")
        assertEquals(listOf(2, 1, 4), List(3) { le.getInt(32 + 4 * it) }, "shape")
        assertEquals(listOf<Byte>(-128, 127, 0, -1, 1, -127, 126, 5), data.copyOfRange(44, 52).toList(), "payload")
    },
    test("wire decoder names each malformed field") {
        val base = digitsB1()
        val cases = listOf(
            ByteArray(0) to "shorter than the 32-byte header",
            base.copyOf(20) to "shorter than the 32-byte header",
            ("XXXX".toByteArray() + base.copyOfRange(4, base.size)) to "bad magic",
            patched(base, 4) { putShort(2) } to "unsupported wire format version 2",
            patched(base, 6) { putShort(40) } to "header_bytes is 40",
            patched(base, 20) { put(9) } to "unknown dtype code 9",
            patched(base, 21) { put(0) } to "rank must be 1..8",
            patched(base, 21) { put(9) } to "rank must be 1..8",
            patched(base, 22) { putShort(1) } to "reserved header bytes",
            patched(base, 24) { putFloat(Float.NaN) } to "scale must be finite and positive",
            patched(base, 24) { putFloat(Float.POSITIVE_INFINITY) } to "scale must be finite and positive",
            patched(base, 24) { putFloat(-1f) } to "scale must be finite and positive",
            patched(base, 24) { putFloat(0f) } to "scale must be finite and positive",
            patched(base, 28) { putInt(300) } to "zero_point must be in -128..127",
            patched(base, 36) { putInt(0) } to "zero dimension",
            base.copyOf(base.size - 1) to "truncated",
            (base + byteArrayOf(0)) to "trailing bytes",
            base.copyOf(40) to "shorter than its 44-byte header",
        )
        for ((data, fragment) in cases) assertThrows<WireFormatException>(fragment) { WireFormat.decode(data) }
    },
    test("wire decoder refuses an oversized payload before parsing") {
        val base = digitsB1()
        assertThrows<WireFormatException>("more than the limit of 100") { WireFormat.decode(base, maxBytes = 100) }
        assertEquals(listOf(1, 8, 8), WireFormat.decode(base, maxBytes = base.size).shape, "shape within the limit")
    },
    test("wire encoder refuses what the format cannot carry") {
        val ok = WireMessage("0123456789abcdef", 0, 0.1f, 0, listOf(1, 2), ByteArray(2))
        WireFormat.encode(ok)
        assertThrows<WireFormatException>("16 hex digits") { WireFormat.encode(WireMessage("not-hex", 0, 0.1f, 0, listOf(1, 2), ByteArray(2))) }
        assertThrows<WireFormatException>("needs 2 values, got 3") { WireFormat.encode(WireMessage("0123456789abcdef", 0, 0.1f, 0, listOf(1, 2), ByteArray(3))) }
        assertThrows<WireFormatException>("rank must be 1..8") { WireFormat.encode(WireMessage("0123456789abcdef", 0, 0.1f, 0, List(9) { 1 }, ByteArray(1))) }
        assertThrows<WireFormatException>("task mask") { WireFormat.encode(WireMessage("0123456789abcdef", 1L shl 32, 0.1f, 0, listOf(1), ByteArray(1))) }
        assertThrows<WireFormatException>("zero_point") { WireFormat.encode(WireMessage("0123456789abcdef", 0, 0.1f, 128, listOf(1), ByteArray(1))) }
        assertThrows<WireFormatException>("scale") { WireFormat.encode(WireMessage("0123456789abcdef", 0, 0f, 0, listOf(1), ByteArray(1))) }
    },
    test("wire round trip of random messages (200 seeds)") {
        val random = Random(20261121)
        repeat(200) {
            val shape = List(1 + random.nextInt(4)) { 1 + random.nextInt(5) }
            val values = ByteArray(shape.fold(1) { a, b -> a * b }).also(random::nextBytes)
            val scale = Float.fromBits(0x358637bd + random.nextInt(0x44800000 - 0x358637bd)) // 1e-6 .. 1024
            val message = WireMessage("00112233aabbccdd", random.nextInt().toLong() and 0xFFFF_FFFFL, scale, random.nextInt(256) - 128, shape, values)
            assertEquals(message, WireFormat.decode(WireFormat.encode(message)), "round trip $it")
        }
    },
    test("wire decoder survives arbitrary bytes and single-byte corruption") {
        val random = Random(7)
        repeat(500) {
            val data = ByteArray(random.nextInt(200)).also(random::nextBytes)
            try {
                WireFormat.decode(data)
            } catch (e: WireFormatException) {
                // the only acceptable failure
            }
        }
        val base = digitsB1()
        for (position in base.indices) {
            val corrupted = base.copyOf().also { it[position] = (it[position].toInt() xor (1 + random.nextInt(255))).toByte() }
            val decoded = try {
                WireFormat.decode(corrupted)
            } catch (e: WireFormatException) {
                continue
            }
            assertEquals(64, decoded.values.size, "a flip at $position that still parses")
        }
    },
)
