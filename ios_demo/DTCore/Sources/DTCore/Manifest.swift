import Foundation

/// The parts of an export's `manifest.json` (schema version 1, docs/manifest.md) that the app
/// reads. Every file name, shape, mean, std, scale, label and model id comes from here.
///
/// Each type lists its JSON keys in `CodingKeys`; tests/test_ios.py checks every one of them
/// against dtconvert/manifest.schema.json, so a renamed key fails on Linux before any Mac
/// builds the app. Keys the app does not need are simply not declared (Codable ignores them).
public struct Manifest: Codable, Sendable {
    /// The one fixed name in an export: everything else is found through this file.
    public static let fileName = "manifest.json"
    /// The newest `schema_version` this reader understands; newer manifests are refused.
    public static let supportedSchemaVersion = 1

    public let schemaVersion: Int
    public let model: ModelInfo
    public let precision: String
    public let deviceInput: DeviceInputSpec
    public let wire: WireSpec
    public let tasks: [TaskSpec]
    public let artifacts: [ArtifactEntry]
    public let golden: GoldenSet?

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version"
        case model
        case precision
        case deviceInput = "device_input"
        case wire
        case tasks
        case artifacts
        case golden
    }

    public struct ModelInfo: Codable, Sendable {
        public let name: String
        /// 16 hex digits; sent in every wire message so the server can refuse another model's.
        public let id: String
        /// fp32 held-out accuracy per task, as training measured it.
        public let heldoutMetrics: [String: Double]?

        enum CodingKeys: String, CodingKey {
            case name
            case id
            case heldoutMetrics = "heldout_metrics"
        }
    }

    public struct DeviceInputSpec: Codable, Sendable {
        public let name: String
        /// `[1, C, H, W]`.
        public let shape: [Int]
        public let dtype: String
        public let layout: String
        public let preprocessing: Preprocessing

        enum CodingKeys: String, CodingKey {
            case name
            case shape
            case dtype
            case layout
            case preprocessing
        }
    }

    /// uint8 pixels → `x · scale` → resize to `size` → `(x − mean) / std` per channel.
    public struct Preprocessing: Codable, Sendable {
        /// `[H, W]`.
        public let size: [Int]
        public let channels: Int
        /// `bilinear` (align_corners=False, no antialias) or `nearest`, as torch's interpolate.
        public let resize: String
        public let scale: Double
        public let mean: [Double]
        public let std: [Double]

        enum CodingKeys: String, CodingKey {
            case size
            case channels
            case resize
            case scale
            case mean
            case std
        }
    }

    /// The tensor the device sends: `q = clamp(round(x / scale) + zero_point, −128, 127)`.
    public struct WireSpec: Codable, Sendable {
        public let name: String
        /// `[1, T, D]`.
        public let shape: [Int]
        public let dtype: String
        public let scale: Double
        public let zeroPoint: Int
        public let bytesPerImage: Int

        enum CodingKeys: String, CodingKey {
            case name
            case shape
            case dtype
            case scale
            case zeroPoint = "zero_point"
            case bytesPerImage = "bytes_per_image"
        }
    }

    /// A task of the cloud decoder, in the order it returns its logits.
    public struct TaskSpec: Codable, Sendable {
        public let name: String
        public let labels: [String]

        enum CodingKeys: String, CodingKey {
            case name
            case labels
        }
    }

    public struct ArtifactEntry: Codable, Sendable {
        /// Relative to the export directory.
        public let path: String
        /// `file` or `directory` (an `.mlpackage` is a directory).
        public let kind: String
        /// `device`, `cloud` or `reference`.
        public let part: String
        /// `executorch`, `coreml`, `tflite`, `torchscript`, `triton` or `reference`.
        public let target: String
        public let precision: String
        public let bytes: Int
        public let sha256: String
        /// Directories only: the sha256 of every file, by path relative to the directory.
        public let files: [String: String]?
        /// As the artifact itself reports them: the Core ML feature names come from here.
        public let inputs: [TensorSpec]?
        public let outputs: [TensorSpec]?

        enum CodingKeys: String, CodingKey {
            case path
            case kind
            case part
            case target
            case precision
            case bytes
            case sha256
            case files
            case inputs
            case outputs
        }
    }

    public struct TensorSpec: Codable, Sendable {
        public let name: String
        public let shape: [Int]
        public let dtype: String

        enum CodingKeys: String, CodingKey {
            case name
            case shape
            case dtype
        }
    }

    /// Golden inputs and outputs written by `dtconvert export` (docs/verify.md, "Golden files").
    public struct GoldenSet: Codable, Sendable {
        /// A folder relative to the export directory.
        public let path: String
        public let count: Int
        /// sha256 by file name.
        public let files: [String: String]

        enum CodingKeys: String, CodingKey {
            case path
            case count
            case files
        }

        /// The manifest field naming the golden file `name`, for error messages.
        public func key(_ name: String) -> String { "golden.files.\(name)" }
    }

    /// Read just the version first, so a newer manifest is refused by name rather than failing
    /// on whichever key changed.
    private struct SchemaVersionProbe: Decodable {
        let schemaVersion: Int

        enum CodingKeys: String, CodingKey {
            case schemaVersion = "schema_version"
        }
    }

    /// Decode a manifest, refusing a `schema_version` newer than this reader's.
    public static func decode(from data: Data, source: String = Manifest.fileName) throws -> Manifest {
        let decoder = JSONDecoder()
        let version: Int
        do {
            version = try decoder.decode(SchemaVersionProbe.self, from: data).schemaVersion
        } catch {
            throw ManifestError.unreadable(source, String(describing: error))
        }
        guard version <= supportedSchemaVersion else {
            throw ManifestError.newerSchema(source, version)
        }
        let manifest: Manifest
        do {
            manifest = try decoder.decode(Manifest.self, from: data)
        } catch {
            throw ManifestError.unreadable(source, String(describing: error))
        }
        try manifest.checkPaths()
        return manifest
    }

    /// Refuse a manifest naming any path that is absolute or climbs with `..` (ExportPaths), which
    /// ever file a reader would open: an export is untrusted input.
    func checkPaths() throws {
        for (index, artifact) in artifacts.enumerated() {
            try ExportPaths.check(artifact.path, key: artifactKey(index))
            for name in (artifact.files ?? [:]).keys.sorted() {
                try ExportPaths.check(name, key: "\(artifactKey(index, field: "files")).\(name)")
            }
        }
        if let golden {
            try ExportPaths.check(golden.path, key: "golden.path")
            for name in golden.files.keys.sorted() {
                try ExportPaths.check(name, key: golden.key(name))
            }
        }
    }

    /// The manifest field of an artifact, for error messages: `artifacts[2].path`.
    func artifactKey(_ index: Int, field: String = "path") -> String { "artifacts[\(index)].\(field)" }

    /// The manifest field naming `artifact`'s path (the first entry with its path, part and target).
    public func key(of artifact: ArtifactEntry) -> String {
        let index = artifacts.firstIndex { $0.path == artifact.path && $0.part == artifact.part && $0.target == artifact.target }
        return artifactKey(index ?? 0)
    }

    /// The first artifact of this part and target (`device` + `coreml` for the app).
    public func artifact(part: String, target: String) -> ArtifactEntry? {
        artifacts.first { $0.part == part && $0.target == target }
    }

    /// Task names in the decoder's order.
    public var taskNames: [String] { tasks.map(\.name) }
}

