import Foundation

#if canImport(Darwin)
import Darwin
#elseif canImport(Glibc)
import Glibc
#endif

/// A manifest path that does not stay inside its export; the message is the one sentence every
/// reader (Python, Kotlin, Swift, the bundle scripts) gives: `artifacts[2].path "../x" leaves the
/// export directory (it contains "..")`.
public struct ExportPathError: Error, LocalizedError, Equatable {
    /// The manifest field that named the path (`artifacts[2].path`, `golden.files.input.npy`).
    public let key: String
    public let path: String
    public let reason: String

    public var errorDescription: String? { "\(key) \"\(path)\" leaves the export directory (\(reason))" }
}

/// A file the manifest names that is there, and matches its sha256 where that is checked, but
/// cannot be read as what it claims to be (a golden array that is no `.npy`, a package Core ML
/// cannot compile).
public struct ExportFileError: Error, LocalizedError, Equatable {
    public let key: String
    public let path: String
    public let reason: String

    public var errorDescription: String? { "\(key) \"\(path)\": \(reason)" }
}

/// An export directory is something users download and pass around, so every path its manifest
/// names must stay inside it: relative, no `..`, and no symlink that leads out. The same rule as
/// `ExportPaths` in the Android core and `ios_demo/scripts/bundle_export.py`.
public enum ExportPaths {
    /// Why the manifest path `path` cannot name a file inside its export, or nil when it can.
    /// `\` counts as a separator too, so a path written on Windows cannot climb either.
    public static func problem(_ path: String) -> String? {
        if path.isEmpty { return "it is empty" }
        if path.contains("\u{0}") { return "it contains a NUL character" }
        let first = path.first
        let drive = path.count >= 2 && path.first?.isLetter == true && path.dropFirst().first == ":"
        if first == "/" || first == "\\" || drive { return "it is absolute" }
        if path.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "/" || $0 == "\\" }).contains("..") {
            return "it contains \"..\""
        }
        return nil
    }

    /// Throw unless `path`, the value of the manifest field `key`, is a confined relative path.
    public static func check(_ path: String, key: String) throws {
        if let reason = problem(path) { throw ExportPathError(key: key, path: path, reason: reason) }
    }

    /// Where `path` (from the manifest field `key`) lies in the export at `root`, after checking
    /// that it is confined and that, with every symlink resolved, it still lies inside `root`. A
    /// path that does not exist is returned as is: the caller reports it as missing.
    public static func resolve(_ path: String, key: String, in root: URL, directoryHint: URL.DirectoryHint = .notDirectory) throws -> URL {
        try check(path, key: key)
        let url = root.appending(path: path, directoryHint: directoryHint)
        guard let real = realPath(url), let realRoot = realPath(root) else { return url }
        if !isInside(real, realRoot) {
            throw ExportPathError(key: key, path: path, reason: "it resolves to \(real), outside \(realRoot)")
        }
        return url
    }

    /// Throw if anything below the directory `url` (from the manifest field `key`) is a symlink
    /// that leads out of the export at `root`: a reader of the whole folder (Core ML compiling a
    /// package) would follow it.
    public static func checkTree(_ url: URL, path: String, key: String, in root: URL) throws {
        guard let realRoot = realPath(root),
            let walker = FileManager.default.enumerator(at: url, includingPropertiesForKeys: [.isSymbolicLinkKey])
        else { return }
        for case let entry as URL in walker {
            guard (try? entry.resourceValues(forKeys: [.isSymbolicLinkKey]))?.isSymbolicLink == true else { continue }
            let inner = String(entry.path(percentEncoded: false).dropFirst(url.path(percentEncoded: false).count))
            guard let real = realPath(entry) else {
                throw ExportPathError(key: key, path: path, reason: "it holds a symlink \(inner) whose target is missing")
            }
            if !isInside(real, realRoot) {
                throw ExportPathError(key: key, path: path, reason: "it holds a symlink \(inner) to \(real), outside \(realRoot)")
            }
        }
    }

    private static func isInside(_ real: String, _ root: String) -> Bool {
        real == root || real.hasPrefix(root.hasSuffix("/") ? root : root + "/")
    }

    /// The absolute path with every symlink resolved (POSIX realpath), or nil when it does not exist.
    static func realPath(_ url: URL) -> String? {
        guard let resolved = realpath(url.path(percentEncoded: false), nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
