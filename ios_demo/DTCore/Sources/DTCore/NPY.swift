import Foundation

/// A NumPy `.npy` array (format versions 1–3, C order, little-endian or single-byte types): how
/// `dtconvert export` stores its golden inputs and outputs, read here without NumPy.
public struct NPYArray: Sendable {
    public enum Scalars: Sendable, Equatable {
        case float32([Float])
        case float64([Double])
        case int8([Int8])
        case uint8([UInt8])
        case int32([Int32])
        case int64([Int64])
    }

    public let shape: [Int]
    public let scalars: Scalars

    public var count: Int { shape.reduce(1, *) }

    public init(contentsOf url: URL) throws {
        try self.init(data: Data(contentsOf: url), source: url.lastPathComponent)
    }

    public init(data: Data, source: String = "array") throws {
        let bytes = [UInt8](data)
        let magic: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]  // "\x93NUMPY"
        guard bytes.count >= 10, Array(bytes[0..<6]) == magic else {
            throw NPYError.invalid(source, "not an .npy file (bad magic)")
        }
        let major = bytes[6]
        let headerStart: Int
        let headerLength: Int
        switch major {
        case 1:
            headerStart = 10
            headerLength = Int(bytes[8]) | Int(bytes[9]) << 8
        case 2, 3:
            guard bytes.count >= 12 else { throw NPYError.invalid(source, "truncated header") }
            headerStart = 12
            headerLength = Int(bytes[8]) | Int(bytes[9]) << 8 | Int(bytes[10]) << 16 | Int(bytes[11]) << 24
        default:
            throw NPYError.invalid(source, "unsupported .npy version \(major)")
        }
        guard bytes.count >= headerStart + headerLength else { throw NPYError.invalid(source, "truncated header") }
        let header = String(decoding: bytes[headerStart..<(headerStart + headerLength)], as: UTF8.self)

        guard let descr = Self.quotedValue(of: "descr", in: header) else { throw NPYError.invalid(source, "header has no descr") }
        if header.range(of: "'fortran_order': True") != nil {
            throw NPYError.invalid(source, "Fortran-order arrays are not supported")
        }
        guard let shape = Self.parseShape(in: header) else { throw NPYError.invalid(source, "header has no shape") }
        self.shape = shape

        let count = shape.reduce(1, *)
        let body = headerStart + headerLength
        func payload(_ width: Int) throws -> ArraySlice<UInt8> {
            guard bytes.count - body == count * width else {
                throw NPYError.invalid(source, "data is \(bytes.count - body) bytes, shape \(shape) of \(descr) needs \(count * width)")
            }
            return bytes[body...]
        }
        switch descr {
        case "<f4":
            let raw = try payload(4)
            scalars = .float32((0..<count).map { Float(bitPattern: Self.littleEndian(raw, at: body + 4 * $0, width: 4) as UInt32) })
        case "<f8":
            let raw = try payload(8)
            scalars = .float64((0..<count).map { Double(bitPattern: Self.littleEndian(raw, at: body + 8 * $0, width: 8) as UInt64) })
        case "|i1":
            let raw = try payload(1)
            scalars = .int8(raw.map { Int8(bitPattern: $0) })
        case "|u1":
            let raw = try payload(1)
            scalars = .uint8(Array(raw))
        case "<i4":
            let raw = try payload(4)
            scalars = .int32((0..<count).map { Int32(bitPattern: Self.littleEndian(raw, at: body + 4 * $0, width: 4) as UInt32) })
        case "<i8":
            let raw = try payload(8)
            scalars = .int64((0..<count).map { Int64(bitPattern: Self.littleEndian(raw, at: body + 8 * $0, width: 8) as UInt64) })
        default:
            throw NPYError.invalid(source, "unsupported dtype \(descr)")
        }
    }

    /// The values as Float (float32 arrays as they are; others converted).
    public var floats: [Float] {
        switch scalars {
        case .float32(let values): return values
        case .float64(let values): return values.map { Float($0) }
        case .int8(let values): return values.map { Float($0) }
        case .uint8(let values): return values.map { Float($0) }
        case .int32(let values): return values.map { Float($0) }
        case .int64(let values): return values.map { Float($0) }
        }
    }

    private static func littleEndian<T: FixedWidthInteger & UnsignedInteger>(_ bytes: ArraySlice<UInt8>, at offset: Int, width: Int) -> T {
        var value: T = 0
        for index in 0..<width {
            value |= T(bytes[offset + index]) << (8 * index)
        }
        return value
    }

    // Headers look like: {'descr': '<f4', 'fortran_order': False, 'shape': (8, 1, 16, 16), }
    private static func quotedValue(of key: String, in header: String) -> String? {
        guard let keyRange = header.range(of: "'\(key)':") else { return nil }
        let rest = header[keyRange.upperBound...]
        guard let open = rest.firstIndex(of: "'") else { return nil }
        let afterOpen = rest.index(after: open)
        guard let close = rest[afterOpen...].firstIndex(of: "'") else { return nil }
        return String(rest[afterOpen..<close])
    }

    private static func parseShape(in header: String) -> [Int]? {
        guard let keyRange = header.range(of: "'shape':") else { return nil }
        let rest = header[keyRange.upperBound...]
        guard let open = rest.firstIndex(of: "("), let close = rest.firstIndex(of: ")"), open < close else { return nil }
        let inside = rest[rest.index(after: open)..<close]
        var dims: [Int] = []
        for part in inside.split(separator: ",") {
            let text = part.trimmingCharacters(in: .whitespaces)
            if text.isEmpty { continue }
            guard let dim = Int(text), dim >= 0 else { return nil }
            dims.append(dim)
        }
        return dims
    }
}

public enum NPYError: Error, LocalizedError, Equatable {
    case invalid(String, String)

    public var errorDescription: String? {
        switch self {
        case .invalid(let source, let reason): return "\(source): \(reason)"
        }
    }
}
