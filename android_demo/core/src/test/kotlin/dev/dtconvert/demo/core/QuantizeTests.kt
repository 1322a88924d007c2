package dev.dtconvert.demo.core

import java.io.File

private fun floatBits(field: JsonField): Float = Float.fromBits(java.lang.Long.decode(field.string()).toInt())

val quantizeTests = listOf(
    test("quantize golden cases match dtconvert.quantize.quantize_wire exactly") {
        val file = File(goldenWireDir(), "quantize/quantize.json")
        val cases = JsonField.parse(file.readText(), file.name)["cases"].items()
        expect(cases.size >= 6) { "${file.name}: expected at least 6 cases, found ${cases.size}" }
        for (case in cases) {
            val name = case["name"].string()
            val scale = floatBits(case["scale_float32_bits"])
            val x = case["x_float32_bits"].items().map(::floatBits).toFloatArray()
            val expected = case["q"].ints().map { it.toByte() }.toByteArray()
            assertBytesEqual(expected, WireQuantizer.quantize(x, scale, case["zero_point"].int()), "quantize.json case $name")
        }
    },
    test("quantize rounds half to even and clamps") {
        val q = WireQuantizer.quantize(floatArrayOf(0.25f, 0.75f, -0.25f, -0.75f, 100f, -100f), 0.5f, 0)
        assertEquals(listOf<Byte>(0, 2, 0, -2, 127, -128), q.toList(), "q")
        assertEquals(listOf<Byte>(127, -128), WireQuantizer.quantize(floatArrayOf(Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY), 0.1f, 0).toList(), "infinities")
        assertThrows<IllegalArgumentException>("NaN") { WireQuantizer.quantize(floatArrayOf(Float.NaN), 0.1f, 0) }
    },
    test("quantize divides in float32, not float64") {
        // 0.91887254f (bits 0x3f6b3b3b) / 0.028273f is 32.5 in float32 (a tie, to even: 32)
        // but 32.5000019 in float64 (33): quantize_wire gives 32 + zero point.
        val x = Float.fromBits(0x3f6b3b3b)
        val scale = 0.028273f
        expect(Math.rint((x.toDouble() / scale.toDouble())) != Math.rint((x / scale).toDouble())) { "the example is no longer a float32/float64 split" }
        assertEquals((32 + 4).toByte(), WireQuantizer.quantizeOne(x, scale, 4), "float32 quotient")
    },
    test("dequantize inverts quantize to within half a step") {
        val x = FloatArray(101) { (it - 50) * 0.037f }
        val back = WireQuantizer.dequantize(WireQuantizer.quantize(x, 0.028273f, 4), 0.028273f, 4)
        assertClose(x, back, 0.028273f / 2 + 1e-6f, "round trip")
    },
)
