import Foundation
#if canImport(FoundationNetworking)
// Linux: URLSession, URLRequest and HTTPURLResponse live in swift-corelibs-foundation's
// FoundationNetworking; on Apple platforms they are part of Foundation.
import FoundationNetworking
#endif

/// `POST /v1/decode` answer: each image's top-k labels per requested task.
public struct DecodeResponse: Decodable, Sendable {
    public let modelID: String
    /// The tasks answered, in the manifest's order (all of them for task_mask 0).
    public let tasks: [String]
    /// One entry per image in the message, task name → labels, most probable first.
    public let predictions: [[String: [Prediction]]]
    public let timing: ServerTiming?

    enum CodingKeys: String, CodingKey {
        case modelID = "model_id"
        case tasks
        case predictions
        case timing
    }
}

/// The server's own account of a request, in milliseconds.
public struct ServerTiming: Decodable, Sendable {
    /// Waiting for the micro-batch to fill.
    public let queueMs: Double?
    /// Running the TorchScript decoder on the batch.
    public let decodeMs: Double?
    /// From the request's arrival to its answer.
    public let serverMs: Double?
    /// Images decoded together with this one.
    public let batchImages: Int?

    enum CodingKeys: String, CodingKey {
        case queueMs = "queue_ms"
        case decodeMs = "decode_ms"
        case serverMs = "server_ms"
        case batchImages = "batch_images"
    }
}

/// `GET /healthz`: `modelID` is the server's first model, `modelIDs` every model it serves (a
/// shared cloud serves several device variants; an older server answers `model_id` only).
public struct HealthResponse: Decodable, Sendable {
    public let status: String
    public let modelID: String
    public let modelIDs: [String]

    enum CodingKeys: String, CodingKey {
        case status
        case modelID = "model_id"
        case modelIDs = "model_ids"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        status = try container.decode(String.self, forKey: .status)
        modelID = try container.decode(String.self, forKey: .modelID)
        modelIDs = try container.decodeIfPresent([String].self, forKey: .modelIDs) ?? [modelID]
    }

    /// Whether the server serves this model id.
    public func serves(_ id: String) -> Bool { modelIDs.contains(id) }
}

/// A 4xx/5xx body: `{"error": "one sentence", "status": 400}`.
struct ServerErrorBody: Decodable {
    let error: String
    let status: Int

    enum CodingKeys: String, CodingKey {
        case error
        case status
    }
}

public enum DecoderClientError: Error, LocalizedError, Equatable {
    /// The server answered with an error status and (usually) its one-sentence reason.
    case server(status: Int, message: String)
    case notHTTP
    case invalidResponse(String)

    public var errorDescription: String? {
        switch self {
        case .server(let status, let message): return "server answered \(status): \(message)"
        case .notHTTP: return "the answer was not HTTP"
        case .invalidResponse(let reason): return "the server's answer could not be read: \(reason)"
        }
    }
}

/// A decode request's answer with what the device measured around it.
public struct DecodeResult: Sendable {
    public let response: DecodeResponse
    /// Bytes of the wire message sent (header + int8 tensor).
    public let payloadBytes: Int
    /// Request sent → answer read, on this device's clock.
    public let roundTrip: Duration
}

/// Talks to `dtconvert serve`: posts wire messages, reads predictions. The base URL comes from
/// the app's settings; only the API routes are fixed here.
public struct DecoderClient: Sendable {
    public let baseURL: URL
    public let session: URLSession
    public let timeout: TimeInterval

    public init(baseURL: URL, session: URLSession = .shared, timeout: TimeInterval = 10) {
        self.baseURL = baseURL
        self.session = session
        self.timeout = timeout
    }

    /// POST one wire message (batch ≥ 1) to `/v1/decode?top_k=K` as application/octet-stream.
    public func decode(_ message: Data, topK: Int = 3) async throws -> DecodeResult {
        let url =
            baseURL
            .appending(path: "v1/decode", directoryHint: .notDirectory)
            .appending(queryItems: [URLQueryItem(name: "top_k", value: String(topK))])
        var request = URLRequest(url: url, timeoutInterval: timeout)
        request.httpMethod = "POST"
        request.setValue(Wire.contentType, forHTTPHeaderField: "Content-Type")
        request.setValue("application/json", forHTTPHeaderField: "Accept")
        let clock = ContinuousClock()
        let started = clock.now
        let (body, response) = try await session.upload(for: request, from: message)
        let roundTrip = clock.now - started
        let decoded: DecodeResponse = try Self.read(body, response)
        return DecodeResult(response: decoded, payloadBytes: message.count, roundTrip: roundTrip)
    }

    /// GET `/healthz`: is the server up, and which model does it serve?
    public func health() async throws -> HealthResponse {
        let url = baseURL.appending(path: "healthz", directoryHint: .notDirectory)
        let request = URLRequest(url: url, timeoutInterval: timeout)
        let (body, response) = try await session.data(for: request)
        return try Self.read(body, response)
    }

    static func read<T: Decodable>(_ body: Data, _ response: URLResponse) throws -> T {
        guard let http = response as? HTTPURLResponse else { throw DecoderClientError.notHTTP }
        let decoder = JSONDecoder()
        guard (200..<300).contains(http.statusCode) else {
            let message =
                (try? decoder.decode(ServerErrorBody.self, from: body).error)
                ?? HTTPURLResponse.localizedString(forStatusCode: http.statusCode)
            throw DecoderClientError.server(status: http.statusCode, message: message)
        }
        do {
            return try decoder.decode(T.self, from: body)
        } catch {
            throw DecoderClientError.invalidResponse(String(describing: error))
        }
    }
}

extension Duration {
    /// The duration in milliseconds, for display.
    public var milliseconds: Double {
        let parts = components
        return Double(parts.seconds) * 1_000 + Double(parts.attoseconds) / 1_000_000_000_000_000
    }
}
