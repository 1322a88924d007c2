import DTCore
import Foundation
import XCTest

#if canImport(FoundationNetworking)
// Linux: URLProtocol, URLSession and friends live in FoundationNetworking.
import FoundationNetworking
#endif

/// One canned answer of the stub.
struct StubAnswer: Sendable {
    let status: Int
    let body: String
    var headers: [String: String] = [:]
}

/// What the stub answers and what it was asked. URLSession loads on its own threads, so under
/// Swift 6 this shared state sits behind a lock rather than in mutable statics.
final class StubState: @unchecked Sendable {
    private let lock = NSLock()
    private var script: [StubAnswer] = [StubAnswer(status: 200, body: "{}")]
    private var storedRequests: [URLRequest] = []

    /// Answer every request the same way (and forget earlier requests).
    var answer: (status: Int, body: String) {
        get { locked { (script[0].status, script[0].body) } }
        set { play([StubAnswer(status: newValue.status, body: newValue.body)]) }
    }

    /// Answer the n-th request with `answers[n]`, the last one again once they run out.
    func play(_ answers: [StubAnswer]) {
        locked {
            script = answers
            storedRequests = []
        }
    }

    /// Record a request and return its answer.
    func next(for request: URLRequest) -> StubAnswer {
        locked {
            storedRequests.append(request)
            return script[min(storedRequests.count, script.count) - 1]
        }
    }

    var requests: [URLRequest] { locked { storedRequests } }

    var lastRequest: URLRequest? { requests.last }

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
        let answer = Self.state.next(for: request)
        let response = HTTPURLResponse(
            url: request.url!, statusCode: answer.status, httpVersion: "HTTP/1.1",
            headerFields: answer.headers.merging(["Content-Type": "application/json"]) { old, _ in old })!
        client?.urlProtocol(self, didReceive: response, cacheStoragePolicy: .notAllowed)
        client?.urlProtocol(self, didLoad: Data(answer.body.utf8))
        client?.urlProtocolDidFinishLoading(self)
    }

    override func stopLoading() {}
}

/// The client against the API of `dtconvert serve` (POST /v1/decode, GET /healthz), stubbed.
final class DecoderClientTests: XCTestCase {
    var client: DecoderClient!
    var session: URLSession!

