import Foundation

/// An 8-bit image as it comes off a camera or out of a decoded file: rows top to bottom,
/// channels interleaved (H × W × C), C = 1 (gray) or 3 (RGB).
public struct PixelImage: Sendable, Equatable {
    public let width: Int
    public let height: Int
    public let channels: Int
    public let pixels: [UInt8]

    public init(width: Int, height: Int, channels: Int, pixels: [UInt8]) {
        precondition(width > 0 && height > 0 && channels > 0, "an image needs at least one pixel and one channel")
        precondition(pixels.count == width * height * channels, "pixels must hold width × height × channels bytes")
        self.width = width
        self.height = height
        self.channels = channels
        self.pixels = pixels
    }

    /// 255 − x for every pixel: for photos of dark ink on light paper when a model was trained
    /// on light strokes on a dark ground (the bundled digits). A user's choice, never automatic.
    public func inverted() -> PixelImage {
        PixelImage(width: width, height: height, channels: channels, pixels: pixels.map { 255 - $0 })
    }
}

public enum PreprocessError: Error, LocalizedError, Equatable {
    case channels(image: Int, model: Int)
    case unsupported(String)

    public var errorDescription: String? {
        switch self {
        case .channels(let image, let model):
            return "the image has \(image) channel(s) but the model takes \(model)"
        case .unsupported(let what):
            return "unsupported preprocessing: \(what)"
        }
    }
}

/// The device input exactly as dtconvert makes it (dtconvert/data.py, docs/manifest.md):
/// uint8 pixels → `x · scale` → `torch.nn.functional.interpolate(mode, align_corners=False,
/// antialias=False)` to `size` → `(x − mean) / std` per channel → NCHW float32.
///
/// Computed in Float32 in torch's order of operations, so it matches the export's golden
/// `input.npy` to float rounding (the XCTests check 1e-5).
public struct Preprocess: Sendable {
    public let spec: Manifest.Preprocessing
    /// `device_input.shape`: `[1, C, H, W]`.
    public let inputShape: [Int]

    public init(_ deviceInput: Manifest.DeviceInputSpec) throws {
        let spec = deviceInput.preprocessing
        guard deviceInput.layout == "NCHW", deviceInput.shape.count == 4 else {
            throw PreprocessError.unsupported("layout \(deviceInput.layout) with shape \(deviceInput.shape)")
        }
        guard spec.size.count == 2, spec.mean.count == spec.channels, spec.std.count == spec.channels,
            deviceInput.shape[1] == spec.channels, Array(deviceInput.shape[2...]) == spec.size
        else {
            throw PreprocessError.unsupported("size \(spec.size), \(spec.channels) channel(s), shape \(deviceInput.shape)")
        }
        guard spec.resize == "bilinear" || spec.resize == "nearest" else {
            throw PreprocessError.unsupported("resize mode \(spec.resize)")
        }
        self.spec = spec
        self.inputShape = deviceInput.shape
    }

    /// One image → the flat NCHW float32 tensor of `inputShape` (batch 1).
    public func apply(to image: PixelImage) throws -> [Float] {
        guard image.channels == spec.channels else {
            throw PreprocessError.channels(image: image.channels, model: spec.channels)
        }
        let outHeight = spec.size[0], outWidth = spec.size[1]
        let scale = Float(spec.scale)
        var tensor = [Float](repeating: 0, count: spec.channels * outHeight * outWidth)
        var plane = [Float](repeating: 0, count: image.width * image.height)
        for channel in 0..<spec.channels {
            for index in 0..<(image.width * image.height) {
                plane[index] = Float(image.pixels[index * image.channels + channel]) * scale
            }
            let resized = resize(plane, height: image.height, width: image.width, toHeight: outHeight, toWidth: outWidth)
            let mean = Float(spec.mean[channel]), std = Float(spec.std[channel])
            let offset = channel * outHeight * outWidth
            for index in 0..<(outHeight * outWidth) {
                tensor[offset + index] = (resized[index] - mean) / std
            }
        }
        return tensor
    }

    func resize(_ plane: [Float], height: Int, width: Int, toHeight: Int, toWidth: Int) -> [Float] {
        if height == toHeight && width == toWidth { return plane }  // torch skips it too
        var out = [Float](repeating: 0, count: toHeight * toWidth)
        if spec.resize == "nearest" {
            let rows = (0..<toHeight).map { Self.nearestIndex($0, input: height, output: toHeight) }
            let columns = (0..<toWidth).map { Self.nearestIndex($0, input: width, output: toWidth) }
            for y in 0..<toHeight {
                for x in 0..<toWidth {
                    out[y * toWidth + x] = plane[rows[y] * width + columns[x]]
                }
            }
            return out
        }
        let rows = (0..<toHeight).map { Self.linearTaps($0, input: height, output: toHeight) }
        let columns = (0..<toWidth).map { Self.linearTaps($0, input: width, output: toWidth) }
        for y in 0..<toHeight {
            let r = rows[y]
            for x in 0..<toWidth {
                let c = columns[x]
                // Width first, then height: the order torch's CPU kernel sums in.
                let top = c.w0 * plane[r.i0 * width + c.i0] + c.w1 * plane[r.i0 * width + c.i1]
                let bottom = c.w0 * plane[r.i1 * width + c.i0] + c.w1 * plane[r.i1 * width + c.i1]
                out[y * toWidth + x] = r.w0 * top + r.w1 * bottom
            }
        }
        return out
    }

    /// torch's linear source index with align_corners=False: `scale · (i + 0.5) − 0.5`,
    /// clamped at 0, scale = input / output; the upper tap stays inside the image.
    static func linearTaps(_ index: Int, input: Int, output: Int) -> (i0: Int, i1: Int, w0: Float, w1: Float) {
        let scale = Float(input) / Float(output)
        let source = max(scale * (Float(index) + 0.5) - 0.5, 0)
        let i0 = min(Int(source.rounded(.down)), input - 1)
        let i1 = i0 < input - 1 ? i0 + 1 : i0
        let w1 = min(max(source - Float(i0), 0), 1)
        return (i0, i1, 1 - w1, w1)
    }

    /// torch's legacy `nearest`: `floor(i · input / output)`, kept inside the image.
    static func nearestIndex(_ index: Int, input: Int, output: Int) -> Int {
        let scale = Float(input) / Float(output)
        return min(Int((Float(index) * scale).rounded(.down)), input - 1)
    }
}
