import DTCore
import Foundation
import XCTest

/// Where the tests find their data. The CI workflow sets both variables; locally
/// `DT_GOLDEN_DIR` defaults to this repository's tests/golden/wire and tests that need an
/// export skip (with the reason) until `DT_EXPORT_DIR` names one.
enum TestData {
    /// ios_demo/DTCore/Tests/DTCoreTests/TestSupport.swift → the repository root.
    static let repositoryRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()
        .deletingLastPathComponent()
        .deletingLastPathComponent()
        .deletingLastPathComponent()
        .deletingLastPathComponent()

    /// The wire-format golden vectors shared by the Python, Kotlin and Swift implementations.
    static var goldenWireDirectory: URL {
        if let path = ProcessInfo.processInfo.environment["DT_GOLDEN_DIR"], !path.isEmpty {
            return URL(fileURLWithPath: path, isDirectory: true)
        }
        return repositoryRoot.appending(path: "tests/golden/wire", directoryHint: .isDirectory)
    }

    /// A `dtconvert export` directory (with a Core ML device encoder and golden files).
    static func export() throws -> ExportDirectory {
        guard let path = ProcessInfo.processInfo.environment["DT_EXPORT_DIR"], !path.isEmpty else {
            throw XCTSkip("DT_EXPORT_DIR is not set: point it at a 'dtconvert export … --target coreml' directory to run this test")
        }
        return try ExportDirectory(url: URL(fileURLWithPath: path, isDirectory: true))
    }

    /// A golden array of the export, by its documented name (docs/verify.md, "Golden files").
    static func golden(_ name: String, in export: ExportDirectory) throws -> NPYArray {
        guard let url = export.goldenFiles()[name] else {
            throw XCTSkip("the export's manifest lists no golden \(name)")
        }
        return try NPYArray(contentsOf: url)
    }
}

/// Cosine similarity of two equally long vectors.
func cosine(_ a: [Float], _ b: [Float]) -> Double {
    var dot = 0.0, normA = 0.0, normB = 0.0
    for (x, y) in zip(a, b) {
        dot += Double(x) * Double(y)
        normA += Double(x) * Double(x)
        normB += Double(y) * Double(y)
    }
    return dot / (normA.squareRoot() * normB.squareRoot())
}

func maxAbsDifference(_ a: [Float], _ b: [Float]) -> Float {
    zip(a, b).map { abs($0 - $1) }.max() ?? 0
}
