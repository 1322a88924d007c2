#if canImport(CoreML)
import CoreML
import Foundation

public enum CoreMLEncoderError: Error, LocalizedError, Equatable {
    case noFeatureNames(String)
    case inputSize(expected: Int, got: Int)
    case missingOutput(String)
    case outputSize(expected: Int, got: Int)

    public var errorDescription: String? {
        switch self {
        case .noFeatureNames(let path):
            return "\(path): the manifest lists no inputs/outputs for this artifact"
        case .inputSize(let expected, let got):
            return "the encoder takes \(expected) values, got \(got)"
        case .missingOutput(let name):
            return "Core ML returned no multi-array output named \(name)"
        case .outputSize(let expected, let got):
            return "the encoder returned \(got) values, the manifest says \(expected)"
        }
    }
}

/// The export's Core ML device encoder: preprocessed image (NCHW float32) in, float wire tensor
/// out. The artifact, its feature names and shapes all come from the manifest's entry with
/// part `device` and target `coreml`.
///
/// The `.mlpackage` ships inside the app's `Export` folder exactly as `dtconvert export` wrote it,
/// so it is compiled on the device (once per artifact sha256, then cached): Xcode compiles a
/// model only when it is a direct resource, and then the app would have to know its file name.
public actor CoreMLEncoder {
    public nonisolated let inputName: String
    public nonisolated let outputName: String
    public nonisolated let inputShape: [Int]
    public nonisolated let outputShape: [Int]
    private let model: MLModel

    init(model: MLModel, input: Manifest.TensorSpec, output: Manifest.TensorSpec) {
        self.model = model
        self.inputName = input.name
        self.outputName = output.name
        self.inputShape = input.shape
        self.outputShape = output.shape
    }

    /// Compile (or reuse the cached compilation of) and load the export's Core ML encoder.
    /// - Parameters:
    ///   - computeUnits: `.all` lets Core ML pick CPU, GPU or Neural Engine; `.cpuOnly` is the
    ///     configuration `dtconvert verify` bounds most tightly.
    ///   - cacheDirectory: where compiled models are kept (default: the app's Caches folder).
    public static func load(
        from export: ExportDirectory,
        computeUnits: MLComputeUnits = .all,
        cacheDirectory: URL? = nil
    ) async throws -> CoreMLEncoder {
        guard let artifact = export.manifest.artifact(part: "device", target: "coreml") else {
            throw ManifestError.noArtifact(part: "device", target: "coreml")
        }
        guard let input = artifact.inputs?.first, let output = artifact.outputs?.first else {
            throw CoreMLEncoderError.noFeatureNames(artifact.path)
        }
        let configuration = MLModelConfiguration()
        configuration.computeUnits = computeUnits
        let model: MLModel
        do {
            let compiled = try await compiledModel(for: artifact, in: export, cacheDirectory: cacheDirectory)
            model = try await MLModel.load(contentsOf: compiled, configuration: configuration)
        } catch {
            // A package whose sha256 matched but that Core ML cannot compile or load: one sentence
            // naming the manifest field, not Core ML's error chain.
            let reason = error.localizedDescription.split(separator: "\n").first.map(String.init) ?? "\(error)"
            throw ExportFileError(key: export.manifest.key(of: artifact), path: artifact.path, reason: "Core ML cannot load it (\(reason))")
        }
        return CoreMLEncoder(model: model, input: input, output: output)
    }

    /// The compiled `.mlmodelc` for an artifact, keyed by its sha256 so a new export recompiles.
    static func compiledModel(
        for artifact: Manifest.ArtifactEntry, in export: ExportDirectory,
        cacheDirectory: URL?
    ) async throws -> URL {
        let fileManager = FileManager.default
        let cache =
            try cacheDirectory
            ?? fileManager
            .url(for: .cachesDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
            .appending(path: "DTCoreCompiledModels", directoryHint: .isDirectory)
        let cached = cache.appending(path: "\(artifact.sha256).mlmodelc", directoryHint: .isDirectory)
        if fileManager.fileExists(atPath: cached.path(percentEncoded: false)) {
            return cached
        }
        // Core ML compiles into a temporary folder; keep the result where the next launch finds it.
        let temporary = try await MLModel.compileModel(at: export.location(of: artifact))
        try fileManager.createDirectory(at: cache, withIntermediateDirectories: true)
        do {
            try fileManager.moveItem(at: temporary, to: cached)
        } catch {
            // Another load may have compiled the same artifact first; its copy is as good as ours.
            guard fileManager.fileExists(atPath: cached.path(percentEncoded: false)) else { throw error }
            try? fileManager.removeItem(at: temporary)
        }
        return cached
    }

    /// Run the encoder on one preprocessed image (`Preprocess.apply`) and return the float wire
    /// tensor, row-major, `outputShape.reduce(1, *)` values.
    public func encode(_ input: [Float]) throws -> [Float] {
        let expected = inputShape.reduce(1, *)
        guard input.count == expected else { throw CoreMLEncoderError.inputSize(expected: expected, got: input.count) }
        let array = MLMultiArray(MLShapedArray<Float>(scalars: input, shape: inputShape))
        let features = try MLDictionaryFeatureProvider(dictionary: [inputName: MLFeatureValue(multiArray: array)])
        let result = try model.prediction(from: features)
        guard let wire = result.featureValue(for: outputName)?.multiArrayValue else {
            throw CoreMLEncoderError.missingOutput(outputName)
        }
        // Converting copies out of whatever strides and scalar type Core ML chose into a dense,
        // row-major Float array.
        let values = MLShapedArray<Float>(converting: wire).scalars
        let outputCount = outputShape.reduce(1, *)
        guard values.count == outputCount else { throw CoreMLEncoderError.outputSize(expected: outputCount, got: values.count) }
        return values
    }
}
#endif
