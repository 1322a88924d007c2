import CoreGraphics
import DTCore
import Foundation
import Observation
import UIKit

/// An image the user can send: a held-out digit bundled with the export, a photo or a capture.
struct InputImage: Identifiable {
    let id = UUID()
    let title: String
    let pixels: PixelImage
    let preview: CGImage?

    init(title: String, pixels: PixelImage) {
        self.title = title
        self.pixels = pixels
        self.preview = pixels.cgImage()
    }
}

/// One task's answer from the server.
struct TaskPredictions: Identifiable {
    var id: String { task }
    let task: String
    let labels: [Prediction]
}

/// What one run measured: the device half, the bytes on the wire, the cloud half.
struct RunResult {
    let imageTitle: String
    let tasks: [TaskPredictions]
    /// Preprocessing + the Core ML encoder, on this device.
    let onDevice: Duration
    /// The int8 wire tensor alone (the manifest's bytes_per_image for batch 1).
    let wireBytes: Int
    /// The whole wire message: header + tensor.
    let payloadBytes: Int
    let roundTrip: Duration
    let timing: ServerTiming?
}

enum DemoError: LocalizedError {
    case noBundledExport(String)
    case badServerURL(String)

    var errorDescription: String? {
        switch self {
        case .noBundledExport(let folder):
            return "The app bundle has no '\(folder)' folder with a manifest.json. Run 'dtconvert export … --target coreml', "
                + "point the DT_EXPORT_DIR build setting at it (or copy it with ios_demo/scripts/bundle_export.py) and build again."
        case .badServerURL(let text):
            return "'\(text)' is not a server URL (set one in Settings)"
        }
    }
}

/// The app's state: the bundled export, the Core ML encoder, the chosen image, the last result.
/// The pipeline is the same as `dtconvert client`: preprocess → device encoder → quantize →
/// wire message → POST /v1/decode.
@MainActor
@Observable
final class DemoModel {
    enum Phase {
        case loading
        case ready
        case failed(String)
    }

    private(set) var phase: Phase = .loading
    private(set) var export: ExportDirectory?
    private(set) var samples: [InputImage] = []
    private(set) var selected: InputImage?
    private(set) var result: RunResult?
    private(set) var message: String?
    private(set) var isRunning = false
    private var encoder: CoreMLEncoder?
    private var loadStarted = false

    var manifest: Manifest? { export?.manifest }

    /// Read the bundled manifest, check the Core ML artifact's bytes against it, compile and load
    /// it, and pick up the held-out images the export ships.
    func load() async {
        guard !loadStarted else { return }
        loadStarted = true
        do {
            guard let url = AppConfig.bundledExportURL else {
                throw DemoError.noBundledExport(AppConfig.exportFolderName)
            }
            let export = try ExportDirectory(url: url)
            guard let artifact = export.manifest.artifact(part: "device", target: "coreml") else {
                throw ManifestError.noArtifact(part: "device", target: "coreml")
            }
            try await Self.verifyIntegrity(of: artifact, in: export)
            let encoder = try await CoreMLEncoder.load(from: export)
            let samples = try export.heldoutImages().enumerated().map { index, pixels in
                InputImage(title: "Held-out \(index + 1)", pixels: pixels)
            }
            self.export = export
            self.encoder = encoder
            self.samples = samples
            self.selected = samples.first
            phase = .ready
        } catch {
            phase = .failed(error.localizedDescription)
        }
    }

    func select(_ image: InputImage) {
        selected = image
        result = nil
        message = nil
    }

    /// A photo from the library (file bytes, decoded upright at full resolution off the main actor).
    func usePhoto(data: Data, invert: Bool) async {
        guard let channels = manifest?.deviceInput.preprocessing.channels else { return }
        do {
            let pixels = try await Self.decode(data, channels: channels)
            select(InputImage(title: "Photo", pixels: invert ? pixels.inverted() : pixels))
        } catch {
            message = "That photo could not be read: \(error.localizedDescription)"
        }
    }