public enum ManifestError: Error, LocalizedError, Equatable {
    case missing(String)
    case unreadable(String, String)
    case newerSchema(String, Int)
    case noArtifact(part: String, target: String)
    case missingFile(String)

    public var errorDescription: String? {
        switch self {
        case .missing(let path):
            return "\(path): missing (is this a 'dtconvert export' directory?)"
        case .unreadable(let source, let reason):
            return "\(source): not a readable manifest (\(reason))"
        case .newerSchema(let source, let version):
            let newest = Manifest.supportedSchemaVersion
            return "\(source): manifest schema_version \(version) is newer than this app reads (\(newest)); update the app"
        case .noArtifact(let part, let target):
            return "the manifest lists no \(part) artifact for target \(target); export with --target \(target)"
        case .missingFile(let path):
            return "\(path): listed in the manifest but not in the export"
        }
    }
}

/// An export directory on disk (the app bundle's copy, or `export/digits` in tests) with its
/// manifest decoded. Paths inside it are always resolved through the manifest.
///
/// The export is untrusted input, so opening it checks every path the manifest names: none is
/// absolute or climbs with `..` (`Manifest.decode`), none that exists is a symlink leading out of
/// the export, and no directory artifact holds such a symlink. Each failure is an
/// `ExportPathError` naming the manifest field and the path.
public struct ExportDirectory: Sendable {
    public let url: URL
    public let manifest: Manifest

