import DTCore
import Foundation
import XCTest

#if canImport(FoundationNetworking)
// Linux: URLProtocol, URLSession and friends live in FoundationNetworking.
import FoundationNetworking
#endif

/// What the stub answers and what it was last asked. URLSession loads on its own threads, so
/// under Swift 6 this shared state sits behind a lock rather than in mutable statics.
final class StubState: @unchecked Sendable {
    private let lock = NSLock()
    private var storedAnswer: (status: Int, body: String) = (200, "{}")
    private var storedRequest: URLRequest?

    var answer: (status: Int, body: String) {
        get { locked { storedAnswer } }
        set { locked { storedAnswer = newValue } }
    }

    var lastRequest: URLRequest? {
        get { locked { storedRequest } }
        set { locked { storedRequest = newValue } }
    }

    private func locked<T>(_ body: () -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body()
    }
}

/// Answers every request of a session with a canned response and records what was asked.
final class StubProtocol: URLProtocol {
    static let state = StubState()

    override class func canInit(with request: URLRequest) -> Bool { true }
    override class func canonicalRequest(for request: URLRequest) -> URLRequest { request }

    override func startLoading() {
        Self.state.lastRequest = request
        let answer = Self.state.answer
        let response = HTTPURLResponse(
            url: request.url!, statusCode: answer.status, httpVersion: "HTTP/1.1",
            headerFields: ["Content-Type": "application/json"])!
        client?.urlProtocol(self, didReceive: response, cacheStoragePolicy: .notAllowed)
        client?.urlProtocol(self, didLoad: Data(answer.body.utf8))
        client?.urlProtocolDidFinishLoading(self)
    }

    override func stopLoading() {}
}

/// The client against the API of `dtconvert serve` (POST /v1/decode, GET /healthz), stubbed.
final class DecoderClientTests: XCTestCase {
    var client: DecoderClient!

    override func setUp() {
        let configuration = URLSessionConfiguration.ephemeral
        configuration.protocolClasses = [StubProtocol.self]
        // The base URL is a test fixture: the app takes it from its settings.
        client = DecoderClient(baseURL: URL(string: "http://dtconvert.test:8080")!, session: URLSession(configuration: configuration))
    }

    func testPostsTheWireMessageAndReadsThePredictions() async throws {
        StubProtocol.state.answer = (
            200,
            #"""
            {"model_id": "0123456789abcdef", "tasks": ["digit", "odd"],
             "predictions": [{"digit": [{"label": "3", "index": 3, "score": 0.98}, {"label": "8", "index": 8, "score": 0.01}],
                              "odd": [{"label": "odd", "index": 1, "score": 0.99}]}],
             "timing": {"queue_ms": 0.4, "decode_ms": 1.2, "server_ms": 1.9, "batch_images": 4}}
            """#
        )
        let message = try Wire.encode(WireMessage(modelID: "0123456789abcdef", scale: 0.5, zeroPoint: 0, shape: [1, 2], values: [1, 2]))
        let result = try await client.decode(message, topK: 2)

        let request = try XCTUnwrap(StubProtocol.state.lastRequest)
        XCTAssertEqual(request.httpMethod, "POST")
        XCTAssertEqual(request.url?.path(), "/v1/decode")
        XCTAssertEqual(request.url?.query(), "top_k=2")
        XCTAssertEqual(request.value(forHTTPHeaderField: "Content-Type"), "application/octet-stream")
        XCTAssertEqual(result.payloadBytes, message.count)
        XCTAssertEqual(result.response.tasks, ["digit", "odd"])
        XCTAssertEqual(result.response.predictions.first?["digit"]?.first, Prediction(label: "3", index: 3, score: 0.98))
        XCTAssertEqual(result.response.timing?.batchImages, 4)
        XCTAssertEqual(result.response.timing?.serverMs, 1.9)
        XCTAssertGreaterThanOrEqual(result.roundTrip.milliseconds, 0)
    }

    func testAnErrorAnswerBecomesItsSentence() async throws {
        StubProtocol.state.answer = (
            422, #"{"error": "model id 0000000000000000 is not the loaded model 0123456789abcdef", "status": 422}"#
        )
        do {
            _ = try await client.decode(Data([1, 2, 3]))
            XCTFail("a 422 was taken for an answer")
        } catch let error as DecoderClientError {
            XCTAssertEqual(error, .server(status: 422, message: "model id 0000000000000000 is not the loaded model 0123456789abcdef"))
        }
    }

    func testHealth() async throws {
        StubProtocol.state.answer = (200, #"{"status": "ok", "model_id": "0123456789abcdef"}"#)
        let health = try await client.health()
        XCTAssertEqual(health.modelID, "0123456789abcdef")
        XCTAssertEqual(health.modelIDs, ["0123456789abcdef"])  // an answer without model_ids: the one id
        XCTAssertEqual(StubProtocol.state.lastRequest?.url?.path(), "/healthz")
    }

    func testHealthOfASharedCloud() async throws {
        let body = #"{"status": "ok", "model_id": "0123456789abcdef", "model_ids": ["0123456789abcdef", "fedcba9876543210"]}"#
        StubProtocol.state.answer = (200, body)
        let health = try await client.health()
        XCTAssertTrue(health.serves("fedcba9876543210"))
        XCTAssertFalse(health.serves("0000000000000000"))
    }
}
