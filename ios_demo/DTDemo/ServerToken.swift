import Foundation
import Security

/// The bearer token for `dtconvert serve --token-file`, typed by the user in Settings and never
/// built into the app. It lives in the Keychain (a generic password, this device only, readable
/// after the first unlock), not in UserDefaults: it stays out of backups and plain preference
/// files, and it is never shown again once saved, logged or put into an error message.
enum ServerToken {
    /// The Keychain item's service name (an identifier, not a server).
    private static let service = "dev.dtconvert.DTDemo.server-token"

    private static var query: [String: Any] {
        [kSecClass as String: kSecClassGenericPassword, kSecAttrService as String: service]
    }

    /// The saved token, or nil when none is saved (or the Keychain cannot be read).
    static func read() -> String? {
        var item: CFTypeRef?
        var search = query
        search[kSecReturnData as String] = true
        search[kSecMatchLimit as String] = kSecMatchLimitOne
        guard SecItemCopyMatching(search as CFDictionary, &item) == errSecSuccess, let data = item as? Data else { return nil }
        return String(data: data, encoding: .utf8)
    }

    /// Whether a token is saved.
    static var isSet: Bool { read() != nil }

    /// Save `token`; a blank one removes the saved token. Returns whether the Keychain took it.
    @discardableResult
    static func write(_ token: String) -> Bool {
        let value = token.trimmingCharacters(in: .whitespacesAndNewlines)
        SecItemDelete(query as CFDictionary)
        guard !value.isEmpty else { return true }
        var item = query
        item[kSecValueData as String] = Data(value.utf8)
        item[kSecAttrAccessible as String] = kSecAttrAccessibleAfterFirstUnlockThisDeviceOnly
        return SecItemAdd(item as CFDictionary, nil) == errSecSuccess
    }
}