    /// A camera capture (drawn upright first: the camera stores pixels rotated).
    func useCapture(_ photo: UIImage, invert: Bool) async {
        guard let channels = manifest?.deviceInput.preprocessing.channels else { return }
        guard let upright = photo.uprightCGImage() else {
            message = "The capture could not be read"
            return
        }
        do {
            let pixels = try await Self.convert(upright, channels: channels)
            select(InputImage(title: "Capture", pixels: invert ? pixels.inverted() : pixels))
        } catch {
            message = "The capture could not be read: \(error.localizedDescription)"
        }
    }

    /// Encode the selected image on the device, send the int8 wire message, show the answer.
    func run(serverURL: String, topK: Int) async {
        guard let export, let encoder, let image = selected, !isRunning else { return }
        isRunning = true
        message = nil
        defer { isRunning = false }
        do {
            let trimmed = serverURL.trimmingCharacters(in: .whitespacesAndNewlines)
            guard let baseURL = URL(string: trimmed), baseURL.scheme != nil, baseURL.host() != nil else {
                throw DemoError.badServerURL(serverURL)
            }
            let manifest = export.manifest
            let preprocess = try Preprocess(manifest.deviceInput)

            let clock = ContinuousClock()
            let started = clock.now
            let input = try preprocess.apply(to: image.pixels)
            let wireFloat = try await encoder.encode(input)
            let onDevice = clock.now - started

            // Every runtime quantizes with the manifest's parameters, so equal encoder outputs
            // put equal bytes on the wire (docs/wire-format.md).
            let wire = manifest.wire
            let scale = Float(wire.scale)
            let wireMessage = WireMessage(
                modelID: manifest.model.id, taskMask: 0, scale: scale,
                zeroPoint: Int32(wire.zeroPoint), shape: wire.shape,
                values: Wire.quantize(wireFloat, scale: scale, zeroPoint: wire.zeroPoint))
            let payload = try Wire.encode(wireMessage)

            // The token comes from the Keychain (Settings), never from the build.
            let client = DecoderClient(baseURL: baseURL, token: ServerToken.read())
            let answer = try await client.decode(payload, topK: topK)
            let firstImage = answer.response.predictions.first ?? [:]
            result = RunResult(
                imageTitle: image.title,
                tasks: answer.response.tasks.map { TaskPredictions(task: $0, labels: firstImage[$0] ?? []) },
                onDevice: onDevice,
                wireBytes: wireMessage.values.count,
                payloadBytes: answer.payloadBytes,
                roundTrip: answer.roundTrip,
                timing: answer.response.timing
            )
        } catch DecoderClientError.server(let status, let sentence) where status == 401 {
            result = nil
            message = "server answered 401: \(sentence) (enter the token the server was started with in Settings)"
        } catch {
            result = nil
            message = error.localizedDescription
        }
    }

    // Hashing, decoding and converting large photos stay off the main actor.
    private nonisolated static func verifyIntegrity(of artifact: Manifest.ArtifactEntry, in export: ExportDirectory) async throws {
        try export.verifyIntegrity(of: artifact)
    }

    private nonisolated static func decode(_ data: Data, channels: Int) async throws -> PixelImage {
        try PixelImage(imageData: data, channels: channels)
    }

    private nonisolated static func convert(_ image: CGImage, channels: Int) async throws -> PixelImage {
        try PixelImage(cgImage: image, channels: channels)
    }
}

extension UIImage {
    /// The pixels as they should be seen (orientation applied), one pixel per pixel.
    func uprightCGImage() -> CGImage? {
        if imageOrientation == .up, let image = self.cgImage {
            return image
        }
        let format = UIGraphicsImageRendererFormat()
        format.scale = 1
        format.opaque = true
        let pixelSize = CGSize(width: size.width * scale, height: size.height * scale)
        let renderer = UIGraphicsImageRenderer(size: pixelSize, format: format)
        return renderer.image { _ in draw(in: CGRect(origin: .zero, size: pixelSize)) }.cgImage
    }
}
