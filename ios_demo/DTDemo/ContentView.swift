import DTCore
import PhotosUI
import SwiftUI

/// One screen: the model (from the manifest), the image, the run, the answer and its costs.
struct ContentView: View {
    @Environment(DemoModel.self) private var model
    @AppStorage(SettingsKey.serverURL) private var serverURL = AppConfig.defaultServerURL
    @AppStorage(SettingsKey.topK) private var topK = 3
    @State private var photoItem: PhotosPickerItem?
    @State private var showCamera = false
    @State private var invertPhotos = false

    var body: some View {
        NavigationStack {
            content
                .navigationTitle("Device Tuning")
                .toolbar {
                    ToolbarItem(placement: .topBarTrailing) {
                        NavigationLink {
                            SettingsView()
                        } label: {
                            Label("Settings", systemImage: "gearshape")
                        }
                    }
                }
        }
    }

    @ViewBuilder
    private var content: some View {
        switch model.phase {
        case .loading:
            ProgressView("Loading the Core ML encoder…")
        case .failed(let reason):
            ContentUnavailableView("No model", systemImage: "exclamationmark.triangle", description: Text(reason))
        case .ready:
            if let manifest = model.manifest {
                form(manifest)
            }
        }
    }

    private func form(_ manifest: Manifest) -> some View {
        Form {
            modelSection(manifest)
            imageSection
            Section {
                Button {
                    Task { await model.run(serverURL: serverURL, topK: topK) }
                } label: {
                    HStack {
                        Text("Encode on device and send")
                        Spacer()
                        if model.isRunning { ProgressView() }
                    }
                }
                .disabled(model.selected == nil || model.isRunning)
            } footer: {
                Text("Server: \(serverURL.isEmpty ? "not set" : serverURL)")
            }
            if let message = model.message {
                Section {
                    Text(message).foregroundStyle(.red)
                }
            }
            if let result = model.result {
                resultSections(result, manifest: manifest)
            }
        }
        .onChange(of: photoItem) { _, item in
            guard let item else { return }
            Task {
                if let data = try? await item.loadTransferable(type: Data.self) {
                    await model.usePhoto(data: data, invert: invertPhotos)
                }
            }
        }
        .fullScreenCover(isPresented: $showCamera) {
            CameraPicker(isPresented: $showCamera) { photo in
                Task { await model.useCapture(photo, invert: invertPhotos) }
            }
            .ignoresSafeArea()
        }
    }

    private func modelSection(_ manifest: Manifest) -> some View {
        Section("Model") {
            LabeledContent("Name", value: manifest.model.name)
            LabeledContent("Id", value: manifest.model.id)
            LabeledContent("Device encoder", value: "Core ML, \(manifest.precision)")
            LabeledContent("Input", value: dimensions(manifest.deviceInput.shape) + " float32")
            LabeledContent("Wire", value: dimensions(manifest.wire.shape) + " int8, \(manifest.wire.bytesPerImage) B per image")
            ForEach(manifest.tasks, id: \.name) { task in
                LabeledContent(task.name, value: heldout(task.name, manifest) ?? "\(task.labels.count) labels")
            }
        }
    }

    private func dimensions(_ shape: [Int]) -> String {
        shape.map { String($0) }.joined(separator: " × ")
    }

    private func heldout(_ task: String, _ manifest: Manifest) -> String? {
        guard let accuracy = manifest.model.heldoutMetrics?[task] else { return nil }
        return "held-out accuracy \(accuracy.formatted(.percent.precision(.fractionLength(1))))"
    }

    private var imageSection: some View {
        Section("Image") {
            if let selected = model.selected, let preview = selected.preview {
                HStack {
                    Spacer()
                    Image(decorative: preview, scale: 1)
                        .interpolation(.none)
                        .resizable()
                        .aspectRatio(contentMode: .fit)
                        .frame(maxHeight: 160)
                        .accessibilityLabel(selected.title)
                    Spacer()
                }
            }
            if !model.samples.isEmpty {
                ScrollView(.horizontal, showsIndicators: false) {
                    HStack {
                        ForEach(model.samples) { sample in
                            Button {
                                model.select(sample)
                            } label: {
                                thumbnail(sample)
                            }
                            .buttonStyle(.plain)
                        }
                    }
                }
            }
            PhotosPicker("Choose a photo", selection: $photoItem, matching: .images)
            Button("Take a photo") { showCamera = true }
                .disabled(!CameraPicker.isAvailable)
            Toggle("Invert photos (dark ink on light paper)", isOn: $invertPhotos)
        }
    }

    private func thumbnail(_ sample: InputImage) -> some View {
        Group {
            if let preview = sample.preview {
                Image(decorative: preview, scale: 1)
                    .interpolation(.none)
                    .resizable()
            } else {
                Color.gray
            }
        }
        .frame(width: 48, height: 48)
        .overlay {
            if model.selected?.id == sample.id {
                RoundedRectangle(cornerRadius: 4).stroke(Color.accentColor, lineWidth: 3)
            }
        }
        .accessibilityLabel(sample.title)
    }

    @ViewBuilder
    private func resultSections(_ result: RunResult, manifest: Manifest) -> some View {
        ForEach(result.tasks) { task in
            Section("\(task.task) — \(result.imageTitle)") {
                ForEach(task.labels, id: \.index) { prediction in
                    HStack {
                        Text(prediction.label)
                        Spacer()
                        Text(prediction.score, format: .percent.precision(.fractionLength(1)))
                            .monospacedDigit()
                    }
                }
            }
        }
        Section("Cost") {
            LabeledContent("On device (preprocess + Core ML)", value: milliseconds(result.onDevice))
            LabeledContent("Payload", value: "\(result.payloadBytes) B (\(result.wireBytes) B wire tensor)")
            LabeledContent("Round trip", value: milliseconds(result.roundTrip))
            if let serverMs = result.timing?.serverMs {
                LabeledContent("Server (queue + decode)", value: String(format: "%.1f ms", serverMs))
            }
            if let batch = result.timing?.batchImages {
                LabeledContent("Decoded in a batch of", value: "\(batch)")
            }
        }
    }

    private func milliseconds(_ duration: Duration) -> String {
        String(format: "%.1f ms", duration.milliseconds)
    }
}
