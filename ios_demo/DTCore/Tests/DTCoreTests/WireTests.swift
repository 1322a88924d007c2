import DTCore
import Foundation
import XCTest

/// One tests/golden/wire/*.json vector (written by tests/golden/wire/make_golden.py).
struct GoldenVector: Decodable {
    let modelID: String
    let taskMask: UInt32
    let scale: Double
    let scaleFloat32Bits: String
    let zeroPoint: Int32
    let dtype: String
    let shape: [Int]
    let values: [Int8]
    let bytes: Int

    enum CodingKeys: String, CodingKey {
        case modelID = "model_id"
        case taskMask = "task_mask"
        case scale
        case scaleFloat32Bits = "scale_float32_bits"
        case zeroPoint = "zero_point"
        case dtype
        case shape
        case values
        case bytes
    }

    /// The scale from its bit pattern, so no decimal is rounded on the way.
    var scaleFloat: Float {
        Float(bitPattern: UInt32(scaleFloat32Bits.dropFirst(2), radix: 16) ?? 0)
    }

    var message: WireMessage {
        WireMessage(modelID: modelID, taskMask: taskMask, scale: scaleFloat, zeroPoint: zeroPoint, shape: shape, values: values)
    }
}

final class WireGoldenTests: XCTestCase {
    /// Every vector: a .json with a .bin beside it (other JSON files in the folder are not vectors).
    func vectors() throws -> [(name: String, vector: GoldenVector, bytes: Data)] {
        let folder = TestData.goldenWireDirectory
        let names = try FileManager.default.contentsOfDirectory(atPath: folder.path(percentEncoded: false))
            .filter { $0.hasSuffix(".json") }
            .map { String($0.dropLast(".json".count)) }
            .filter { FileManager.default.fileExists(atPath: folder.appending(path: "\($0).bin").path(percentEncoded: false)) }
            .sorted()
        XCTAssertGreaterThanOrEqual(names.count, 2, "expected the golden wire vectors in \(folder.path(percentEncoded: false))")
        return try names.map { name -> (name: String, vector: GoldenVector, bytes: Data) in
            let vector = try JSONDecoder().decode(GoldenVector.self, from: Data(contentsOf: folder.appending(path: "\(name).json")))
            let bytes = try Data(contentsOf: folder.appending(path: "\(name).bin"))
            return (name: name, vector: vector, bytes: bytes)
        }
    }

    func testEncodeReproducesEveryGoldenMessageByteForByte() throws {
        for (name, vector, bytes) in try vectors() {
            XCTAssertEqual(Float(vector.scale), vector.scaleFloat, "\(name): decimal and bit-pattern scale disagree")
            let encoded = try Wire.encode(vector.message)
            XCTAssertEqual(encoded.count, vector.bytes, name)
            XCTAssertEqual([UInt8](encoded), [UInt8](bytes), "\(name): bytes differ from \(name).bin")
        }
    }

    func testDecodeReadsEveryGoldenMessageBack() throws {
        for (name, vector, bytes) in try vectors() {
            let message = try Wire.decode(bytes)
            XCTAssertEqual(message, vector.message, name)
            XCTAssertEqual(message.scale.bitPattern, vector.scaleFloat.bitPattern, name)
        }
    }

    // Twin: the byte comparison above notices a single changed value.
    func testOneChangedValueChangesTheBytes() throws {
        let (name, vector, bytes) = try XCTUnwrap(vectors().first)
        var changed = vector.message
        changed.values[0] = changed.values[0] == 0 ? 1 : 0
        XCTAssertNotEqual([UInt8](try Wire.encode(changed)), [UInt8](bytes), name)
    }

    func testDecodeRefusesEachMalformedField() throws {
        let (_, _, good) = try XCTUnwrap(vectors().first)
        func mutated(_ change: (inout [UInt8]) -> Void) -> Data {
            var bytes = [UInt8](good)
            change(&bytes)
            return Data(bytes)
        }
        let cases: [(String, Data)] = [
            ("shorter than the 32-byte header", good.prefix(20)),
            ("bad magic", mutated { $0[0] = 0x45 }),
            ("unsupported wire format version", mutated { $0[4] = 2 }),
            ("unknown dtype", mutated { $0[20] = 2 }),
            ("rank must be", mutated { $0[21] = 0 }),
            ("reserved header bytes", mutated { $0[22] = 1 }),
            ("header_bytes is", mutated { $0[6] = 40 }),
            ("scale must be finite and positive", mutated { $0[24...27] = [0, 0, 0xC0, 0x7F] }),  // NaN
            ("scale must be finite and positive", mutated { $0[24...27] = [0, 0, 0, 0] }),
            ("zero_point must be", mutated { $0[28...31] = [0x80, 0, 0, 0] }),  // 128
            ("zero dimension", mutated { $0[32...35] = [0, 0, 0, 0] }),
            ("truncated", good.dropLast()),
            ("trailing bytes", good + Data([0])),
        ]
        for (expected, data) in cases {
            XCTAssertThrowsError(try Wire.decode(data), expected) { error in
                XCTAssertTrue("\(error)".contains(expected), "expected '\(expected)', got '\(error)'")
            }
        }
        XCTAssertThrowsError(try Wire.decode(good, maxBytes: good.count - 1)) { error in
            XCTAssertTrue("\(error)".contains("more than the limit"), "\(error)")
        }
        XCTAssertNoThrow(try Wire.decode(good, maxBytes: good.count))
    }

