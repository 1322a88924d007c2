package dev.dtconvert.demo.core

private fun serverUrl(): String = env("DT_SERVER_URL", "a running `dtconvert serve` of DT_EXPORT_DIR (http://127.0.0.1:PORT)")

val roundTripTests = listOf(
    test("server is up and serves the export's model") {
        val export = GoldenExport(exportDir())
        val health = DecodeClient(serverUrl()).health()
        assertEquals("ok", health.status, "status")
        expect(health.serves(export.manifest.modelId)) { "the server serves ${health.modelIds}, not ${export.manifest.modelId}" }
    },
    test("golden wire batch decodes to the golden top-1 of every task") {
        val export = GoldenExport(exportDir())
        val manifest = export.manifest
        val message = WireEncoder(manifest).encode(export.encoderOutputs())
        val topK = 3
        val result = DecodeClient(serverUrl()).decode(message, topK = topK)
        val reference = export.referenceTop1()
        assertEquals(manifest.modelId, result.modelId, "model id")
        assertEquals(manifest.tasks.map { it.name }, result.tasks, "tasks answered")
        assertEquals(reference.size, result.predictions.size, "one prediction per image")
        for ((i, image) in result.predictions.withIndex()) {
            for (task in manifest.tasks) {
                val ranked = image[task.name] ?: fail("image $i: no predictions for task ${task.name}")
                assertEquals(minOf(topK, task.labels.size), ranked.size, "image $i ${task.name}: entries (top_k capped at the class count)")
                assertEquals(reference[i].getValue(task.name), ranked[0].index, "image $i ${task.name}: top-1 index")
                for (p in ranked) assertEquals(task.labels[p.index], p.label, "image $i ${task.name}: label of index ${p.index}")
                expect(ranked.zipWithNext().all { (a, b) -> a.score >= b.score }) { "image $i ${task.name}: scores not descending: $ranked" }
                expect(ranked.all { it.score in 0f..1f }) { "image $i ${task.name}: a score outside 0..1: $ranked" }
            }
        }
        expect(result.timing != null && result.timing.batchImages >= 1) { "timing missing or empty: ${result.timing}" }
    },
    test("server scores are the softmax of the golden logits") {
        val export = GoldenExport(exportDir())
        val message = WireEncoder(export.manifest).encode(export.encoderOutputs().take(1))
        val result = DecodeClient(serverUrl()).decode(message, topK = 1)
        for (task in export.manifest.tasks) {
            val logits = export.npy(GoldenFiles.logits(task.name))
            val probabilities = Ranking.softmax(logits.floats().copyOfRange(0, logits.itemSize))
            val top = result.predictions.single().getValue(task.name).single()
            assertClose(floatArrayOf(probabilities[top.index]), floatArrayOf(top.score), 1e-4f, "${task.name} top-1 probability")
        }
    },
    test("task mask asks for one task only") {
        val export = GoldenExport(exportDir())
        val last = export.manifest.tasks.last().name
        val message = WireEncoder(export.manifest).encode(export.encoderOutputs().take(2), export.manifest.taskMask(listOf(last)))
        val result = DecodeClient(serverUrl()).decode(message)
        assertEquals(listOf(last), result.tasks, "tasks answered")
        assertEquals(listOf(setOf(last), setOf(last)), result.predictions.map { it.keys }, "prediction keys")
    },
    test("a message for another model gets 422 and a sentence naming the model id") {
        val export = GoldenExport(exportDir())
        val wrong = WireEncoder(export.manifest).messageOf(listOf(ByteArray(export.manifest.wire.bytesPerImage)))
        val other = WireMessage("0000000000000000", 0, wrong.scale, wrong.zeroPoint, wrong.shape, wrong.values)
        val e = try {
            DecodeClient(serverUrl()).decode(WireFormat.encode(other))
            fail("the server accepted a message for model 0000000000000000")
        } catch (e: ServerException) {
            e
        }
        assertEquals(422, e.status, "status")
        expect("0000000000000000" in (e.message ?: "") || "model" in (e.message ?: "")) { "message does not name the model id: ${e.message}" }
    },
    test("a malformed message gets 400 and a wrong content type 415") {
        val export = GoldenExport(exportDir())
        val good = WireEncoder(export.manifest).encode(export.encoderOutputs().take(1))
        val client = DecodeClient(serverUrl())
        val truncated = try {
            client.decode(good.copyOf(good.size - 1))
            fail("the server accepted a truncated message")
        } catch (e: ServerException) {
            e
        }
        assertEquals(400, truncated.status, "status for a truncated message")
        expect("truncated" in (truncated.message ?: "")) { "400 message does not say truncated: ${truncated.message}" }
        val (status, _) = client.exchange("POST", ServerApi.DECODE_PATH, good, "text/plain")
        assertEquals(415, status, "status for text/plain")
    },
)
