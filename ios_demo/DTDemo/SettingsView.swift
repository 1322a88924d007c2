import DTCore
import SwiftUI

/// The server URL (default from Info.plist's DTServerURL, i.e. the DT_SERVER_URL build setting)
/// and how many labels per task to ask for.
struct SettingsView: View {
    @Environment(DemoModel.self) private var model
    @AppStorage(SettingsKey.serverURL) private var serverURL = AppConfig.defaultServerURL
    @AppStorage(SettingsKey.topK) private var topK = 3
    @State private var health: String?
    @State private var checking = false

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
                    "The simulator reaches the Mac as localhost. On a device, use your Mac's address on the local network and add that host to NSExceptionDomains in Info.plist: plain HTTP is allowed only for the development host."
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
            let answer = try await DecoderClient(baseURL: url).health()
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
