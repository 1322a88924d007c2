#if canImport(CoreML)
import CoreML
import DTCore
import Foundation
import XCTest

/// The exported .mlpackage run by Core ML itself on the golden inputs, against the fp32
/// encoder's golden wire tensor, with the bounds `dtconvert verify` uses for Core ML
/// (dtconvert/tolerances.py): int8 wire cosine ≥ 0.99; fp32 max abs ≤ 1e-4 on the CPU and
/// ≤ 1e-2 on all compute units (fp16 hardware).
final class CoreMLEncoderTests: XCTestCase {
    var cacheDirectory: URL!

    override func setUpWithError() throws {
        cacheDirectory = FileManager.default.temporaryDirectory.appending(path: "dtcore-compiled-\(UUID().uuidString)")
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: cacheDirectory)
    }

    func goldenWires(_ encoder: CoreMLEncoder, export: ExportDirectory) async throws -> (got: [Float], want: [Float]) {
        let inputs = try TestData.golden("input.npy", in: export)
        let want = try TestData.golden("wire_fp32.npy", in: export).floats
        let perImage = encoder.inputShape.reduce(1, *)
        let values = inputs.floats
        var got: [Float] = []
        for row in 0..<inputs.shape[0] {
            got += try await encoder.encode(Array(values[(row * perImage)..<((row + 1) * perImage)]))
        }
        XCTAssertEqual(got.count, want.count)
        return (got, want)
    }

    func check(_ computeUnits: MLComputeUnits, fp32MaxAbs: Float) async throws {
        let export = try TestData.export()
        let encoder = try await CoreMLEncoder.load(from: export, computeUnits: computeUnits, cacheDirectory: cacheDirectory)
        let artifact = try XCTUnwrap(export.manifest.artifact(part: "device", target: "coreml"))
        XCTAssertEqual(encoder.inputName, artifact.inputs?.first?.name)
        XCTAssertEqual(encoder.outputName, artifact.outputs?.first?.name)
        let (got, want) = try await goldenWires(encoder, export: export)
        if export.manifest.precision == "fp32" {
            XCTAssertLessThanOrEqual(maxAbsDifference(got, want), fp32MaxAbs)
        } else {
            XCTAssertGreaterThanOrEqual(cosine(got, want), 0.99, "int8 wire cosine against the fp32 encoder")
        }
    }

    func testCPUOnlyMatchesTheGoldenWire() async throws {
        try await check(.cpuOnly, fp32MaxAbs: 1e-4)
    }

    func testAllComputeUnitsMatchTheGoldenWire() async throws {
        try await check(.all, fp32MaxAbs: 1e-2)
    }

    // Twin: the same comparison against another image's golden wire fails the bound.
    func testTheBoundRejectsTheWrongImagesWire() async throws {
        let export = try TestData.export()
        let encoder = try await CoreMLEncoder.load(from: export, computeUnits: .cpuOnly, cacheDirectory: cacheDirectory)
        let (got, want) = try await goldenWires(encoder, export: export)
        let perImage = encoder.outputShape.reduce(1, *)
        let shifted = Array(want[perImage...] + want[..<perImage])
        XCTAssertLessThan(cosine(got, shifted), 0.99)
    }

    func testCompiledModelIsCachedAndInputSizeChecked() async throws {
        let export = try TestData.export()
        let first = try await CoreMLEncoder.load(from: export, computeUnits: .cpuOnly, cacheDirectory: cacheDirectory)
        let compiled = try FileManager.default.contentsOfDirectory(atPath: cacheDirectory.path(percentEncoded: false))
        XCTAssertEqual(compiled.count, 1)
        _ = try await CoreMLEncoder.load(from: export, computeUnits: .cpuOnly, cacheDirectory: cacheDirectory)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: cacheDirectory.path(percentEncoded: false)), compiled)
        do {
            _ = try await first.encode([0, 1, 2])
            XCTFail("a wrongly sized input was accepted")
        } catch let error as CoreMLEncoderError {
            XCTAssertEqual(error, .inputSize(expected: first.inputShape.reduce(1, *), got: 3))
        }
    }
}
#else
import XCTest

/// Where Core ML does not exist (Linux), CoreMLEncoder.swift and the tests above compile to
/// nothing; this one skip says so in the test report instead of leaving them silently out.
final class CoreMLEncoderTests: XCTestCase {
    func testCoreMLEncoderNeedsCoreML() throws {
        throw XCTSkip("needs Core ML (CoreMLEncoder runs the exported .mlpackage), which exists on Apple platforms only")
    }
}
#endif