    public init(url: URL) throws {
        let manifestURL = try ExportPaths.resolve(Manifest.fileName, key: "the manifest", in: url)
        guard FileManager.default.fileExists(atPath: manifestURL.path(percentEncoded: false)) else {
            throw ManifestError.missing(manifestURL.path(percentEncoded: false))
        }
        let data = try Data(contentsOf: manifestURL)
        self.url = url
        self.manifest = try Manifest.decode(from: data, source: manifestURL.path(percentEncoded: false))
        try checkLinks()
    }

    /// Every path the manifest names that exists must, with its symlinks resolved, stay inside the export.
    private func checkLinks() throws {
        for (index, artifact) in manifest.artifacts.enumerated() {
            let key = manifest.artifactKey(index)
            let isDirectory = artifact.kind == "directory"
            let hint: URL.DirectoryHint = isDirectory ? .isDirectory : .notDirectory
            let location = try ExportPaths.resolve(artifact.path, key: key, in: url, directoryHint: hint)
            if isDirectory {
                try ExportPaths.checkTree(location, path: artifact.path, key: key, in: url)
            }
        }
        if let golden = manifest.golden {
            for name in golden.files.keys.sorted() {
                _ = try ExportPaths.resolve("\(golden.path)/\(name)", key: golden.key(name), in: url)
            }
        }
    }

    /// Where an artifact the manifest lists lies on disk.
    public func location(of artifact: Manifest.ArtifactEntry) -> URL {
        url.appending(path: artifact.path, directoryHint: artifact.kind == "directory" ? .isDirectory : .notDirectory)
    }

    /// The golden files by name, as the manifest lists them (empty when it lists none).
    public func goldenFiles() -> [String: URL] {
        guard let golden = manifest.golden else { return [:] }
        let folder = url.appending(path: golden.path, directoryHint: .isDirectory)
        var files: [String: URL] = [:]
        for name in golden.files.keys {
            files[name] = folder.appending(path: name, directoryHint: .notDirectory)
        }
        return files
    }

    /// The raw held-out images the export ships with its golden files, if any: the golden array
    /// of uint8 pixels (N × H × W, or N × H × W × C), found by its type, not by a file name.
    /// Digits exports carry eight 8×8 held-out digits; image-folder exports carry none.
    public func heldoutImages() throws -> [PixelImage] {
        for (name, fileURL) in goldenFiles().sorted(by: { $0.key < $1.key }) {
            guard FileManager.default.fileExists(atPath: fileURL.path(percentEncoded: false)) else { continue }
            let array: NPYArray
            do {
                array = try NPYArray(contentsOf: fileURL)
            } catch {
                // Its sha256 may match and it still be no array: one sentence naming the field.
                let golden = manifest.golden
                let reason: String
                if case .invalid(_, let why)? = error as? NPYError { reason = why } else { reason = error.localizedDescription }
                throw ExportFileError(key: golden?.key(name) ?? name, path: "\(golden?.path ?? "")/\(name)", reason: reason)
            }
            guard case .uint8(let pixels) = array.scalars, array.shape.count == 3 || array.shape.count == 4 else { continue }
            let count = array.shape[0], height = array.shape[1], width = array.shape[2]
            let channels = array.shape.count == 4 ? array.shape[3] : 1
            let stride = height * width * channels
            return (0..<count).map { index in
                PixelImage(
                    width: width, height: height, channels: channels,
                    pixels: Array(pixels[(index * stride)..<((index + 1) * stride)]))
            }
        }
        return []
    }
}
