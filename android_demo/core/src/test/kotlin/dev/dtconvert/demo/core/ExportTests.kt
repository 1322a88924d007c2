package dev.dtconvert.demo.core

import java.io.File

/** A real `dtconvert export` directory and its golden files (DT_EXPORT_DIR). */
class GoldenExport(val dir: File) {
    val export = Export.open(DirectoryExportFiles(dir))
    val manifest = export.manifest
    private val golden = manifest.golden ?: fail("${dir}/manifest.json has no golden section")

    fun npy(name: String): NpyArray {
        expect(name in golden.files) { "golden.files does not list $name (it lists ${golden.files.keys})" }
        val file = File(dir, "${golden.path}/$name")
        return NpyArray.parse(file.readBytes(), file.toString())
    }

    /** Each golden image's fp32 encoder output, one FloatArray per image. */
    fun encoderOutputs(): List<FloatArray> {
        val wire = npy(GoldenFiles.WIRE_FP32)
        val values = wire.floats()
        return List(wire.shape[0]) { i -> values.copyOfRange(i * wire.itemSize, (i + 1) * wire.itemSize) }
    }

    /** Each golden image's top-1 class index per task, from the export-time decoder's logits. */
    fun referenceTop1(): List<Map<String, Int>> {
        val perTask = manifest.tasks.associate { task ->
            val logits = npy(GoldenFiles.logits(task.name))
            val values = logits.floats()
            task.name to List(logits.shape[0]) { i -> Ranking.argmax(values.copyOfRange(i * logits.itemSize, (i + 1) * logits.itemSize)) }
        }
        return List(golden.count) { i -> perTask.mapValues { it.value[i] } }
    }
}

val exportTests = listOf(
    test("real manifest parses and names an Android encoder for each runtime") {
        val export = GoldenExport(exportDir())
        val m = export.manifest
        expect(m.tasks.isNotEmpty() && m.wire.bytesPerImage > 0) { "empty manifest fields" }
        assertEquals(Manifest.ANDROID_TARGETS, m.androidTargets, "device targets an int8 export has for Android")
        for (target in m.androidTargets) {
            val artifact = m.deviceArtifact(target)
            export.export.artifactBytes(artifact) // size and sha256 as the manifest says
        }
        assertEquals(m.golden?.count, export.export.heldoutImages().size, "bundled held-out images")
    },
    test("golden encoder outputs quantize to golden wire_int8 byte for byte") {
        val export = GoldenExport(exportDir())
        val encoder = WireEncoder(export.manifest)
        val expected = export.npy(GoldenFiles.WIRE_INT8).bytes()
        val ours = export.encoderOutputs().map(encoder::quantize)
        assertBytesEqual(expected, ours.reduce { a, b -> a + b }, "${GoldenFiles.WIRE_INT8} (scale ${export.manifest.wire.scale}, zero point ${export.manifest.wire.zeroPoint})")
    },
    test("golden uint8 images preprocess to golden input.npy") {
        val export = GoldenExport(exportDir())
        val images = export.export.heldoutImages()
        expect(images.isNotEmpty()) { "the export bundles no ${GoldenFiles.SOURCE_IMAGES} (a digits export does)" }
        val preprocessor = Preprocessor(export.manifest.deviceInput.preprocessing)
        val ours = images.map { preprocessor.fromGray(it.pixels, it.height, it.width) }.reduce { a, b -> a + b }
        assertClose(export.npy(GoldenFiles.INPUT).floats(), ours, 1e-5f, GoldenFiles.INPUT)
    },
    test("held-out reference labels come from the golden logits") {
        val export = GoldenExport(exportDir())
        val labels = export.export.heldoutReference()
        val indices = export.referenceTop1()
        assertEquals(indices.size, labels.size, "images")
        for ((i, byTask) in indices.withIndex()) {
            for (task in export.manifest.tasks) assertEquals(task.labels[byTask.getValue(task.name)], labels[i].getValue(task.name), "image $i ${task.name}")
        }
    },
)
