import DTCore
import Foundation
import XCTest

#if canImport(FoundationNetworking)
// Linux: URLSession and URLRequest live in FoundationNetworking.
import FoundationNetworking
#endif

/// The app's path against the real cloud half: the export's golden encoder outputs
/// (golden/wire_fp32.npy) quantized with `Wire.quantize`, framed with `Wire.encode` and posted
/// with `DecoderClient` to a running `dtconvert serve` of the same export, whose answers must
/// carry the golden decoder's top-1 (golden/logits_<task>.npy). The same checks as the Kotlin
/// core's `roundtrip` suite. tests/test_ios.py starts the server on loopback and sets
/// `DT_SERVER_URL`; without it these tests skip and say so.
final class RoundTripTests: XCTestCase {
    func serverURL() throws -> URL {
        guard let text = ProcessInfo.processInfo.environment["DT_SERVER_URL"], !text.isEmpty,
            let url = URL(string: text)
        else {
            throw XCTSkip("DT_SERVER_URL is not set: point it at a running 'dtconvert serve' of DT_EXPORT_DIR to run this test")
        }
        return url
    }

    /// The golden images' fp32 encoder outputs as one wire message of `count` images (all by default).
    func goldenMessage(_ export: ExportDirectory, count: Int? = nil, taskMask: UInt32 = 0) throws -> Data {
        let fp32 = try TestData.golden("wire_fp32.npy", in: export)
        let spec = export.manifest.wire
        let images = min(count ?? fp32.shape[0], fp32.shape[0])
        let perImage = spec.shape.dropFirst().reduce(1, *)
        let values = Wire.quantize(Array(fp32.floats.prefix(images * perImage)), scale: Float(spec.scale), zeroPoint: spec.zeroPoint)
        let message = WireMessage(
            modelID: export.manifest.model.id, taskMask: taskMask, scale: Float(spec.scale),
            zeroPoint: Int32(spec.zeroPoint), shape: [images] + spec.shape.dropFirst(), values: values)
        return try Wire.encode(message)
    }

    /// Each golden image's logits for one task, one row per image.
    func goldenLogits(_ export: ExportDirectory, task: Manifest.TaskSpec) throws -> [[Float]] {
        let logits = try TestData.golden("logits_\(task.name).npy", in: export)
        let classes = task.labels.count
        XCTAssertEqual(logits.shape.last, classes, task.name)
        let values = logits.floats
        return (0..<logits.shape[0]).map { Array(values[($0 * classes)..<(($0 + 1) * classes)]) }
    }

    func testServerIsUpAndServesTheExportsModel() async throws {
        let export = try TestData.export()
        let health = try await DecoderClient(baseURL: serverURL()).health()
        XCTAssertEqual(health.status, "ok")
        XCTAssertTrue(health.serves(export.manifest.model.id), "the server serves \(health.modelIDs)")
    }

    func testGoldenWireBatchDecodesToTheGoldenTopOneOfEveryTask() async throws {
        let export = try TestData.export()
        let manifest = export.manifest
        let message = try goldenMessage(export)
        let topK = 3
        let result = try await DecoderClient(baseURL: serverURL()).decode(message, topK: topK)
        XCTAssertEqual(result.payloadBytes, message.count)
        XCTAssertEqual(result.response.modelID, manifest.model.id)
        XCTAssertEqual(result.response.tasks, manifest.taskNames)
        XCTAssertEqual(result.response.predictions.count, manifest.golden?.count, "one prediction per golden image")
        for task in manifest.tasks {
            let logits = try goldenLogits(export, task: task)
            XCTAssertEqual(logits.count, result.response.predictions.count, task.name)
            for (image, rows) in zip(result.response.predictions, logits).enumerated() {
                let (answer, scores) = rows
                let ranked = try XCTUnwrap(answer[task.name], "image \(image): no predictions for \(task.name)")
                XCTAssertEqual(ranked.count, min(topK, task.labels.count), "image \(image) \(task.name): top_k capped at the classes")
                XCTAssertEqual(ranked.first?.index, TopK.indices(of: scores, k: 1).first, "image \(image) \(task.name): top-1")
                for prediction in ranked {
                    XCTAssertEqual(prediction.label, task.labels[prediction.index], "image \(image) \(task.name)")
                    XCTAssertTrue((0...1).contains(prediction.score), "image \(image) \(task.name): score \(prediction.score)")
                }
                XCTAssertEqual(ranked.map(\.score), ranked.map(\.score).sorted(by: >), "image \(image) \(task.name): scores descend")
            }
        }
        XCTAssertGreaterThanOrEqual(result.response.timing?.batchImages ?? 0, 1)
        XCTAssertGreaterThan(result.roundTrip.milliseconds, 0)
    }

    func testServerScoresAreTheSoftmaxOfTheGoldenLogits() async throws {
        let export = try TestData.export()
        let result = try await DecoderClient(baseURL: serverURL()).decode(goldenMessage(export, count: 1), topK: 1)
        let answer = try XCTUnwrap(result.response.predictions.first)
        for task in export.manifest.tasks {
            let probabilities = TopK.softmax(try goldenLogits(export, task: task)[0])
            let top = try XCTUnwrap(answer[task.name]?.first, task.name)
            XCTAssertEqual(top.score, Double(probabilities[top.index]), accuracy: 1e-4, "\(task.name) top-1 probability")
        }
    }

    func testTaskMaskAsksForOneTaskOnly() async throws {
        let export = try TestData.export()
        let last = try XCTUnwrap(export.manifest.taskNames.last)
        let mask = UInt32(1) << UInt32(export.manifest.taskNames.count - 1)
        let result = try await DecoderClient(baseURL: serverURL()).decode(goldenMessage(export, count: 2, taskMask: mask))
        XCTAssertEqual(result.response.tasks, [last])
        XCTAssertEqual(result.response.predictions.map { Set($0.keys) }, [[last], [last]])
    }

    // Twin: the server refuses what is not for its model, so the answers above mean something.
    func testAMessageForAnotherModelGets422NamingIt() async throws {
        let export = try TestData.export()
        var message = try Wire.decode(goldenMessage(export, count: 1))
        message.modelID = "0000000000000000"
        do {
            _ = try await DecoderClient(baseURL: serverURL()).decode(Wire.encode(message))
            XCTFail("the server accepted a message for model 0000000000000000")
        } catch DecoderClientError.server(let status, let text) {
            XCTAssertEqual(status, 422)
            XCTAssertTrue(text.contains("0000000000000000"), text)
        }
    }

    func testAMalformedMessageGets400AndAnotherContentType415() async throws {
        let export = try TestData.export()
        let url = try serverURL()
        let good = try goldenMessage(export, count: 1)
        do {
            _ = try await DecoderClient(baseURL: url).decode(good.dropLast())
            XCTFail("the server accepted a truncated message")
        } catch DecoderClientError.server(let status, let text) {
            XCTAssertEqual(status, 400)
            XCTAssertTrue(text.contains("truncated"), text)
        }
        // The content type DecoderClient sends is the one the server insists on.
        var request = URLRequest(url: url.appending(path: "v1/decode"))
        request.httpMethod = "POST"
        request.setValue("text/plain", forHTTPHeaderField: "Content-Type")
        let (_, response) = try await URLSession.shared.upload(for: request, from: good)
        XCTAssertEqual((response as? HTTPURLResponse)?.statusCode, 415)
    }
}
