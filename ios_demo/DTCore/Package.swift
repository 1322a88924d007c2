// swift-tools-version: 6.0
// DTCore: everything the demo app needs that is not UI — the export's manifest, preprocessing,
// the wire format, the HTTP client for `dtconvert serve`, top-k and the Core ML runner.
// No UIKit, so `swift test` runs the same code on macOS (.github/workflows/ios.yml) and on Linux
// (tests/test_ios.py, through ios_demo/scripts/swift_linux.py), where the Core ML, CoreGraphics
// and CryptoKit parts are left out by their own `#if canImport` guards.
// Swift 6 language mode: complete strict-concurrency checking, data races are compile errors.
import PackageDescription

let package = Package(
    name: "DTCore",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [
        .library(name: "DTCore", targets: ["DTCore"])
    ],
    targets: [
        .target(name: "DTCore"),
        .testTarget(name: "DTCoreTests", dependencies: ["DTCore"]),
    ],
    swiftLanguageModes: [.v6]
)
