import DTCore
import SwiftUI

/// The server URL (default from Info.plist's DTServerURL, i.e. the DT_SERVER_URL build setting),
/// the server's token (Keychain, see ServerToken) and how many labels per task to ask for.
struct SettingsView: View {
    @Environment(DemoModel.self) private var model
    @AppStorage(SettingsKey.serverURL) private var serverURL = AppConfig.defaultServerURL
    @AppStorage(SettingsKey.topK) private var topK = 3
    @State private var health: String?
    @State private var checking = false
    /// What is typed into the token field; the saved token is never read back into it.
    @State private var tokenDraft = ""
    @State private var tokenSaved = ServerToken.isSet
    @State private var tokenStatus: String?

    var body: some View {
        Form {
            Section {
                TextField("Server URL", text: $serverURL)
                    .keyboardType(.URL)
                    .textInputAutocapitalization(.never)
                    .autocorrectionDisabled()
                Button("Use the build's default") { serverURL = AppConfig.defaultServerURL }
            } header: {
                Text("dtconvert serve")
            } footer: {
                Text(
                    "The simulator reaches the Mac as localhost. On a device, use an https URL (a server started with --tls-cert; no exception needed), or your Mac's address on the local network added to NSExceptionDomains in Info.plist: plain HTTP is allowed only for the development host."
                )
            }
            Section {
                SecureField(tokenSaved ? "Saved; type to replace" : "None", text: $tokenDraft)
                    .textInputAutocapitalization(.never)
                    .autocorrectionDisabled()
                HStack {
                    Button("Save token") { saveToken(tokenDraft) }
                        .disabled(tokenDraft.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
                    Spacer()
                    Button("Remove", role: .destructive) { saveToken("") }
                        .disabled(!tokenSaved)
                }
                .buttonStyle(.borderless)
                if let tokenStatus {
                    Text(tokenStatus)
                }
            } header: {
                Text("Server token")
            } footer: {
                Text(
                    "For a server started with --token-file: sent as a bearer token with every request. Kept in the Keychain on this device only, never shown again."
                )
            }
            Section("Predictions") {
                Stepper("Top \(topK) labels per task", value: $topK, in: 1...maxLabels)
            }
            Section {
                Button {
                    Task { await checkServer() }
                } label: {
                    HStack {
                        Text("Check the server")
                        Spacer()
                        if checking { ProgressView() }
                    }
                }
                .disabled(checking)
                if let health {
                    Text(health)
                }
            }
        }
        .navigationTitle("Settings")
    }

    private func saveToken(_ token: String) {
        let removing = token.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty
        if ServerToken.write(token) {
            tokenStatus = removing ? "Token removed" : "Token saved"
        } else {
            tokenStatus = "The Keychain did not take the token"
        }
        tokenDraft = ""
        tokenSaved = ServerToken.isSet
    }

    /// The most labels any task has: asking for more than that returns no more.
    private var maxLabels: Int {
        max(1, model.manifest?.tasks.map(\.labels.count).max() ?? 1)
    }

    /// GET /healthz and compare the model id it serves with the bundled manifest's.
    private func checkServer() async {
        checking = true
        defer { checking = false }
        guard let url = URL(string: serverURL.trimmingCharacters(in: .whitespacesAndNewlines)), url.host() != nil else {
            health = "'\(serverURL)' is not a URL"
            return
        }
        do {
            let answer = try await DecoderClient(baseURL: url, token: ServerToken.read()).health()
            let expected = model.manifest?.model.id ?? "?"
            if answer.serves(expected) {
                health = "\(answer.status): serves this app's model \(expected)"
            } else {
                let served = answer.modelIDs.joined(separator: ", ")
                health = "\(answer.status), but serves \(served), not this app's \(expected): it will refuse our messages (422)"
            }
        } catch {
            health = error.localizedDescription
        }
    }
}
