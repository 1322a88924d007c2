import Foundation

/// What the build puts into Info.plist (see project.pbxproj and DTDemo/Info.plist): the app has
/// no model file name, shape, label or server URL of its own.
enum AppConfig {
    /// `DTServerURL` ← build setting `DT_SERVER_URL`: the settings screen's default server.
    static var defaultServerURL: String {
        Bundle.main.object(forInfoDictionaryKey: "DTServerURL") as? String ?? ""
    }

    /// `DTExportFolder`: the blue folder reference the Run Script phase fills from `DT_EXPORT_DIR`.
    static var exportFolderName: String {
        Bundle.main.object(forInfoDictionaryKey: "DTExportFolder") as? String ?? ""
    }

    /// The bundled export directory (manifest.json plus what it lists), if the build copied one.
    static var bundledExportURL: URL? {
        let name = exportFolderName
        guard !name.isEmpty else { return nil }
        return Bundle.main.url(forResource: name, withExtension: nil)
    }
}

/// `@AppStorage` keys of the settings screen.
enum SettingsKey {
    static let serverURL = "serverURL"
    static let topK = "topK"
}
