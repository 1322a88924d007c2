import Foundation

/// Why bytes are not a valid wire message; the text names the field, as dtconvert/wire.py does.
public struct WireError: Error, LocalizedError, Equatable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
    public var errorDescription: String? { message }
}

/// One wire-format v1 message (docs/wire-format.md): an int8 tensor, batch first, with the
/// quantization that made it and the id of the model it is for.
public struct WireMessage: Equatable, Sendable {
    /// 16 lowercase hex digits: the manifest's `model.id`.
    public var modelID: String
    /// Bit i requests the manifest's task i; 0 means every task.
    public var taskMask: UInt32
    public var scale: Float
    public var zeroPoint: Int32
    public var shape: [Int]
    /// Row-major (C order), `shape.reduce(1, *)` values.
    public var values: [Int8]

    public init(modelID: String, taskMask: UInt32 = 0, scale: Float, zeroPoint: Int32, shape: [Int], values: [Int8]) {
        self.modelID = modelID
        self.taskMask = taskMask
        self.scale = scale
        self.zeroPoint = zeroPoint
        self.shape = shape
        self.values = values
    }
}

/// The wire format, version 1: little-endian throughout, byte for byte what dtconvert/wire.py
/// writes and reads (the XCTests compare with tests/golden/wire/*.bin).
///
///     offset  size  field
///     0       4     magic          "DTW1"
///     4       2     version        uint16, 1
///     6       2     header_bytes   uint16, 32 + 4·rank
///     8       8     model_id       8 raw bytes (16 hex digits)
///     16      4     task_mask      uint32
///     20      1     dtype          uint8, 1 = int8
///     21      1     rank           uint8, 1..8
///     22      2     reserved       zero
///     24      4     scale          float32, finite, > 0
///     28      4     zero_point     int32, −128..127
///     32      4·r   shape          uint32 each, ≥ 1
///     h       n     payload        int8, row-major
public enum Wire {
    public static let magic: [UInt8] = Array("DTW1".utf8)
    public static let version: UInt16 = 1
    public static let fixedHeaderBytes = 32
    public static let int8Code: UInt8 = 1
    public static let maxRank = 8
    /// The HTTP media type of a wire message.
    public static let contentType = "application/octet-stream"

    /// `q = clamp(round_half_even(x / scale) + zero_point, −128, 127)` in Float32, as
    /// dtconvert.quantize.quantize_wire (NumPy) computes it; NaN maps to the zero point.
    public static func quantize(_ values: [Float], scale: Float, zeroPoint: Int) -> [Int8] {
        let zero = Float(zeroPoint)
        return values.map { x in
            let q = (x / scale).rounded(.toNearestOrEven) + zero
            if q.isNaN { return Int8(clamping: zeroPoint) }
            return Int8(Swift.min(Swift.max(q, -128), 127))
        }
    }

    /// `x = (q − zero_point) · scale`, the decoder's first step.
    public static func dequantize(_ values: [Int8], scale: Float, zeroPoint: Int) -> [Float] {
        let zero = Float(zeroPoint)
        return values.map { (Float($0) - zero) * scale }
    }

    /// Serialize a message; throws for what the format cannot carry.
    public static func encode(_ message: WireMessage) throws -> Data {
        let rank = message.shape.count
        guard (1...maxRank).contains(rank) else { throw WireError("tensor rank must be 1..\(maxRank), got \(rank)") }
        guard message.shape.allSatisfy({ $0 >= 1 && $0 <= Int(UInt32.max) }) else {
            throw WireError("shape \(message.shape) has a dimension outside 1..\(UInt32.max)")
        }
        let count = message.shape.reduce(1, *)
        guard message.values.count == count else {
            throw WireError("shape \(message.shape) needs \(count) values, got \(message.values.count)")
        }
        guard message.scale.isFinite, message.scale > 0 else { throw WireError("scale must be finite and positive, got \(message.scale)") }
        guard (-128...127).contains(message.zeroPoint) else { throw WireError("zero_point must be in -128..127, got \(message.zeroPoint)") }
        let modelBytes = try modelIDBytes(message.modelID)

        var data = Data(capacity: fixedHeaderBytes + 4 * rank + count)
        data.append(contentsOf: magic)
        data.appendLittleEndian(version)
        data.appendLittleEndian(UInt16(fixedHeaderBytes + 4 * rank))
        data.append(contentsOf: modelBytes)
        data.appendLittleEndian(message.taskMask)
        data.append(int8Code)
        data.append(UInt8(rank))
        data.appendLittleEndian(UInt16(0))
        data.appendLittleEndian(message.scale.bitPattern)
        data.appendLittleEndian(message.zeroPoint)
        for dim in message.shape {
            data.appendLittleEndian(UInt32(dim))
        }
        data.append(contentsOf: message.values.map { UInt8(bitPattern: $0) })
        return data
    }

