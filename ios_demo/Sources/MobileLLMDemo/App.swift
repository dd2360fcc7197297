// SwiftUI chat screen (NOT compiled here; see README). Thin: state in ChatModel, logic in MobileLLMCore.
import Foundation
import MobileLLMCore
import SwiftUI

@MainActor
final class ChatModel: ObservableObject {
    @Published var bundles: [(URL, MobileLLMCore.Bundle?, String?)] = []
    @Published var messages: [Message] = []
    @Published var streaming = ""
    @Published var busy = false
    @Published var status = ""
    @Published var systemPreset: String? = nil // a key of prompt_format.system_prompts (R1: math, code)
    @Published var thinking = true
    private var engine: ChatEngine? = nil

    /// Bundles copied into the app's Documents folder (Finder / `xcrun devicectl device copy to`).
    func scan() {
        let docs = FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0]
        let dirs = (try? FileManager.default.contentsOfDirectory(at: docs, includingPropertiesForKeys: nil)) ?? []
        bundles = dirs.filter { FileManager.default.fileExists(atPath: $0.appendingPathComponent("bundle.json").path) }
            .sorted { $0.lastPathComponent < $1.lastPathComponent }
            .map { dir in
                do {
                    let text = try String(contentsOf: dir.appendingPathComponent("bundle.json"), encoding: .utf8)
                    return (dir, try MobileLLMCore.Bundle.parse(text), nil)
                } catch {
                    return (dir, nil, "\(error)")
                }
            }
    }

    func open(_ dir: URL, _ bundle: MobileLLMCore.Bundle) {
        messages = []
        status = "loading \(bundle.model)…"
        Task.detached {
            do {
                let e = try ChatEngine(dir: dir, bundle: bundle)
                try e.load()
                await MainActor.run { self.engine = e; self.status = "\(bundle.model): \(bundle.maxContext)-token context" }
            } catch {
                await MainActor.run { self.status = "\(error)" }
            }
        }
    }

    func send(_ text: String) {
        guard let e = engine else { return }
        if messages.isEmpty, let key = systemPreset, let system = e.bundle.promptFormat.systemPrompts[key] {
            messages.append(Message("system", system))
        }
        messages.append(Message("user", text))
        busy = true
        streaming = ""
        let conversation = messages
        let thinkingFlag: Bool? = e.bundle.promptFormat.hasThinking ? thinking : nil
        let started = Date()
        Task.detached {
            var first: Date? = nil
            var pieces = 0
            let reply = e.reply(conversation, maxNewTokens: 512, enableThinking: thinkingFlag) { piece in
                if first == nil { first = Date() }
                pieces += 1
                Task { @MainActor in self.streaming += piece }
            }
            let end = Date()
            await MainActor.run {
                self.messages.append(Message("assistant", reply.text))
                self.streaming = ""
                self.busy = false
                let ttft = first.map { $0.timeIntervalSince(started) } ?? 0
                let rate = first.map { Double(pieces) / max(end.timeIntervalSince($0), 1e-3) } ?? 0
                self.status = reply.error ?? String(format: "~%.1f pieces/s · TTFT %.2f s", rate, ttft)
            }
        }
    }

    func stop() { engine?.stop() }
}

struct ChatView: View {
    @StateObject var model = ChatModel()
    @State var input = ""

    var body: some View {
        VStack(alignment: .leading) {
            if model.messages.isEmpty {
                ForEach(model.bundles, id: \.0) { dir, bundle, error in
                    Button(dir.lastPathComponent + (error.map { " — \($0)" } ?? "")) {
                        if let b = bundle { model.open(dir, b) }
                    }.disabled(bundle == nil)
                }
            }
            Text(model.status).font(.caption)
            HStack {
                ForEach(["math", "code"], id: \.self) { key in
                    Toggle(key, isOn: Binding(get: { model.systemPreset == key }, set: { model.systemPreset = $0 ? key : nil }))
                        .toggleStyle(.button)
                }
                Toggle("think", isOn: $model.thinking).toggleStyle(.button)
            }
            ScrollView {
                ForEach(Array(model.messages.enumerated()).filter { $0.element.role != "system" }, id: \.offset) { _, m in
                    Text("\(m.role): \(m.content)").frame(maxWidth: .infinity, alignment: .leading)
                }
                if model.busy { Text("assistant: \(model.streaming)").frame(maxWidth: .infinity, alignment: .leading) }
            }
            HStack {
                TextField("Message", text: $input)
                if model.busy {
                    Button("Stop") { model.stop() }
                } else {
                    Button("Send") { model.send(input); input = "" }.disabled(input.isEmpty)
                }
            }
        }
        .padding()
        .onAppear { model.scan() }
    }
}

@main
struct MobileLLMDemoApp: App {
    var body: some Scene {
        WindowGroup { ChatView() }
    }
}
