#if canImport(CryptoKit)
import CryptoKit
import Foundation

extension ExportDirectory {
    /// Check an artifact's bytes against the sha256 the manifest records (every file of a
    /// directory artifact), as `dtconvert verify` does first: a stale or half-copied bundle is
    /// named here instead of failing later inside Core ML.
    public func verifyIntegrity(of artifact: Manifest.ArtifactEntry) throws {
        let root = location(of: artifact)
        let expected: [(url: URL, relative: String, sha256: String)]
        if let files = artifact.files {
            expected = files.sorted(by: { $0.key < $1.key }).map {
                (url: root.appending(path: $0.key, directoryHint: .notDirectory), relative: "\(artifact.path)/\($0.key)", sha256: $0.value)
            }
        } else {
            expected = [(url: root, relative: artifact.path, sha256: artifact.sha256)]
        }
        for file in expected {
            guard FileManager.default.fileExists(atPath: file.url.path(percentEncoded: false)) else {
                throw ManifestError.missingFile(file.relative)
            }
            let data = try Data(contentsOf: file.url, options: .mappedIfSafe)
            let digest = SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
            guard digest == file.sha256 else {
                throw IntegrityError.mismatch(path: file.relative, expected: file.sha256, actual: digest)
            }
        }
    }
}

public enum IntegrityError: Error, LocalizedError, Equatable {
    case mismatch(path: String, expected: String, actual: String)

    public var errorDescription: String? {
        switch self {
        case .mismatch(let path, let expected, let actual):
            let got = actual.prefix(12), want = expected.prefix(12)
            return "\(path): sha256 \(got)… does not match the manifest's \(want)… (modified or stale copy; rebuild the app)"
        }
    }
}
#endif