    /// Parse and validate a message, checking every field in the order dtconvert/wire.py does
    /// and naming the first problem. `maxBytes` is checked before anything else is read.
    public static func decode(_ data: Data, maxBytes: Int? = nil) throws -> WireMessage {
        let bytes = [UInt8](data)
        if let maxBytes, bytes.count > maxBytes {
            throw WireError("payload is \(bytes.count) bytes, more than the limit of \(maxBytes)")
        }
        guard bytes.count >= fixedHeaderBytes else {
            throw WireError("payload is \(bytes.count) bytes, shorter than the \(fixedHeaderBytes)-byte header")
        }
        guard Array(bytes[0..<4]) == magic else { throw WireError("bad magic \(Array(bytes[0..<4])), expected DTW1") }
        let version = UInt16(littleEndian: bytes, at: 4)
        guard version == Self.version else {
            throw WireError("unsupported wire format version \(version) (this reader speaks \(Self.version))")
        }
        let headerBytes = Int(UInt16(littleEndian: bytes, at: 6))
        let modelID = bytes[8..<16].map { String(format: "%02x", $0) }.joined()
        let taskMask = UInt32(littleEndian: bytes, at: 16)
        let dtype = bytes[20]
        let rank = Int(bytes[21])
        let reserved = UInt16(littleEndian: bytes, at: 22)
        let scale = Float(bitPattern: UInt32(littleEndian: bytes, at: 24))
        let zeroPoint = Int32(bitPattern: UInt32(littleEndian: bytes, at: 28))
        guard dtype == int8Code else { throw WireError("unknown dtype code \(dtype) (1 = int8)") }
        guard (1...maxRank).contains(rank) else { throw WireError("rank must be 1..\(maxRank), got \(rank)") }
        guard reserved == 0 else { throw WireError("reserved header bytes must be zero") }
        guard headerBytes == fixedHeaderBytes + 4 * rank else {
            throw WireError("header_bytes is \(headerBytes), expected \(fixedHeaderBytes + 4 * rank) for rank \(rank)")
        }
        guard scale.isFinite, scale > 0 else { throw WireError("scale must be finite and positive, got \(scale)") }
        guard (-128...127).contains(zeroPoint) else { throw WireError("zero_point must be in -128..127, got \(zeroPoint)") }
        guard bytes.count >= headerBytes else {
            throw WireError("payload is \(bytes.count) bytes, shorter than its \(headerBytes)-byte header")
        }
        let shape = (0..<rank).map { Int(UInt32(littleEndian: bytes, at: fixedHeaderBytes + 4 * $0)) }
        guard !shape.contains(0) else { throw WireError("shape \(shape) has a zero dimension") }
        let body = bytes.count - headerBytes
        var count = 1
        for dim in shape {
            let (product, overflow) = count.multipliedReportingOverflow(by: dim)
            // A shape too large to count cannot match any body that fits in memory.
            count = overflow ? Int.max : product
        }
        guard body == count else {
            let problem = body < count ? "truncated" : "has trailing bytes"
            throw WireError("tensor data \(problem): shape \(shape) needs \(count) bytes, got \(body)")
        }
        let values = bytes[headerBytes...].map { Int8(bitPattern: $0) }
        return WireMessage(modelID: modelID, taskMask: taskMask, scale: scale, zeroPoint: zeroPoint, shape: shape, values: values)
    }

    static func modelIDBytes(_ modelID: String) throws -> [UInt8] {
        let digits = Array(modelID.utf8)
        guard digits.count == 16 else { throw WireError("model id must be 16 hex digits, got \"\(modelID)\"") }
        var bytes: [UInt8] = []
        for pair in stride(from: 0, to: 16, by: 2) {
            guard let high = hexValue(digits[pair]), let low = hexValue(digits[pair + 1]) else {
                throw WireError("model id must be 16 hex digits, got \"\(modelID)\"")
            }
            bytes.append(high << 4 | low)
        }
        return bytes
    }

    private static func hexValue(_ character: UInt8) -> UInt8? {
        switch character {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return character - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return character - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return character - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}

extension Data {
    mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }
}

extension FixedWidthInteger {
    /// Read `Self` little-endian from `bytes` at `offset` (the caller checked the length).
    init(littleEndian bytes: [UInt8], at offset: Int) {
        var value: Self = 0
        for index in 0..<(Self.bitWidth / 8) {
            value |= Self(truncatingIfNeeded: bytes[offset + index]) << (8 * index)
        }
        self = value
    }
}