    override func setUp() {
        let configuration = URLSessionConfiguration.ephemeral
        configuration.protocolClasses = [StubProtocol.self]
        session = URLSession(configuration: configuration)
        // The base URL is a test fixture: the app takes it from its settings.
        client = DecoderClient(baseURL: URL(string: "http://dtconvert.test:8080")!, session: session)
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

/// The waits a client asked for, instead of waiting.
actor Waits {
    private(set) var asked: [Duration] = []

    func record(_ wait: Duration) { asked.append(wait) }
}

/// Overload, authentication and HTTPS: what `dtconvert serve` answers under load or with
/// `--token-file`, stubbed (docs/serving.md).
final class DecoderClientHardeningTests: XCTestCase {
    static let decoded = #"{"model_id": "0123456789abcdef", "tasks": ["digit"], "predictions": [{"digit": []}]}"#
    static let busy = #"{"error": "the decode queue is full (64 images waiting); try again shortly", "status": 503}"#
    static let unauthorized = #"{"error": "this server needs a bearer token (Authorization: Bearer ...)", "status": 401}"#
    static let token = "s3cret-T0ken_for+tests/="

    var session: URLSession!
    let waits = Waits()

    override func setUp() {
        let configuration = URLSessionConfiguration.ephemeral
        configuration.protocolClasses = [StubProtocol.self]
        session = URLSession(configuration: configuration)
    }

    func client(_ url: String = "http://dtconvert.test:8080", token: String? = nil, retry: RetryPolicy = RetryPolicy()) -> DecoderClient {
        let waits = self.waits
        return DecoderClient(baseURL: URL(string: url)!, token: token, retry: retry, session: session, sleep: { await waits.record($0) })
    }

    static func busy(_ retryAfter: String?) -> StubAnswer {
        StubAnswer(status: 503, body: busy, headers: retryAfter.map { ["Retry-After": $0] } ?? [:])
    }

    func testWaitsWhatRetryAfterAsksAndRetriesA503() async throws {
        StubProtocol.state.play([Self.busy("2"), StubAnswer(status: 200, body: Self.decoded)])
        let result = try await client().decode(Data([1, 2, 3]))
        XCTAssertEqual(result.response.modelID, "0123456789abcdef")
        XCTAssertEqual(StubProtocol.state.requests.count, 2)
        let asked = await waits.asked
        XCTAssertEqual(asked, [.seconds(2)])
    }

    func testCapsEachWaitAndGivesUpWithThe503sSentence() async throws {
        StubProtocol.state.play([Self.busy("3600")])
        do {
            _ = try await client().decode(Data([1, 2, 3]))
            XCTFail("a 503 was taken for an answer")
        } catch let error as DecoderClientError {
            XCTAssertEqual(error, .server(status: 503, message: "the decode queue is full (64 images waiting); try again shortly"))
        }
        XCTAssertEqual(StubProtocol.state.requests.count, 4, "one request and three retries")
        let asked = await waits.asked
        XCTAssertEqual(asked, [.seconds(5), .seconds(5), .seconds(5)])
        // Twin: two retries stop one request earlier.
        StubProtocol.state.play([Self.busy("1")])
        _ = try? await client(retry: RetryPolicy(maxRetries: 2)).decode(Data([1]))
        XCTAssertEqual(StubProtocol.state.requests.count, 3)
    }

    func testAMissingOrUnreadableRetryAfterWaitsTheDefault() async throws {
        StubProtocol.state.play([Self.busy(nil), Self.busy("soon"), Self.busy("-1"), StubAnswer(status: 200, body: Self.decoded)])
        _ = try await client().decode(Data([1]))
        let asked = await waits.asked
        XCTAssertEqual(asked, [.seconds(1), .seconds(1), .seconds(1)])
        XCTAssertEqual(RetryPolicy().wait(retryAfter: "0"), .zero)
        XCTAssertEqual(RetryPolicy().wait(retryAfter: "\(Int64.max)"), .seconds(5))
    }

    // Twin of the retries: a 4xx is asked once, and RetryPolicy.none retries nothing.
    func testNeverRetriesA4xxAndNothingUnderRetryPolicyNone() async throws {
        // With a realm: Linux's FoundationNetworking (Swift 6.0.3) traps on a bare `WWW-Authenticate: Bearer`
        // (its challenge parser), real socket or stub alike; Apple's URLSession takes either.
        let challenge = ["WWW-Authenticate": #"Bearer realm="dtconvert""#]
        StubProtocol.state.play([StubAnswer(status: 401, body: Self.unauthorized, headers: challenge)])
        do {
            _ = try await client().decode(Data([1]))
            XCTFail("a 401 was taken for an answer")
        } catch let error as DecoderClientError {
            XCTAssertEqual(error, .server(status: 401, message: "this server needs a bearer token (Authorization: Bearer ...)"))
        }
        XCTAssertEqual(StubProtocol.state.requests.count, 1)
        StubProtocol.state.play([Self.busy("1"), StubAnswer(status: 200, body: Self.decoded)])
        _ = try? await client(retry: .none).decode(Data([1]))
        XCTAssertEqual(StubProtocol.state.requests.count, 1)
        let asked = await waits.asked
        XCTAssertEqual(asked, [])
    }

    func testSendsTheBearerTokenOnEveryRequestAndNoneWithout() async throws {
        let health = #"{"status": "ok", "model_id": "0123456789abcdef"}"#
        StubProtocol.state.play([StubAnswer(status: 200, body: Self.decoded), StubAnswer(status: 200, body: health)])
        let authorized = client(token: " \(Self.token)\n")
        XCTAssertTrue(authorized.hasToken)
        _ = try await authorized.decode(Data([1]))
        _ = try await authorized.health()
        let sent = StubProtocol.state.requests.map { $0.value(forHTTPHeaderField: "Authorization") }
        XCTAssertEqual(sent, ["Bearer \(Self.token)", "Bearer \(Self.token)"])
        // Twin: no token, no header.
        StubProtocol.state.play([StubAnswer(status: 200, body: Self.decoded)])
        _ = try await client(token: "  ").decode(Data([1]))
        XCTAssertNil(StubProtocol.state.lastRequest?.value(forHTTPHeaderField: "Authorization"))
    }

    func testRefusesATokenThatCannotBeAHeaderWithoutRepeatingIt() async throws {
        for bad in ["two words", "tab\there", "caf\u{e9}"] {
            do {
                _ = try await client(token: bad).decode(Data([1]))
                XCTFail("token \(bad) was accepted")
            } catch {
                XCTAssertEqual(error as? DecoderClientError, .invalidToken)
                XCTAssertFalse(error.localizedDescription.contains(bad))
            }
        }
    }

    func testTalksToAnHTTPSServerAndRefusesOtherSchemes() async throws {
        StubProtocol.state.play([StubAnswer(status: 200, body: Self.decoded)])
        _ = try await client("https://dtconvert.test:8443", token: Self.token).decode(Data([1]))
        let request = try XCTUnwrap(StubProtocol.state.lastRequest)
        XCTAssertEqual(request.url?.scheme, "https")
        XCTAssertEqual(request.url?.path(), "/v1/decode")
        XCTAssertEqual(request.value(forHTTPHeaderField: "Authorization"), "Bearer \(Self.token)")
        // Twin: a scheme that is not HTTP(S) never leaves the client.
        StubProtocol.state.play([StubAnswer(status: 200, body: Self.decoded)])
        do {
            _ = try await client("ftp://dtconvert.test").health()
            XCTFail("an ftp URL was used")
        } catch {
            XCTAssertEqual(error as? DecoderClientError, .unsupportedURL("ftp://dtconvert.test"))
        }
        XCTAssertEqual(StubProtocol.state.requests.count, 0)
    }
}
