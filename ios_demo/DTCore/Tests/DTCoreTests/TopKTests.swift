import DTCore
import Foundation
import XCTest

final class TopKTests: XCTestCase {
    func testOrdersByScoreAndKeepsTiesStable() {
        XCTAssertEqual(TopK.indices(of: [0.1, 0.7, 0.2, 0.7], k: 3), [1, 3, 2])
        XCTAssertEqual(TopK.indices(of: [1, 2], k: 5), [1, 0])
        XCTAssertEqual(TopK.indices(of: [1, 2], k: 0), [])
    }

    func testSoftmaxPredictions() {
        let predictions = TopK.predictions(logits: [0, 2, 1], labels: ["a", "b", "c"], k: 2)
        XCTAssertEqual(predictions.map(\.label), ["b", "c"])
        XCTAssertEqual(TopK.softmax([1000, 1000]), [0.5, 0.5])
        XCTAssertEqual(Double(TopK.softmax([3, 1, -2]).reduce(0, +)), 1, accuracy: 1e-6)
    }

    /// Top-1 of each golden logits file is its argmax, and names a label of the manifest's task.
    func testTopOneOfTheExportsGoldenLogits() throws {
        let export = try TestData.export()
        for task in export.manifest.tasks {
            let logits = try TestData.golden("logits_\(task.name).npy", in: export)
            XCTAssertEqual(logits.shape.last, task.labels.count, task.name)
            let values = logits.floats
            for row in 0..<logits.shape[0] {
                let scores = Array(values[(row * task.labels.count)..<((row + 1) * task.labels.count)])
                let best = TopK.predictions(logits: scores, labels: task.labels, k: 1)[0]
                XCTAssertEqual(scores[best.index], scores.max())
                XCTAssertEqual(best.label, task.labels[best.index])
            }
        }
    }
}
