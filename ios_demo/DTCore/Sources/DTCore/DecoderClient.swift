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
    /// The base URL is not `http://` or `https://`.
    case unsupportedURL(String)
    /// The token cannot be sent as a header value (the token itself is never repeated).
    case invalidToken

    public var errorDescription: String? {
        switch self {
        case .server(let status, let message): return "server answered \(status): \(message)"
        case .notHTTP: return "the answer was not HTTP"
        case .invalidResponse(let reason): return "the server's answer could not be read: \(reason)"
        case .unsupportedURL(let url): return "server URL '\(url)' must use the http or https scheme"
        case .invalidToken: return "the server token must be printable ASCII without spaces"
        }
    }
}

/// How `DecoderClient` treats an overloaded server (`503` with `Retry-After: <seconds>`): wait what
/// the server asks, but at most `maxWait` (a missing or unreadable header waits `defaultWait`),
/// and ask again, at most `maxRetries` times; then the 503 surfaces as `DecoderClientError.server`.
///
/// Only a 503 is retried. A 4xx is the request's own fault and would fail the same way again, and
/// a refused connection means no server is listening, which a few seconds rarely fix and which
/// retrying would only hide.
public struct RetryPolicy: Sendable, Equatable {
    public var maxRetries: Int
    public var maxWait: Duration
    public var defaultWait: Duration

    public init(maxRetries: Int = 3, maxWait: Duration = .seconds(5), defaultWait: Duration = .seconds(1)) {
        self.maxRetries = max(0, maxRetries)
        self.maxWait = maxWait
        self.defaultWait = defaultWait
    }

    /// Never retry: the first 503 surfaces at once.
    public static let none = RetryPolicy(maxRetries: 0)

    /// How long to wait before the next try, given the 503's `Retry-After` header (nil when absent).
    public func wait(retryAfter: String?) -> Duration {
        guard let text = retryAfter?.trimmingCharacters(in: .whitespaces), let seconds = Int64(text), seconds >= 0 else {
            return min(defaultWait, maxWait)
        }
        // Compare in seconds first: a huge header must not overflow.
        return seconds > maxWait.components.seconds ? maxWait : min(.seconds(seconds), maxWait)
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
///
/// `baseURL` may be `http://` or `https://` (a server started with `--tls-cert`; the certificate is
/// checked by the system). `token`, when set, goes out as `Authorization: Bearer <token>` (a server
/// started with `--token-file`); it is never logged or put into an error. A 503 is retried as
/// `retry` says, waiting with `sleep` (tests record the waits instead).
public struct DecoderClient: Sendable {
    public let baseURL: URL
    public let session: URLSession
    public let timeout: TimeInterval
    public let retry: RetryPolicy
    private let token: String?
    private let sleep: @Sendable (Duration) async throws -> Void

    public init(
        baseURL: URL, token: String? = nil, retry: RetryPolicy = RetryPolicy(), session: URLSession = .shared,
        timeout: TimeInterval = 10, sleep: @escaping @Sendable (Duration) async throws -> Void = { try await Task.sleep(for: $0) }
    ) {
        self.baseURL = baseURL
        let trimmed = token?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        self.token = trimmed.isEmpty ? nil : trimmed
        self.retry = retry
        self.session = session
        self.timeout = timeout
        self.sleep = sleep
    }

    /// Whether requests carry a bearer token.
    public var hasToken: Bool { token != nil }

    /// POST one wire message (batch ≥ 1) to `/v1/decode?top_k=K` as application/octet-stream.
    public func decode(_ message: Data, topK: Int = 3) async throws -> DecodeResult {
        let url =
            baseURL
            .appending(path: "v1/decode", directoryHint: .notDirectory)
            .appending(queryItems: [URLQueryItem(name: "top_k", value: String(topK))])
        var request = try prepared(URLRequest(url: url, timeoutInterval: timeout))
        request.httpMethod = "POST"
        request.setValue(Wire.contentType, forHTTPHeaderField: "Content-Type")
        let clock = ContinuousClock()
        let started = clock.now
        let (body, response) = try await retrying { try await session.upload(for: request, from: message) }
        let roundTrip = clock.now - started
        let decoded: DecodeResponse = try Self.read(body, response)
        return DecodeResult(response: decoded, payloadBytes: message.count, roundTrip: roundTrip)
    }

    /// GET `/healthz`: is the server up, and which model does it serve?
    public func health() async throws -> HealthResponse {
        let url = baseURL.appending(path: "healthz", directoryHint: .notDirectory)
        let request = try prepared(URLRequest(url: url, timeoutInterval: timeout))
        let (body, response) = try await retrying { try await session.data(for: request) }
        return try Self.read(body, response)
    }

    /// The request with what every request carries: JSON accepted, the token if any. Refuses a
    /// URL that is not HTTP(S) and a token that cannot be a header value.
    private func prepared(_ request: URLRequest) throws -> URLRequest {
        guard let scheme = baseURL.scheme?.lowercased(), scheme == "http" || scheme == "https" else {
            throw DecoderClientError.unsupportedURL(baseURL.absoluteString)
        }
        var request = request
        request.setValue("application/json", forHTTPHeaderField: "Accept")
        if let token {
            guard token.unicodeScalars.allSatisfy({ $0.value >= 0x21 && $0.value <= 0x7E }) else { throw DecoderClientError.invalidToken }
            request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization")
        }
        return request
    }

    /// Run `send`, and again after the server's `Retry-After` while it answers 503, as `retry` says.
    private func retrying(_ send: () async throws -> (Data, URLResponse)) async throws -> (Data, URLResponse) {
        var retries = 0
        while true {
            let (body, response) = try await send()
            guard let http = response as? HTTPURLResponse, http.statusCode == Self.overloaded, retries < retry.maxRetries else {
                return (body, response)
            }
            try await sleep(retry.wait(retryAfter: http.value(forHTTPHeaderField: "Retry-After")))
            retries += 1
        }
    }

    /// The overloaded server's status, the only one retried.
    static let overloaded = 503

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
