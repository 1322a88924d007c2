import SwiftUI

@main
struct DTDemoApp: App {
    @State private var model = DemoModel()

    var body: some Scene {
        WindowGroup {
            ContentView()
                .environment(model)
                .task { await model.load() }
        }
    }
}
