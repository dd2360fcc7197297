// The Core ML path for `--target ios` bundles (model.mlpackage, stateful KV cache; NOT compiled here).
// Inputs / outputs / states as mobilellm_export/targets/ios.py writes them: inputIds [1, q] int32,
// causalMask [1, 1, q, start + q] fp16 (0 or -inf), logits [1, q, vocab] fp16, states keyCache / valueCache.
// Tokenizer: swift-transformers' Tokenizers reading the bundle's tokenizer.json + tokenizer_config.json.
// Greedy decoding; the prompt text comes from prompt_format + generation.bos + pre_normalize exactly
// as on Android (the bundle's tokenizer.json has the pre_normalize steps removed).
import CoreML
import Foundation
import MobileLLMCore
import Tokenizers

@available(iOS 18.0, macOS 15.0, *)
final class CoreMLEngine {
    let bundle: MobileLLMCore.Bundle
    private let model: MLModel
    private let tokenizer: Tokenizer
    private var state: MLState
    private var position = 0
    private var stopRequested = false

    init(dir: URL, bundle: MobileLLMCore.Bundle) async throws {
        self.bundle = bundle
        let compiled = try await MLModel.compileModel(at: dir.appendingPathComponent(bundle.entry))
        let config = MLModelConfiguration()
        config.computeUnits = .cpuAndGPU
        model = try MLModel(contentsOf: compiled, configuration: config)
        tokenizer = try await AutoTokenizer.from(modelFolder: dir)
        state = model.makeState()
    }

    func reset() {
        state = model.makeState()
        position = 0
    }

    func stop() { stopRequested = true }

    /// Feed `ids` from the current position (chunks of at most max_seq_len); the last row's logits.
    private func feed(_ ids: [Int]) throws -> MLMultiArray {
        var last: MLMultiArray? = nil
        var i = 0
        while i < ids.count {
            let chunk = Array(ids[i..<min(ids.count, i + bundle.maxSeqLen)])
            let q = chunk.count
            let input = try MLMultiArray(shape: [1, NSNumber(value: q)], dataType: .int32)
            for (k, t) in chunk.enumerated() { input[[0, NSNumber(value: k)]] = NSNumber(value: t) }
            let end = position + q
            let mask = try MLMultiArray(shape: [1, 1, NSNumber(value: q), NSNumber(value: end)], dataType: .float16)
            for r in 0..<q {
                for c in 0..<end { mask[[0, 0, NSNumber(value: r), NSNumber(value: c)]] = NSNumber(value: c <= position + r ? 0.0 : -Float.infinity) }
            }
            let out = try model.prediction(from: MLDictionaryFeatureProvider(dictionary: ["inputIds": input, "causalMask": mask]), using: state)
            last = out.featureValue(for: "logits")!.multiArrayValue!
            position = end
            i += q
        }
        return last!
    }

    private func argmaxLastRow(_ logits: MLMultiArray) -> Int {
        let q = logits.shape[1].intValue, vocab = logits.shape[2].intValue
        var best = 0
        var bestValue = -Float.infinity
        for v in 0..<vocab {
            let x = logits[[0, NSNumber(value: q - 1), NSNumber(value: v)]].floatValue
            if x > bestValue { bestValue = x; best = v }
        }
        return best
    }

    /// One turn from a fresh cache (KV reuse as on Android is left for later), greedy.
    func reply(_ conversation: [Message], maxNewTokens: Int, enableThinking: Bool?, onText: (String) -> Void) throws -> String {
        reset()
        stopRequested = false
        let prompt = try bundle.runnerPrompt(conversation, enableThinking: enableThinking)
        let ids = tokenizer.encode(text: prompt, addSpecialTokens: false)
        if ids.count + maxNewTokens > bundle.maxContext { throw PromptError(message: "the conversation does not fit in \(bundle.maxContext) tokens") }
        var logits = try feed(ids)
        let filter = StopFilter(bundle.promptFormat.stopStrings)
        var generated: [Int] = []
        var shownCount = 0
        var shown = ""
        for _ in 0..<maxNewTokens where !stopRequested && !filter.stopped {
            let next = argmaxLastRow(logits)
            if bundle.eosIds.contains(next) { break }
            generated.append(next)
            // decode the whole answer and emit what is new (a token can end mid-character)
            let text = tokenizer.decode(tokens: generated)
            if text.unicodeScalars.count > shownCount, !text.hasSuffix("\u{FFFD}") {
                let piece = String(String.UnicodeScalarView(text.unicodeScalars.dropFirst(shownCount)))
                shownCount = text.unicodeScalars.count
                let visible = filter.push(piece)
                shown += visible
                if !visible.isEmpty { onText(visible) }
            }
            logits = try feed([next])
        }
        let rest = filter.finish()
        if !rest.isEmpty { shown += rest; onText(rest) }
        return shown
    }
}
