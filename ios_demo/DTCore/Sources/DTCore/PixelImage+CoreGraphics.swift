#if canImport(CoreGraphics) && canImport(ImageIO)
import CoreGraphics
import Foundation
import ImageIO

public enum ImageDecodingError: Error, LocalizedError, Equatable {
    case unreadable
    case unsupportedChannels(Int)
    case drawingFailed

    public var errorDescription: String? {
        switch self {
        case .unreadable: return "not a readable image"
        case .unsupportedChannels(let channels): return "models take 1 (gray) or 3 (RGB) channels, not \(channels)"
        case .drawingFailed: return "could not draw the image into an 8-bit buffer"
        }
    }
}

extension PixelImage {
    /// Decode image file bytes (JPEG, PNG, HEIC, …) upright, at full resolution, like PIL's
    /// `Image.open` in dtconvert's image-folder loader.
    public init(imageData: Data, channels: Int) throws {
        guard let source = CGImageSourceCreateWithData(imageData as CFData, nil) else {
            throw ImageDecodingError.unreadable
        }
        // A thumbnail with no size limit and the EXIF transform applied is the upright image
        // at full resolution; camera photos are stored rotated and carry their orientation.
        let options: [CFString: Any] = [
            kCGImageSourceCreateThumbnailFromImageAlways: true,
            kCGImageSourceCreateThumbnailWithTransform: true,
        ]
        guard let image = CGImageSourceCreateThumbnailAtIndex(source, 0, options as CFDictionary) else {
            throw ImageDecodingError.unreadable
        }
        try self.init(cgImage: image, channels: channels)
    }

    /// Draw `cgImage` into an 8-bit RGB buffer and keep `channels` channels: 3 = RGB, 1 = luma
    /// with PIL's integer ITU-R 601-2 weights (`Image.convert("L")`), the conversion dtconvert
    /// trains and verifies with.
    public init(cgImage: CGImage, channels: Int) throws {
        guard channels == 1 || channels == 3 else { throw ImageDecodingError.unsupportedChannels(channels) }
        let width = cgImage.width, height = cgImage.height
        var rgbx = [UInt8](repeating: 0, count: width * height * 4)
        let colorSpace = CGColorSpace(name: CGColorSpace.sRGB) ?? CGColorSpaceCreateDeviceRGB()
        let drawn = rgbx.withUnsafeMutableBytes { buffer -> Bool in
            guard
                let context = CGContext(
                    data: buffer.baseAddress, width: width, height: height,
                    bitsPerComponent: 8, bytesPerRow: width * 4, space: colorSpace,
                    bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue)
            else { return false }
            context.draw(cgImage, in: CGRect(x: 0, y: 0, width: width, height: height))
            return true
        }
        guard drawn else { throw ImageDecodingError.drawingFailed }
        var pixels = [UInt8](repeating: 0, count: width * height * channels)
        for index in 0..<(width * height) {
            let r = UInt32(rgbx[4 * index]), g = UInt32(rgbx[4 * index + 1]), b = UInt32(rgbx[4 * index + 2])
            if channels == 1 {
                pixels[index] = UInt8((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16)
            } else {
                pixels[3 * index] = UInt8(r)
                pixels[3 * index + 1] = UInt8(g)
                pixels[3 * index + 2] = UInt8(b)
            }
        }
        self.init(width: width, height: height, channels: channels, pixels: pixels)
    }

    /// The image as a CGImage, for showing it (gray or RGB, no alpha).
    public func cgImage() -> CGImage? {
        let colorSpace = channels == 1 ? CGColorSpaceCreateDeviceGray() : CGColorSpaceCreateDeviceRGB()
        guard channels == 1 || channels == 3,
            let provider = CGDataProvider(data: Data(pixels) as CFData)
        else { return nil }
        return CGImage(
            width: width, height: height, bitsPerComponent: 8, bitsPerPixel: 8 * channels,
            bytesPerRow: width * channels, space: colorSpace,
            bitmapInfo: CGBitmapInfo(rawValue: CGImageAlphaInfo.none.rawValue),
            provider: provider, decode: nil, shouldInterpolate: false, intent: .defaultIntent)
    }
}
#endif
