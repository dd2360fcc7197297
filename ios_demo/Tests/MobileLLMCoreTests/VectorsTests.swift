// The shared vectors in tests/fixtures/apps/, as android_demo/core's VectorsTest.kt checks them.
// Run on a Mac: `swift test` in ios_demo/ (not runnable on the Linux CI machine: see README).
import Foundation
import XCTest
@testable import MobileLLMCore

final class VectorsTests: XCTestCase {
    let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../../tests/fixtures/apps").standardized

    func objects(_ name: String) throws -> [[String: Any]] {
        let data = try Data(contentsOf: dir.appendingPathComponent(name))
        return try JSONSerialization.jsonObject(with: data) as! [[String: Any]]
    }

    func bundleText(_ name: String) throws -> String {
        try String(contentsOf: dir.appendingPathComponent("bundles/\(name)/bundle.json"), encoding: .utf8)
    }

    func messages(_ a: Any?) -> [Message] {
        (a as! [[String: Any]]).map { Message($0["role"] as! String, $0["content"] as! String) }
    }

    func check(_ file: String, _ body: ([String: Any]) throws -> Void) throws {
        var bad: [String] = []
        let all = try objects(file)
        for v in all {
            do { try body(v) } catch { bad.append("\(v["name"] ?? "\(v["bundle"] ?? "")/\(v["conversation"] ?? "")"): \(error)") }
        }
        XCTAssertFalse(all.isEmpty, "\(file): no vectors")
        XCTAssert(bad.isEmpty, "\(file): \(bad.count) of \(all.count) vectors failed:\n  " + bad.joined(separator: "\n  "))
    }

    struct Mismatch: Error, CustomStringConvertible { let description: String }

    func eq<T: Equatable>(_ what: String, _ want: T, _ got: T) throws {
        if want != got { throw Mismatch(description: "\(what) expected <\(want)> but was <\(got)>") }
    }

    /// A vector's own runtimes (name -> version) or, without them, this app's (Bundle.runtimes).
    func runtimes(_ v: [String: Any]) -> [String: String] { v["runtimes"] as? [String: String] ?? Bundle.runtimes }

    func testBundleParsing() throws {
        try check("parse.json") { v in
            let text: String
            if let b = v["bundle"] as? String { text = try bundleText(b) } else {
                text = String(data: try JSONSerialization.data(withJSONObject: v["manifest"]!), encoding: .utf8)!
            }
            let want = v["expect"] as! [String: Any]
            if !(want["ok"] as! Bool) {
                do {
                    _ = try Bundle.parse(text, runtimes: runtimes(v))
                    throw Mismatch(description: "parsed, expected an error containing '\(want["error"]!)'")
                } catch let e as BundleError {
                    if !e.message.contains(want["error"] as! String) { throw Mismatch(description: "error '\(e.message)' lacks '\(want["error"]!)'") }
                }
                return
            }
            let b = try Bundle.parse(text, runtimes: runtimes(v))
            try eq("schema_version", want["schema_version"] as! Int, b.schemaVersion)
            let need = (want["min_runtime"] as? [String: String]).map { MinRuntime(name: $0["name"]!, version: $0["version"]!) }
            try eq("min_runtime", need, b.minRuntime)
            try eq("model", want["model"] as! String, b.model)
            try eq("entry", want["entry"] as! String, b.entry)
            try eq("data_file", want["data_file"] as? String, b.dataFile)
            try eq("tokenizer", want["tokenizer"] as! String, b.tokenizerFile)
            try eq("eos_ids", want["eos_ids"] as! [Int], b.eosIds)
            try eq("bos_add", want["bos_add"] as! Bool, b.bos.add)
            try eq("bos_text", want["bos_text"] as? String, b.bos.text)
            try eq("max_context", want["max_context"] as! Int, b.maxContext)
            try eq("temperature", (want["temperature"] as! NSNumber).doubleValue, b.temperature)
            try eq("stop_strings", want["stop_strings"] as! [String], b.promptFormat.stopStrings)
            try eq("reducible", want["reducible"] as! Bool, b.promptFormat.reducible)
            try eq("system_prompts", want["system_prompts"] as! [String], b.promptFormat.systemPrompts.keys.sorted())
            let steps = (want["pre_normalize"] as! [[String: Any]]).map {
                NormalizeStep($0["type"] as! String, $0["pattern"] as? String ?? "", $0["content"] as? String ?? "")
            }
            try eq("pre_normalize", steps, b.promptFormat.preNormalize)
            try eq("probe runner text", want["probe_runner_text"] as! String, b.promptFormat.runnerText(want["probe"] as! String))
            if !b.promptFormat.reducible {
                if (try? b.prompt([Message("user", "hi")])) != nil { throw Mismatch(description: "an irreducible format rendered a prompt") }
            }
        }
    }

