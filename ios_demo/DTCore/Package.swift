// swift-tools-version: 5.9
// DTCore: everything the demo app needs that is not UI — the export's manifest, preprocessing,
// the wire format, the HTTP client for `dtconvert serve`, top-k and the Core ML runner.
// No UIKit, so `swift test` runs the same code on macOS (see .github/workflows/ios.yml).
import PackageDescription

let package = Package(
    name: "DTCore",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [
        .library(name: "DTCore", targets: ["DTCore"]),
    ],
    targets: [
        .target(name: "DTCore"),
        .testTarget(name: "DTCoreTests", dependencies: ["DTCore"]),
    ]
)
