import DTCore
import Foundation
import XCTest

final class ManifestTests: XCTestCase {
    /// A small manifest of the real shape (extra keys included: Codable must ignore them).
    static let minimal = #"""
        {
          "schema_version": 1,
          "model": {"name": "tiny", "id": "0123456789abcdef", "created": "2026-11-21T00:00:00+00:00",
                    "checkpoint": {"file": "ckpt.pt", "sha256": "00"}, "heldout_metrics": {"digit": 0.5}},
          "precision": "int8",
          "device_input": {"name": "image", "shape": [1, 1, 4, 4], "dtype": "float32", "layout": "NCHW",
                           "preprocessing": {"size": [4, 4], "channels": 1, "resize": "bilinear",
                                             "scale": 0.00392156862745098, "mean": [0.5], "std": [0.25]}},
          "wire": {"name": "wire", "shape": [1, 2, 2], "dtype": "int8", "scale": 0.03, "zero_point": -3,
                   "bytes_per_image": 4, "formula": "q = ...", "calibration": {"source": "test", "images": 1}},
          "communication": {"wire_int8_bytes": 4, "device_input_uint8_bytes": 16, "unpooled_fp32_token_bytes": 64},
          "tasks": [{"name": "digit", "labels": ["0", "1"]}],
          "artifacts": [
            {"path": "tiny_encoder_coreml_int8.mlpackage", "kind": "directory", "part": "device", "target": "coreml",
             "precision": "int8", "bytes": 10, "sha256": "ab", "files": {"Manifest.json": "cd"},
             "inputs": [{"name": "image", "shape": [1, 1, 4, 4], "dtype": "float32"}],
             "outputs": [{"name": "wire", "shape": [1, 2, 2], "dtype": "float32"}], "details": {}}
          ],
          "data": {"source": {}, "recipe": {}, "heldout": []},
          "tools": {},
          "verification": null
        }
        """#

    func testDecodesTheKeysTheAppReads() throws {
        let manifest = try Manifest.decode(from: Data(Self.minimal.utf8))
        XCTAssertEqual(manifest.model.id, "0123456789abcdef")
        XCTAssertEqual(manifest.model.heldoutMetrics?["digit"], 0.5)
        XCTAssertEqual(manifest.deviceInput.preprocessing.std, [0.25])
        XCTAssertEqual(manifest.wire.zeroPoint, -3)
        XCTAssertEqual(manifest.wire.bytesPerImage, 4)
        XCTAssertEqual(manifest.taskNames, ["digit"])
        let encoder = try XCTUnwrap(manifest.artifact(part: "device", target: "coreml"))
        XCTAssertEqual(encoder.inputs?.first?.name, "image")
        XCTAssertEqual(encoder.outputs?.first?.shape, [1, 2, 2])
        XCTAssertNil(manifest.artifact(part: "device", target: "tflite"))
        XCTAssertNil(manifest.golden)
    }

    /// What newer exports add (docs/manifest.md): `quantization` and `delegation` on an artifact,
    /// and precision `int8-static` beside `int8` and `fp32`. The reader does not declare them and
    /// must still read every such manifest.
    func testAcceptsTheOptionalArtifactKeysAndEveryPrecision() throws {
        let keys = #"""
            "details": {},
            "quantization": {"scheme": "static", "weights": "int8 per channel", "activations": "int8 per tensor",
                             "why": "test", "ops": {"int8": {"linear": 4}, "float": {"softmax": 2}}},
            "delegation": {"delegate": "XNNPACK", "delegate_calls": 1, "partitions": 1, "ops_outside_delegate": {}}
            """#
        for precision in ["int8", "int8-static", "fp32"] {
            let json = Self.minimal.replacingOccurrences(of: #""precision": "int8""#, with: #""precision": "\#(precision)""#)
                .replacingOccurrences(of: #""details": {}"#, with: keys)
            XCTAssertNotEqual(json, Self.minimal)
            let manifest = try Manifest.decode(from: Data(json.utf8))
            XCTAssertEqual(manifest.precision, precision)
            XCTAssertEqual(manifest.artifacts.map(\.precision), [precision])
        }
    }

    // Twin: a manifest from a newer schema is refused by name, whatever else changed.
    func testRefusesANewerSchemaVersion() {
        let newer = Self.minimal.replacingOccurrences(of: #""schema_version": 1"#, with: #""schema_version": 2"#)
            .replacingOccurrences(of: #""wire": {"#, with: #""wire_v2": {"#)
        XCTAssertThrowsError(try Manifest.decode(from: Data(newer.utf8))) { error in
            XCTAssertEqual(error as? ManifestError, .newerSchema(Manifest.fileName, 2))
        }
    }

    func testNamesAMissingKey() {
        let broken = Self.minimal.replacingOccurrences(of: #""zero_point": -3,"#, with: "")
        XCTAssertThrowsError(try Manifest.decode(from: Data(broken.utf8))) { error in
            XCTAssertTrue("\(error)".contains("zero_point"), "\(error)")
        }
    }

    /// The manifest `dtconvert export` wrote, read the way the app reads its bundled copy.
    func testDecodesARealExport() throws {
        let export = try TestData.export()
        let manifest = export.manifest
        XCTAssertEqual(manifest.schemaVersion, Manifest.supportedSchemaVersion)
        XCTAssertEqual(manifest.model.id.count, 16)
        let encoder = try XCTUnwrap(manifest.artifact(part: "device", target: "coreml"), "export with --target coreml")
        XCTAssertEqual(encoder.kind, "directory")
        XCTAssertEqual(encoder.inputs?.first?.shape, manifest.deviceInput.shape)
        XCTAssertEqual(encoder.outputs?.first?.shape, manifest.wire.shape)
        XCTAssertEqual(manifest.wire.shape.dropFirst().reduce(1, *), manifest.wire.bytesPerImage)
        XCTAssertEqual(Array(manifest.deviceInput.shape.suffix(2)), manifest.deviceInput.preprocessing.size)
        XCTAssertNoThrow(try Preprocess(manifest.deviceInput))
        for (name, url) in export.goldenFiles() {
            XCTAssertTrue(FileManager.default.fileExists(atPath: url.path(percentEncoded: false)), name)
        }
        XCTAssertEqual(try export.heldoutImages().count, manifest.golden?.count)
    }

    func testIntegrityOfARealExportAndAFlippedByte() throws {
        #if canImport(CryptoKit)
        let export = try TestData.export()
        let encoder = try XCTUnwrap(export.manifest.artifact(part: "device", target: "coreml"))
        XCTAssertNoThrow(try export.verifyIntegrity(of: encoder))

        // Twin: the same export with one byte of the Core ML package changed is named.
        let copy = FileManager.default.temporaryDirectory.appending(path: "dtcore-integrity-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: copy) }
        try FileManager.default.copyItem(at: export.url, to: copy)
        let copied = try ExportDirectory(url: copy)
        let (relative, _) = try XCTUnwrap(encoder.files?.max { $0.key.count < $1.key.count })
        let victim = copied.location(of: encoder).appending(path: relative)
        var bytes = try Data(contentsOf: victim)
        bytes[bytes.startIndex] ^= 0x01
        try bytes.write(to: victim)
        XCTAssertThrowsError(try copied.verifyIntegrity(of: encoder)) { error in
            guard case .mismatch(let path, _, _)? = error as? IntegrityError else { return XCTFail("\(error)") }
            XCTAssertTrue(path.hasSuffix(relative), path)
        }
        #else
        // Integrity.swift hashes with CryptoKit, which Linux lacks (no package is fetched for it).
        throw XCTSkip("needs CryptoKit (sha256 of the export's files), which exists on Apple platforms only")
        #endif
    }
}

final class NPYTests: XCTestCase {
    /// Bytes exactly as numpy.save writes a (2, 3) float32 array (format 1.0).
    func testReadsAFloat32Array() throws {
        var header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var data = Data([0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.utf8.count), 0])
        data.append(contentsOf: Array(header.utf8))
        let values: [Float] = [0, 1.5, -2, 3.25, 1e-7, 6]
        for value in values {
            withUnsafeBytes(of: value.bitPattern.littleEndian) { data.append(contentsOf: $0) }
        }
        let array = try NPYArray(data: data)
        XCTAssertEqual(array.shape, [2, 3])
        XCTAssertEqual(array.scalars, .float32(values))

        // Twin: one byte short of the shape is refused, not read as garbage.
        XCTAssertThrowsError(try NPYArray(data: data.dropLast()))
    }

    func testReadsTheExportsGoldenArrays() throws {
        let export = try TestData.export()
        let input = try TestData.golden("input.npy", in: export)
        XCTAssertEqual(input.shape, [export.manifest.golden?.count ?? 0] + export.manifest.deviceInput.shape.dropFirst())
        guard case .float32 = input.scalars else { return XCTFail("input.npy is not float32") }
        let wire = try TestData.golden("wire_int8.npy", in: export)
        guard case .int8 = wire.scalars else { return XCTFail("wire_int8.npy is not int8") }
    }
}