    func testPromptRendering() throws {
        var bundles: [String: Bundle] = [:]
        try check("prompts.json") { v in
            let name = v["bundle"] as! String
            if bundles[name] == nil { bundles[name] = try Bundle.parse(try bundleText(name)) }
            let b = bundles[name]!
            let thinking = v["enable_thinking"] as? Bool
            let date = SimpleDate.parseIso(v["date"] as! String)
            let msgs = messages(v["messages"])
            try eq("rendered prompt", v["text"] as! String, try b.promptFormat.render(msgs, enableThinking: thinking, date: date))
            try eq("prompt with BOS policy", v["prompt"] as! String, try b.prompt(msgs, enableThinking: thinking, date: date))
            try eq("runner text", v["runner_text"] as! String, try b.runnerPrompt(msgs, enableThinking: thinking, date: date))
        }
    }

    func testStopStrings() throws {
        try check("stream.json") { v in
            let want = v["expect"] as! [String: Any]
            let f = StopFilter(v["stop_strings"] as! [String])
            var shown = ""
            let after = want["shown_after_each"] as! [String]
            for (i, p) in (v["pieces"] as! [String]).enumerated() {
                shown += f.push(p)
                if i < after.count { try eq("shown after piece \(i)", after[i], shown) }
                if f.stopped { break }
            }
            shown += f.finish()
            try eq("visible", want["visible"] as! String, shown)
            try eq("stopped", want["stopped"] as! Bool, f.stopped)
            try eq("stop string", want["stop_string"] as? String, f.stopString)
            try eq("stop piece", want["stop_piece"] as? Int, f.stopPiece)
        }
    }

    func testStats() throws {
        try check("stats.json") { v in
            let s = RunStats.parse(v["json"] as! String)
            guard let want = v["expect"] as? [String: Any] else {
                try eq("not stats", nil, s)
                return
            }
            guard let s = s else { throw Mismatch(description: "no stats parsed") }
            try eq("prompt_tokens", want["prompt_tokens"] as! Int, s.promptTokens)
            try eq("generated_tokens", want["generated_tokens"] as! Int, s.generatedTokens)
            for (k, got) in [("prefill_tok_s", s.prefillTokensPerSecond), ("decode_tok_s", s.decodeTokensPerSecond),
                             ("ttft_s", s.timeToFirstTokenSeconds)] {
                if abs((want[k] as! NSNumber).doubleValue - got) > 1e-5 { throw Mismatch(description: "\(k): \(got)") }
            }
        }
    }

    func testKvCacheReuse() throws {
        try check("kv.json") { v in
            let b = try Bundle.parse(try bundleText(v["bundle"] as! String))
            let rendered = try b.prompt(messages(v["messages"]), enableThinking: nil, date: SimpleDate(2026, 3, 9, 14, 5, 7))
            let plan = CachePlan.plan(cached: v["cached"] as? String, rendered: rendered, format: b.promptFormat)
            let want = v["expect"] as! [String: Any]
            try eq("reuse", want["reuse"] as! Bool, !plan.reset)
            try eq("text to prefill", want["delta"] as! String, plan.text)
            try eq("runner text to prefill", want["runner_text"] as! String, b.promptFormat.runnerText(plan.text))
        }
    }

    func testStrftimeWeekdays() {
        XCTAssertEqual("Mon Monday 09 Mar 2026", PromptFormat.strftime("%a %A %d %b %Y", SimpleDate(2026, 3, 9)))
        XCTAssertEqual("Tue", PromptFormat.strftime("%a", SimpleDate(2000, 2, 29)))
        XCTAssertEqual("Fri 31 December 99 % %q", PromptFormat.strftime("%a %d %B %y %% %q", SimpleDate(1999, 12, 31)))
    }
}
