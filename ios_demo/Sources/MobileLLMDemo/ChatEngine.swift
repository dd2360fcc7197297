// The iOS glue (NOT compiled here: no Swift toolchain on Linux CI; tree-sitter checks its syntax).
// Mirrors android_demo/.../engine/ChatEngine.kt on ExecuTorch's Swift TextRunner (ExecuTorchLLM 1.5.1; its
// header as at 1.4.1 in the sources read, ios_demo/README.md):
//   TextRunner(modelPath:tokenizerPath:) -> load() -> generate(prompt, Config { ... }) { token in ... }
//   stop() ends a generation early; reset() clears the KV cache (position 0).
// TextRunner takes no external-weights (.ptd) path: a bundle with target.data_file cannot run here.
// Bundle.parse has already refused a bundle whose target.min_runtime is newer than Bundle.executorchVersion.
import ExecuTorchLLM
import Foundation
import MobileLLMCore

struct Reply {
    let text: String
    let stopped: Bool
    let reusedCache: Bool
    let error: String?
}

final class ChatEngine {
    let dir: URL
    let bundle: MobileLLMCore.Bundle
    private let runner: TextRunner
    private var cached: String? = nil
    private var cachedBytes = 0
    private var stopFilter: StopFilter? = nil

    init(dir: URL, bundle: MobileLLMCore.Bundle) throws {
        if let data = bundle.dataFile {
            throw BundleError(message: "\(data): TextRunner cannot load external weights; export with --android-weights pte for iOS")
        }
        self.dir = dir
        self.bundle = bundle
        runner = TextRunner(modelPath: dir.appendingPathComponent(bundle.entry).path,
                            tokenizerPath: dir.appendingPathComponent(bundle.tokenizerFile).path)
    }

    func load() throws { try runner.load() }

    /// One assistant turn (blocking: call off the main thread). `onText` gets visible text only.
    func reply(_ conversation: [Message], maxNewTokens: Int, enableThinking: Bool?, onText: @escaping (String) -> Void) -> Reply {
        var turns = conversation
        var rendered: String
        do { rendered = try bundle.prompt(turns, enableThinking: enableThinking) } catch { return Reply(text: "", stopped: false, reusedCache: false, error: "\(error)") }
        var plan = CachePlan.plan(cached: cached, rendered: rendered, format: bundle.promptFormat)
        // TextRunner reports no stats JSON to Swift: bound the tokens by UTF-8 bytes of the text
        // tokenized (a token is at least one byte). The plan works on the prompt text; the runner is
        // given it pre-normalized (prompt_format.pre_normalize, PromptFormat.runnerText).
        func fits(_ p: CachePlan) -> Bool { (p.reset ? 0 : cachedBytes) + bundle.promptFormat.runnerText(p.text).utf8.count + maxNewTokens <= bundle.maxContext }
        while !fits(plan) {
            let system = turns.first?.role == "system" ? 1 : 0
            if turns.count - system < 3 { return Reply(text: "", stopped: false, reusedCache: false, error: "the message does not fit in the \(bundle.maxContext)-token context") }
            turns = Array(turns.prefix(system)) + Array(turns.dropFirst(system + 2))
            rendered = (try? bundle.prompt(turns, enableThinking: enableThinking)) ?? rendered
            plan = CachePlan(reset: true, text: rendered)
        }
        if plan.reset {
            runner.reset()
            cachedBytes = 0
        }
        let filter = StopFilter(bundle.promptFormat.stopStrings)
        stopFilter = filter
        var shown = ""
        var error: String? = nil
        do {
            try runner.generate(bundle.promptFormat.runnerText(plan.text), Config {
                $0.sequenceLength = bundle.maxContext
                $0.maximumNewTokens = maxNewTokens
                $0.temperature = bundle.temperature
                $0.bosCount = 0 // BOS is in the text (generation.bos)
                $0.eosCount = 0
                $0.echoEnabled = false
            }) { token in
                let text = filter.push(token)
                if !text.isEmpty {
                    shown += text
                    onText(text)
                }
                if filter.stopped { self.runner.stop() }
            }
        } catch let e {
            error = "\(e)"
        }
        let rest = filter.finish()
        if !rest.isEmpty {
            shown += rest
            onText(rest)
        }
        if error == nil && filter.stopped {
            cached = rendered + shown
            cachedBytes += bundle.promptFormat.runnerText(plan.text).utf8.count + shown.utf8.count
        } else {
            cached = nil
        }
        stopFilter = nil
        return Reply(text: shown, stopped: filter.stopped, reusedCache: !plan.reset, error: error)
    }

    func stop() { runner.stop() }
}
