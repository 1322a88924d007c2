import DTCore
import Foundation
import XCTest

/// Exports are untrusted input: every path the manifest names stays inside the export (no `..`,
/// nothing absolute, no symlink leading out), and a broken file is one sentence naming its field.
final class ExportPathTests: XCTestCase {
    static let package = "tiny_encoder_coreml_int8.mlpackage"

    var base: URL!
    var export: URL { base.appending(path: "export", directoryHint: .isDirectory) }
    var outside: URL { base.appending(path: "outside", directoryHint: .isDirectory) }

    /// The minimal manifest as an export on disk: its Core ML package folder and a golden array,
    /// plus a folder beside the export for the tests to reach into.
    override func setUpWithError() throws {
        base = FileManager.default.temporaryDirectory.appending(path: "dtcore-paths-\(UUID().uuidString)", directoryHint: .isDirectory)
        let manager = FileManager.default
        try manager.createDirectory(at: export.appending(path: "\(Self.package)/Data"), withIntermediateDirectories: true)
        try manager.createDirectory(at: export.appending(path: "golden"), withIntermediateDirectories: true)
        try manager.createDirectory(at: outside, withIntermediateDirectories: true)
        try Data("{}".utf8).write(to: export.appending(path: "\(Self.package)/Manifest.json"))
        try Self.images().write(to: export.appending(path: "golden/image_uint8.npy"))
        try Data("secret".utf8).write(to: outside.appending(path: "secret.txt"))
        try writeManifest(Self.manifest())
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: base)
    }

    static func manifest(golden: String = "golden", file: String = "image_uint8.npy", artifact: String = package) -> String {
        ManifestTests.minimal
            .replacingOccurrences(of: #""path": "\#(package)""#, with: #""path": "\#(artifact)""#)
            .replacingOccurrences(
                of: #""data": {"#,
                with: #""golden": {"path": "\#(golden)", "count": 2, "files": {"\#(file)": "00"}}, "data": {"#)
    }

    /// Two 2×2 uint8 images as numpy.save writes them.
    static func images() -> Data {
        var header = "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 2, 2), }"
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var data = Data([0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.utf8.count), 0])
        data.append(contentsOf: Array(header.utf8))
        data.append(contentsOf: [UInt8](0..<8))
        return data
    }

    func writeManifest(_ text: String) throws {
        try Data(text.utf8).write(to: export.appending(path: "manifest.json"))
    }

    /// Replace `relative` inside the export by a symlink to `target`.
    func link(_ relative: String, to target: URL) throws {
        let url = export.appending(path: relative)
        try? FileManager.default.removeItem(at: url)
        try FileManager.default.createSymbolicLink(at: url, withDestinationURL: target)
    }

    /// Opening the export fails with exactly `message`, on one line.
    func assertRefused(_ message: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try ExportDirectory(url: export).heldoutImages(), file: file, line: line) { error in
            let text = error.localizedDescription
            XCTAssertTrue(text.hasPrefix(message), "expected \(message)…, got \(text)", file: file, line: line)
            XCTAssertFalse(text.contains("\n"), "more than one line: \(text)", file: file, line: line)
        }
    }

    func testThePathRuleNamesWhatIsWrong() {
        for fine in ["a.pte", "golden/input.npy", "a..b/c.pte", "./a.pte", "dir/.hidden"] {
            XCTAssertNil(ExportPaths.problem(fine), fine)
        }
        let cases = [
            "": "it is empty", "../secret.txt": #"it contains "..""#, "golden/../../secret.txt": #"it contains "..""#,
            #"golden\..\..\secret.txt"#: #"it contains "..""#, "/etc/passwd": "it is absolute", #"\\server\share"#: "it is absolute",
            "C:/Windows/system.ini": "it is absolute", "a\u{0}.pte": "it contains a NUL character",
        ]
        for (path, reason) in cases {
            XCTAssertEqual(ExportPaths.problem(path), reason, path)
        }
    }

    /// Twin of every refusal below: the intact export opens and reads its images.
    func testAnExportInsideItsDirectoryOpens() throws {
        XCTAssertEqual(try ExportDirectory(url: export).heldoutImages().count, 2)
        // A symlink that stays inside the export is fine.
        try FileManager.default.moveItem(at: export.appending(path: "golden"), to: export.appending(path: "golden-real"))
        try link("golden", to: export.appending(path: "golden-real"))
        XCTAssertEqual(try ExportDirectory(url: export).heldoutImages().count, 2)
    }

    func testAManifestPathThatClimbsOrIsAbsoluteIsRefused() throws {
        try writeManifest(Self.manifest(artifact: "../outside/secret.txt"))
        assertRefused(#"artifacts[0].path "../outside/secret.txt" leaves the export directory (it contains "..")"#)
        try writeManifest(Self.manifest(golden: "/etc"))
        assertRefused(#"golden.path "/etc" leaves the export directory (it is absolute)"#)
        try writeManifest(Self.manifest(file: "../secret.txt"))
        assertRefused(#"golden.files.../secret.txt "../secret.txt" leaves the export directory (it contains "..")"#)
        let files = Self.manifest().replacingOccurrences(of: #""Manifest.json": "cd""#, with: #""../../x": "cd""#)
        try writeManifest(files)
        assertRefused(#"artifacts[0].files.../../x "../../x" leaves the export directory"#)
    }

    func testAGoldenFolderThatIsASymlinkLeadingOutIsRefused() throws {
        try Self.images().write(to: outside.appending(path: "image_uint8.npy"))
        try link("golden", to: outside)
        assertRefused(#"golden.files.image_uint8.npy "golden/image_uint8.npy" leaves the export directory (it resolves to "#)
    }

    func testAnArtifactThatIsASymlinkLeadingOutIsRefused() throws {
        try FileManager.default.copyItem(at: export.appending(path: Self.package), to: outside.appending(path: "package"))
        try link(Self.package, to: outside.appending(path: "package"))
        assertRefused(#"artifacts[0].path "\#(Self.package)" leaves the export directory (it resolves to "#)
    }

    func testADirectoryArtifactHoldingASymlinkLeadingOutIsRefused() throws {
        try link("\(Self.package)/Data/weights.bin", to: outside.appending(path: "secret.txt"))
        assertRefused(#"artifacts[0].path "\#(Self.package)" leaves the export directory (it holds a symlink "#)
    }

    func testAManifestThatIsASymlinkLeadingOutIsRefused() throws {
        try FileManager.default.moveItem(at: export.appending(path: "manifest.json"), to: outside.appending(path: "manifest.json"))
        try link("manifest.json", to: outside.appending(path: "manifest.json"))
        assertRefused(#"the manifest "manifest.json" leaves the export directory (it resolves to "#)
    }

    /// Its sha256 may match the manifest and it still be no array: one sentence naming the field.
    func testACorruptGoldenArrayIsOneSentenceNamingItsField() throws {
        try Data("not an array".utf8).write(to: export.appending(path: "golden/image_uint8.npy"))
        assertRefused(#"golden.files.image_uint8.npy "golden/image_uint8.npy": not an .npy file (bad magic)"#)
    }
}