    func testEncodeRefusesWhatTheFormatCannotCarry() {
        let ok = WireMessage(modelID: "0123456789abcdef", scale: 0.5, zeroPoint: 0, shape: [1, 2], values: [1, 2])
        XCTAssertNoThrow(try Wire.encode(ok))
        var badID = ok
        badID.modelID = "0123456789abcdeg"
        var shortID = ok
        shortID.modelID = "0123"
        var badCount = ok
        badCount.values = [1]
        var badRank = ok
        badRank.shape = []
        badRank.values = []
        var badZero = ok
        badZero.zeroPoint = 200
        for message in [badID, shortID, badCount, badRank, badZero] {
            XCTAssertThrowsError(try Wire.encode(message))
        }
    }
}

/// tests/golden/wire/quantize/quantize.json (tests/golden/wire/make_quantize_golden.py): float32 inputs
/// and scale as bit patterns, and the int8 values dtconvert.quantize.quantize_wire gives, with
/// ties, clamping, infinities and quotients that round differently in float64.
struct QuantizeGolden: Decodable {
    struct Case: Decodable {
        let name: String
        let scaleFloat32Bits: String
        let zeroPoint: Int
        let xFloat32Bits: [String]
        let q: [Int8]

        enum CodingKeys: String, CodingKey {
            case name
            case scaleFloat32Bits = "scale_float32_bits"
            case zeroPoint = "zero_point"
            case xFloat32Bits = "x_float32_bits"
            case q
        }
    }

    let cases: [Case]

    static func float(_ bits: String) -> Float {
        Float(bitPattern: UInt32(bits.dropFirst(2), radix: 16) ?? 0)
    }
}

final class QuantizeTests: XCTestCase {
    func testMatchesTheQuantizationGoldenCases() throws {
        let url = TestData.goldenWireDirectory.appending(path: "quantize/quantize.json")
        guard FileManager.default.fileExists(atPath: url.path(percentEncoded: false)) else {
            XCTFail("no quantize/quantize.json in \(TestData.goldenWireDirectory.path(percentEncoded: false))")
            return
        }
        let golden = try JSONDecoder().decode(QuantizeGolden.self, from: Data(contentsOf: url))
        XCTAssertFalse(golden.cases.isEmpty)
        for item in golden.cases {
            let x = item.xFloat32Bits.map(QuantizeGolden.float)
            let scale = QuantizeGolden.float(item.scaleFloat32Bits)
            XCTAssertEqual(Wire.quantize(x, scale: scale, zeroPoint: item.zeroPoint), item.q, item.name)
        }
    }

    // Twin: dividing in Double instead of Float32 fails the cases built to catch it.
    func testDividingInDoubleFailsTheFloat32Cases() throws {
        let url = TestData.goldenWireDirectory.appending(path: "quantize/quantize.json")
        guard FileManager.default.fileExists(atPath: url.path(percentEncoded: false)) else {
            XCTFail("no quantize/quantize.json in \(TestData.goldenWireDirectory.path(percentEncoded: false))")
            return
        }
        let golden = try JSONDecoder().decode(QuantizeGolden.self, from: Data(contentsOf: url))
        let item = try XCTUnwrap(golden.cases.first { $0.name == "float32_division" })
        let scale = Double(QuantizeGolden.float(item.scaleFloat32Bits))
        let inDouble = item.xFloat32Bits.map(QuantizeGolden.float).map { x -> Int8 in
            let q = (Double(x) / scale).rounded(.toNearestOrEven) + Double(item.zeroPoint)
            return Int8(Swift.min(Swift.max(q, -128), 127))
        }
        XCTAssertNotEqual(inDouble, item.q)
    }

    func testRoundsHalfToEvenThenClamps() {
        // scale 0.5 makes every x / scale exact, so the ties below are real ties.
        let x: [Float] = [0.25, 0.75, -0.25, -0.75, 1.25, 1000, -1000, .nan, .infinity]
        XCTAssertEqual(Wire.quantize(x, scale: 0.5, zeroPoint: 0), [0, 2, 0, -2, 2, 127, -128, 0, 127])
        XCTAssertEqual(Wire.quantize([0.25, 63], scale: 0.5, zeroPoint: -7), [-7, 119])
        XCTAssertEqual(Wire.dequantize([-7, 119], scale: 0.5, zeroPoint: -7), [0, 63])
    }

    /// The export's fp32 encoder output, quantized with the manifest's scale and zero point, is
    /// exactly the export's golden wire_int8.npy (dtconvert.quantize.quantize_wire, NumPy).
    func testQuantizationMatchesTheExportsGoldenInt8Wire() throws {
        let export = try TestData.export()
        let fp32 = try TestData.golden("wire_fp32.npy", in: export)
        let int8 = try TestData.golden("wire_int8.npy", in: export)
        guard case .int8(let expected) = int8.scalars else { return XCTFail("wire_int8.npy is not int8") }
        let wire = export.manifest.wire
        let got = Wire.quantize(fp32.floats, scale: Float(wire.scale), zeroPoint: wire.zeroPoint)
        XCTAssertEqual(fp32.shape, int8.shape)
        XCTAssertEqual(got, expected)

        // Twin: a scale off by 1 % gives other bytes, so the equality above means something.
        let off = Wire.quantize(fp32.floats, scale: Float(wire.scale) * 1.01, zeroPoint: wire.zeroPoint)
        XCTAssertNotEqual(off, expected)
    }
}
