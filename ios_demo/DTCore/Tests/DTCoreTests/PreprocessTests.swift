import DTCore
import Foundation
import XCTest

final class PreprocessTests: XCTestCase {
    func spec(
        size: [Int], channels: Int = 1, resize: String = "bilinear", mean: [Double], std: [Double]
    ) throws -> Manifest.DeviceInputSpec {
        let json = """
            {"name": "image", "shape": [1, \(channels), \(size[0]), \(size[1])], "dtype": "float32", "layout": "NCHW",
             "preprocessing": {"size": \(size), "channels": \(channels), "resize": "\(resize)",
                               "scale": 0.00392156862745098, "mean": \(mean), "std": \(std)}}
            """
        return try JSONDecoder().decode(Manifest.DeviceInputSpec.self, from: Data(json.utf8))
    }

    /// Expected values from torch: F.interpolate(x / 255, size, mode, align_corners=False,
    /// antialias=False), then (x − mean) / std.
    func testBilinearUpsampleMatchesTorch() throws {
        let preprocess = try Preprocess(spec(size: [4, 4], mean: [0.5], std: [0.25]))
        let image = PixelImage(width: 2, height: 2, channels: 1, pixels: [0, 255, 255, 0])
        let expected: [Float] = [-2, -1, 1, 2, -1, -0.5, 0.5, 1, 1, 0.5, -0.5, -1, 2, 1, -1, -2]
        XCTAssertLessThan(maxAbsDifference(try preprocess.apply(to: image), expected), 1e-5)
    }

    func testNonSquareBilinearAndNearestMatchTorch() throws {
        let image = PixelImage(width: 3, height: 2, channels: 1, pixels: [0, 51, 102, 153, 204, 255])
        let bilinear = try Preprocess(spec(size: [3, 5], mean: [0], std: [1]))
        let expectedBilinear: [Float] = [0, 0.08, 0.2, 0.32, 0.4, 0.3, 0.38, 0.5, 0.62, 0.7, 0.6, 0.68, 0.8, 0.92, 1]
        XCTAssertLessThan(maxAbsDifference(try bilinear.apply(to: image), expectedBilinear), 1e-5)
        let nearest = try Preprocess(spec(size: [3, 5], resize: "nearest", mean: [0], std: [1]))
        let expectedNearest: [Float] = [0, 0, 0.2, 0.2, 0.4, 0, 0, 0.2, 0.2, 0.4, 0.6, 0.6, 0.8, 0.8, 1]
        XCTAssertLessThan(maxAbsDifference(try nearest.apply(to: image), expectedNearest), 1e-5)
    }

    func testBilinearDownsampleHasNoAntialiasLikeTorch() throws {
        let image = PixelImage(width: 5, height: 5, channels: 1, pixels: (0..<25).map { UInt8($0 * 10) })
        let preprocess = try Preprocess(spec(size: [2, 2], mean: [0], std: [1]))
        let expected: [Float] = [0.17647059, 0.27450982, 0.66666675, 0.7647059]
        XCTAssertLessThan(maxAbsDifference(try preprocess.apply(to: image), expected), 1e-5)
    }

    func testRGBIsNormalizedPerChannelIntoNCHW() throws {
        let preprocess = try Preprocess(spec(size: [1, 2], channels: 3, mean: [0, 0.5, 1], std: [1, 0.5, 0.25]))
        let image = PixelImage(width: 2, height: 1, channels: 3, pixels: [255, 0, 255, 0, 255, 0])
        XCTAssertLessThan(maxAbsDifference(try preprocess.apply(to: image), [1, 0, -1, 1, 0, -4]), 1e-6)
        XCTAssertThrowsError(try preprocess.apply(to: PixelImage(width: 2, height: 1, channels: 1, pixels: [0, 0])))
    }

    /// The export's raw held-out digits, preprocessed here, equal the golden input.npy that the
    /// Linux export computed with torch, to 1e-5.
    func testMatchesTheExportsGoldenInput() throws {
        let export = try TestData.export()
        let images = try export.heldoutImages()
        guard !images.isEmpty else { throw XCTSkip("this export ships no raw held-out images (not a digits export)") }
        let golden = try TestData.golden("input.npy", in: export).floats
        let preprocess = try Preprocess(export.manifest.deviceInput)
        let perImage = preprocess.inputShape.reduce(1, *)
        XCTAssertEqual(golden.count, images.count * perImage)
        for (index, image) in images.enumerated() {
            let expected = Array(golden[(index * perImage)..<((index + 1) * perImage)])
            let got = try preprocess.apply(to: image)
            XCTAssertLessThan(maxAbsDifference(got, expected), 1e-5, "held-out image \(index)")
        }

        // Twin: one pixel one level brighter is outside the bound, so the bound means something.
        var pixels = images[0].pixels
        let brightest = pixels.indices.max { pixels[$0] < pixels[$1] } ?? 0
        pixels[brightest] = pixels[brightest] == 255 ? 254 : pixels[brightest] + 1
        let nudged = PixelImage(width: images[0].width, height: images[0].height, channels: images[0].channels, pixels: pixels)
        XCTAssertGreaterThan(maxAbsDifference(try preprocess.apply(to: nudged), Array(golden[0..<perImage])), 1e-5)
    }
}
