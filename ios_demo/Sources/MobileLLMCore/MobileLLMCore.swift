// Line-for-line mirror of android_demo/core (Bundle.kt, PromptFormat.kt, Streaming.kt), checked
// against the same vectors (tests/fixtures/apps/) by Tests/MobileLLMCoreTests. Foundation only.
import Foundation

public struct BundleError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

/// generation.bos: put `text` in front of the prompt when `add` and it is not there yet; never ask the runner.
public struct BosPolicy: Equatable {
    public let id: Int?
    public let text: String?
    public let add: Bool
    public func apply(_ prompt: String) -> String {
        if add, let text = text, !hasScalarPrefix(prompt, text) { return text + prompt }
        return prompt
    }
}

/// target.min_runtime: the oldest runtime that loads the bundle's artifact (e.g. executorch 1.5.1).
public struct MinRuntime: Equatable {
    public let name: String
    public let version: String
    public init(name: String, version: String) { self.name = name; self.version = version }
}

public struct Bundle {
    public static let schemaVersion = 3
    /// Schema 3 only dropped recipe.target_thresholds, which an app never reads: schema 2 loads as it is.
    public static let minSchemaVersion = 2
    /// prompt_format versions read: 1, and 2 (= 1 + the required pre_normalize list).
    public static let promptFormatVersion = 2
    /// The ExecuTorch this app runs: Package.swift's branch swiftpm-<version>, the version that writes the
    /// bundles (tests/e2e/test_apps.py checks that they agree).
    public static let executorchVersion = "1.5.1"
    /// The runtimes this app has, by target.min_runtime's names: its ExecuTorch, and the OS's Core ML.
    public static var runtimes: [String: String] { ["executorch": executorchVersion, "coreml": coreMLTarget()] }
    static let runtimeNames = ["executorch": "ExecuTorch", "coreml": "Core ML", "onnxruntime": "ONNX Runtime"]

    public let schemaVersion: Int
    public let model: String
    public let entry: String
    public let dataFile: String?
    public let minRuntime: MinRuntime?
    public let tokenizerFile: String
    public let eosIds: [Int]
    public let bos: BosPolicy
    public let maxContext: Int
    public let maxSeqLen: Int
    public let temperature: Double
    public let topP: Double
    public let promptFormat: PromptFormat

    /// The prompt for this conversation: prompt_format, then the BOS policy (the chat template's text).
    public func prompt(_ messages: [Message], enableThinking: Bool? = nil, date: SimpleDate = SimpleDate.now()) throws -> String {
        bos.apply(try promptFormat.render(messages, enableThinking: enableThinking, date: date))
    }

    /// The text the runner is given for this conversation: `prompt`, pre-normalized (prompt_format.pre_normalize).
    public func runnerPrompt(_ messages: [Message], enableThinking: Bool? = nil, date: SimpleDate = SimpleDate.now()) throws -> String {
        promptFormat.runnerText(try prompt(messages, enableThinking: enableThinking, date: date))
    }

    /// The Core ML deployment target this OS runs, as coremltools names them (iOS17, iOS18, iOS26): Core ML
    /// ships with the OS. macOS 14 and 15 run what iOS 17 and 18 run; from 26 the numbers are the same.
    public static func coreMLTarget() -> String {
        let major = ProcessInfo.processInfo.operatingSystemVersion.majorVersion
        #if os(macOS)
        return "iOS\(major >= 26 ? major : major + 3)"
        #else
        return "iOS\(major)"
        #endif
    }

    /// (letter prefix, numbers) of a version like 1.5.1 or iOS18; nil for anything else.
    static func splitVersion(_ v: String) -> (String, [Int])? {
        let prefix = String(v.prefix(while: { $0.isASCII && $0.isLetter }))
        var numbers: [Int] = []
        for part in v.dropFirst(prefix.count).split(separator: ".", omittingEmptySubsequences: false) {
            guard (1...9).contains(part.count), part.allSatisfy({ $0.isASCII && $0.isNumber }), let n = Int(part) else { return nil }
            numbers.append(n)
        }
        return numbers.isEmpty ? nil : (prefix, numbers)
    }

    /// `a` against `b`, number by number after the same letter prefix ("1.10.0" > "1.5.1", "iOS18" > "iOS17",
    /// a missing number is 0): negative, 0 or positive; nil when either is not such a version or the
    /// prefixes differ.
    public static func compareVersions(_ a: String, _ b: String) -> Int? {
        guard let x = splitVersion(a), let y = splitVersion(b), x.0 == y.0 else { return nil }
        for i in 0..<max(x.1.count, y.1.count) {
            let m = i < x.1.count ? x.1[i] : 0
            let n = i < y.1.count ? y.1[i] : 0
            if m != n { return m < n ? -1 : 1 }
        }
        return 0
    }

    /// Why a bundle needing `need` cannot run on `have` (runtime name -> version), in one line; nil: it can.
    public static func runtimeRefusal(_ need: MinRuntime?, _ have: [String: String]) -> String? {
        guard let need = need else { return nil } // written before bundles recorded it
        let name = runtimeNames[need.name] ?? need.name
        let head = "bundle.json: this bundle needs \(name) ≥ \(need.version) (target.min_runtime); "
        guard let mine = have[need.name] else {
            return head + "this app runs " + have.sorted { $0.key < $1.key }
                .map { "\(runtimeNames[$0.key] ?? $0.key) \($0.value)" }.joined(separator: ", ")
        }
        if let c = compareVersions(need.version, mine), c <= 0 { return nil }
        return head + "this app has \(mine): update the app or re-export the bundle"
    }

    static func parseMinRuntime(_ j: Fields) throws -> MinRuntime {
        let v = try j.string("version")
        if splitVersion(v) == nil {
            throw BundleError(message: "bundle.json: target.min_runtime.version: expected a version like 1.5.1 or iOS18, not \(v)")
        }
        return MinRuntime(name: try j.string("name"), version: v)
    }

    public static func parse(_ text: String, runtimes: [String: String] = Bundle.runtimes) throws -> Bundle {
        let any: Any
        do {
            any = try JSONSerialization.jsonObject(with: Data(text.utf8))
        } catch {
            throw BundleError(message: "bundle.json is not a JSON object: \(error)")
        }
        guard let root = any as? [String: Any] else { throw BundleError(message: "bundle.json is not a JSON object") }
        let j = Fields(root, "")
        if root["schema_version"] == nil { throw BundleError(message: "bundle.json: missing schema_version") }
        let version = try j.int("schema_version")
        if version > schemaVersion {
            throw BundleError(message: "bundle.json has schema_version \(version); this app reads schema_version \(Bundle.minSchemaVersion)-\(Bundle.schemaVersion): update the app")
        }
        if version < Bundle.minSchemaVersion {
            throw BundleError(message: "bundle.json has schema_version \(version); this app reads schema_version \(Bundle.minSchemaVersion)-\(Bundle.schemaVersion): re-export the bundle")
        }
        let target = try j.obj("target")
        var minRuntime: MinRuntime? = nil
        if target.has("min_runtime") { minRuntime = try parseMinRuntime(try target.obj("min_runtime")) }
        if let refusal = runtimeRefusal(minRuntime, runtimes) { throw BundleError(message: refusal) }
        let gen = try j.obj("generation")
        let bos = try gen.obj("bos")
        return Bundle(
            schemaVersion: version,
            model: try j.string("model"),
            entry: try target.string("entry"),
            dataFile: try target.optString("data_file"),
            minRuntime: minRuntime,
            tokenizerFile: try j.obj("tokenizer").string("file"),
            eosIds: try gen.intList("eos_ids"),
            bos: BosPolicy(id: try bos.optInt("id"), text: try bos.optString("text"), add: try bos.bool("add")),
            maxContext: try gen.int("max_context"),
            maxSeqLen: try gen.int("max_seq_len"),
            temperature: try gen.double("temperature"),
            topP: try gen.double("top_p"),
            promptFormat: try PromptFormat.parse(try gen.obj("prompt_format"))
        )
    }
}

/// Typed access with one clear error naming the field (a missing one, or one of the wrong type).
struct Fields {
    let o: [String: Any]
    let path: String
    init(_ o: [String: Any], _ path: String) { self.o = o; self.path = path }

    private func name(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    private func raw(_ key: String) throws -> Any {
        guard let v = o[key] else { throw BundleError(message: "bundle.json: missing \(name(key))") }
        return v
    }

    private func bad(_ key: String, _ want: String) -> BundleError { BundleError(message: "bundle.json: \(name(key)): expected \(want)") }

    func has(_ key: String) -> Bool { o[key] != nil && !(o[key] is NSNull) }

    func obj(_ key: String) throws -> Fields {
        guard let v = try raw(key) as? [String: Any] else { throw bad(key, "an object") }
        return Fields(v, name(key))
    }

    func string(_ key: String) throws -> String {
        guard let v = try raw(key) as? String else { throw bad(key, "a string") }
        return v
    }

    func optString(_ key: String) throws -> String? { has(key) ? try string(key) : nil }

    func bool(_ key: String) throws -> Bool {
        // JSONSerialization gives NSNumber for both; a boolean is the CFBoolean kind
        guard let n = try raw(key) as? NSNumber, CFGetTypeID(n) == CFBooleanGetTypeID() else { throw bad(key, "true or false") }
        return n.boolValue
    }

    private static func integer(_ v: Any) -> Int? {
        guard let n = v as? NSNumber, CFGetTypeID(n) != CFBooleanGetTypeID(), !CFNumberIsFloatType(n) else { return nil }
        return n.intValue
    }

    func int(_ key: String) throws -> Int {
        guard let v = Fields.integer(try raw(key)) else { throw bad(key, "an integer") }
        return v
    }

    func optInt(_ key: String) throws -> Int? { has(key) ? try int(key) : nil }

    func double(_ key: String) throws -> Double {
        guard let n = try raw(key) as? NSNumber, CFGetTypeID(n) != CFBooleanGetTypeID() else { throw bad(key, "a number") }
        return n.doubleValue
    }

    func intList(_ key: String) throws -> [Int] {
        guard let a = try raw(key) as? [Any] else { throw bad(key, "a list of integers") }
        return try a.map { v in
            guard let i = Fields.integer(v) else { throw bad(key, "a list of integers") }
            return i
        }
    }

    func stringList(_ key: String) throws -> [String] {
        guard let a = try raw(key) as? [Any] else { throw bad(key, "a list of strings") }
        return try a.map { v in
            guard let s = v as? String else { throw bad(key, "a list of strings") }
            return s
        }
    }

    /// A list of objects, each named key[i] in errors.
    func objList(_ key: String) throws -> [Fields] {
        guard let a = try raw(key) as? [Any] else { throw bad(key, "a list") }
        return try a.enumerated().map { (i, v) in
            guard let o = v as? [String: Any] else { throw bad("\(key)[\(i)]", "an object") }
            return Fields(o, "\(name(key))[\(i)]")
        }
    }

    func stringMap(_ key: String) throws -> [String: String] {
        let m = try obj(key)
        var out: [String: String] = [:]
        for k in m.keys() { out[k] = try m.string(k) }
        return out
    }

    func keys() -> [String] { o.keys.sorted() }
}

// MARK: - prompt_format (PromptFormat.kt)

public struct Message: Equatable {
    public let role: String
    public let content: String
    public init(_ role: String, _ content: String) { self.role = role; self.content = content }
}

public struct Turn: Equatable {
    public let prefix: String
    public let suffix: String
    public let trim: Bool
}

public struct Thinking: Equatable {
    public let open: String
    public let close: String
    public let history: String // "drop_reasoning" | "keep"
    public let historyLstrip: String
    public let generationPromptOn: String
    public let generationPromptOff: String
}

/// A calendar date and time, with weekday computed here (no locale, no time zone rules).
public struct SimpleDate: Equatable {
    public let year: Int, month: Int, day: Int, hour: Int, minute: Int, second: Int
    public init(_ year: Int, _ month: Int, _ day: Int, _ hour: Int = 0, _ minute: Int = 0, _ second: Int = 0) {
        self.year = year; self.month = month; self.day = day; self.hour = hour; self.minute = minute; self.second = second
    }

    /// 0 = Monday ... 6 = Sunday (Python's weekday()).
    public var weekday: Int {
        let t = [0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4]
        let y = month < 3 ? year - 1 : year
        let sunday0 = (y + y / 4 - y / 100 + y / 400 + t[month - 1] + day) % 7
        return (sunday0 + 6) % 7
    }

    public static func now() -> SimpleDate {
        let c = Calendar(identifier: .gregorian).dateComponents([.year, .month, .day, .hour, .minute, .second], from: Date())
        return SimpleDate(c.year!, c.month!, c.day!, c.hour!, c.minute!, c.second!)
    }

    /// "2026-03-09T14:05:07"
    public static func parseIso(_ s: String) -> SimpleDate {
        let p = s.split(whereSeparator: { $0 == "-" || $0 == "T" || $0 == ":" }).map { Int($0)! }
        return SimpleDate(p[0], p[1], p[2], p.count > 3 ? p[3] : 0, p.count > 4 ? p[4] : 0, p.count > 5 ? p[5] : 0)
    }
}

public struct PromptError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

/// One step of prompt_format.pre_normalize: "NFC" (precomposedStringWithCanonicalMapping) or "Replace"
/// (every non-overlapping occurrence of the literal `pattern`, left to right, by `content`; compared
/// by UTF-16 code unit, as Kotlin and Python do, not by Character). The bundle's tokenizer.json no
/// longer holds these normalizer steps (ExecuTorch's C++ tokenizer applies them differently from the
/// `tokenizers` library), so the text is given to the runner with them applied.
public struct NormalizeStep: Equatable {
    public let type: String
    public let pattern: String
    public let content: String
    public init(_ type: String, _ pattern: String = "", _ content: String = "") { self.type = type; self.pattern = pattern; self.content = content }

    public func apply(_ text: String) throws -> String {
        switch type {
        case "NFC": return text.precomposedStringWithCanonicalMapping
        case "Replace": return (text as NSString).replacingOccurrences(of: pattern, with: content, options: .literal, range: NSRange(location: 0, length: (text as NSString).length))
        default: throw PromptError(message: "unknown pre_normalize step \(type)") // parse() refuses it first
        }
    }
}

public struct PromptFormat {
    public let reducible: Bool
    public let reason: String?
    public let stopIds: [Int]
    public let stopStrings: [String]
    public let systemPrompts: [String: String]
    let start: String
    let roles: [String: Turn]
    let trimChars: String
    let systemPlacement: String // "turn" | "first_user"
    let systemSeparator: String
    let systemDefault: String?
    let generationPrompt: String
    let thinking: Thinking?
    let dateFormat: String?
    let datePlaceholder: String?
    public var preNormalize: [NormalizeStep] = []

    public var assistantSuffix: String { roles["assistant"]?.suffix ?? "" }
    public var hasThinking: Bool { thinking != nil }

    /// What the runner is given for prompt text `text` (a whole prompt or the new part of one): pre_normalize applied.
    public func runnerText(_ text: String) -> String {
        // parse() accepts only steps apply() knows, so apply() cannot throw here
        preNormalize.reduce(text) { t, step in (try? step.apply(t)) ?? t }
    }

    public func render(_ messages: [Message], enableThinking: Bool? = nil, date: SimpleDate = SimpleDate.now()) throws -> String {
        if !reducible { throw PromptError(message: "this bundle's chat template has no prompt_format: \(reason ?? "")") }
        try PromptFormat.checkConversation(messages)
        let today: String? = dateFormat.map { PromptFormat.strftime($0, date) }

        func fixed(_ s: String) -> String { today != nil ? s.replacingOccurrences(of: datePlaceholder!, with: today!, options: .literal) : s }
        func content(_ role: String, _ text: String) -> String { roles[role]!.trim ? PromptFormat.strip(text, trimChars) : text }

        let hasSystem = messages[0].role == "system"
        var sysText: String? = hasSystem ? messages[0].content : systemDefault
        if sysText != nil && !hasSystem { sysText = fixed(sysText!) }
        let turns = hasSystem ? Array(messages.dropFirst()) : messages
        var out = fixed(start)
        var fold = ""
        if let sysText = sysText {
            if systemPlacement == "turn" {
                let r = roles["system"]!
                out += fixed(r.prefix) + content("system", sysText) + fixed(r.suffix)
            } else {
                fold = content("system", sysText) + fixed(systemSeparator)
            }
        }
        for (i, m) in turns.enumerated() {
            var text = m.content
            if m.role == "assistant", let t = thinking, t.history == "drop_reasoning", text.range(of: t.close, options: .literal) != nil {
                text = PromptFormat.lstrip(PromptFormat.substringAfterLast(text, t.close), t.historyLstrip)
            }
            text = content(m.role, text)
            if i == 0 { text = fold + text }
            let r = roles[m.role]!
            out += fixed(r.prefix) + text + fixed(r.suffix)
        }
        out += fixed(generationPrompt)
        if let t = thinking {
            out += fixed(enableThinking == false ? t.generationPromptOff : t.generationPromptOn)
        }
        return out
    }

    static let allRoles: Set<String> = ["system", "user", "assistant"]

    static func parse(_ j: Fields) throws -> PromptFormat {
        let version = try j.int("version")
        if version < 1 || version > Bundle.promptFormatVersion {
            throw BundleError(message: "bundle.json: generation.prompt_format version \(version); this app reads versions 1 to \(Bundle.promptFormatVersion): "
                + (version > Bundle.promptFormatVersion ? "update the app" : "re-export the bundle"))
        }
        let pre = try parsePreNormalize(j, version)
        let reducible = try j.bool("reducible")
        let stop = try j.obj("stop")
        let stopIds = try stop.intList("ids")
        let stopStrings = try stop.stringList("strings")
        let prompts = try j.stringMap("system_prompts")
        if !reducible {
            return PromptFormat(reducible: false, reason: try j.string("reason"), stopIds: stopIds, stopStrings: stopStrings, systemPrompts: prompts,
                                start: "", roles: [:], trimChars: "", systemPlacement: "turn", systemSeparator: "", systemDefault: nil,
                                generationPrompt: "", thinking: nil, dateFormat: nil, datePlaceholder: nil, preNormalize: pre)
        }
        let r = try j.obj("roles")
        var roles: [String: Turn] = [:]
        for name in allRoles {
            let t = try r.obj(name)
            roles[name] = Turn(prefix: try t.string("prefix"), suffix: try t.string("suffix"), trim: try t.bool("trim"))
        }
        let sys = try j.obj("system")
        let placement = try sys.string("placement")
        if placement != "turn" && placement != "first_user" { throw BundleError(message: "bundle.json: generation.prompt_format.system.placement: unknown value \(placement)") }
        var thinking: Thinking? = nil
        if j.has("thinking") {
            let t = try j.obj("thinking")
            let history = try t.string("history")
            if history != "drop_reasoning" && history != "keep" { throw BundleError(message: "bundle.json: generation.prompt_format.thinking.history: unknown value \(history)") }
            thinking = Thinking(open: try t.string("open"), close: try t.string("close"), history: history, historyLstrip: try t.string("history_lstrip"),
                                generationPromptOn: try t.string("generation_prompt_on"), generationPromptOff: try t.string("generation_prompt_off"))
        }
        let date = j.has("date") ? try j.obj("date") : nil
        return PromptFormat(
            reducible: true, reason: nil, stopIds: stopIds, stopStrings: stopStrings, systemPrompts: prompts,
            start: try j.string("start"),
            roles: roles,
            trimChars: try j.string("trim_chars"),
            systemPlacement: placement,
            systemSeparator: try sys.string("separator"),
            systemDefault: try sys.optString("default"),
            generationPrompt: try j.string("generation_prompt"),
            thinking: thinking,
            dateFormat: try date?.string("strftime"),
            datePlaceholder: try date?.string("placeholder"),
            preNormalize: pre
        )
    }

    /// Version 2 requires pre_normalize (a non-empty list) and version 1 has none: an app that knew
    /// only version 1 refuses such a bundle instead of mis-tokenizing. A step this app does not know
    /// is an error too, never skipped.
    static func parsePreNormalize(_ j: Fields, _ version: Int) throws -> [NormalizeStep] {
        if version < 2 {
            if j.has("pre_normalize") { throw BundleError(message: "bundle.json: generation.prompt_format: pre_normalize needs prompt_format version 2") }
            return []
        }
        let steps = try j.objList("pre_normalize")
        if steps.isEmpty { throw BundleError(message: "bundle.json: generation.prompt_format.pre_normalize: expected a non-empty list") }
        return try steps.enumerated().map { (i, s) in
            let type = try s.string("type")
            switch type {
            case "NFC": return NormalizeStep("NFC")
            case "Replace":
                let pattern = try s.string("pattern")
                if pattern.isEmpty { throw BundleError(message: "bundle.json: generation.prompt_format.pre_normalize[\(i)].pattern: expected a non-empty string") }
                return NormalizeStep("Replace", pattern, try s.string("content"))
            default:
                throw BundleError(message: "bundle.json: generation.prompt_format.pre_normalize[\(i)]: unknown step type \(type); this app applies NFC and Replace: update the app")
            }
        }
    }

    /// [system], user, (assistant, user)*: the conversations the apps render.
    public static func checkConversation(_ messages: [Message]) throws {
        if messages.isEmpty { throw PromptError(message: "conversation: no messages") }
        for (i, m) in messages.enumerated() where !allRoles.contains(m.role) {
            throw PromptError(message: "conversation: message \(i): unknown role \(m.role)")
        }
        let rest = messages[0].role == "system" ? Array(messages.dropFirst()) : messages
        if rest.isEmpty { throw PromptError(message: "conversation: no user message") }
        for (i, m) in rest.enumerated() {
            let want = i % 2 == 0 ? "user" : "assistant"
            if m.role != want { throw PromptError(message: "conversation: turn \(i + 1) is \(m.role), expected \(want)") }
        }
        if rest.last!.role != "user" { throw PromptError(message: "conversation: the last message must be the user's") }
    }

    /// Python's str.strip(chars): both ends, by code point (Unicode scalar).
    public static func strip(_ s: String, _ chars: String) -> String { rstrip(lstrip(s, chars), chars) }

    public static func lstrip(_ s: String, _ chars: String) -> String {
        let set = Set(chars.unicodeScalars)
        var scalars = Substring(s).unicodeScalars[...]
        while let c = scalars.first, set.contains(c) { scalars = scalars.dropFirst() }
        return String(String.UnicodeScalarView(scalars))
    }

    public static func rstrip(_ s: String, _ chars: String) -> String {
        let set = Set(chars.unicodeScalars)
        var scalars = Substring(s).unicodeScalars[...]
        while let c = scalars.last, set.contains(c) { scalars = scalars.dropLast() }
        return String(String.UnicodeScalarView(scalars))
    }

    static func substringAfterLast(_ s: String, _ delimiter: String) -> String {
        guard let r = s.range(of: delimiter, options: [.backwards, .literal]) else { return s }
        return String(s[r.upperBound...])
    }

    static let months = ["January", "February", "March", "April", "May", "June", "July", "August",
                         "September", "October", "November", "December"]
    static let days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

    static func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }

    /// The strftime subset of prompt_format.STRFTIME, English names (Python's C locale).
    public static func strftime(_ fmt: String, _ d: SimpleDate) -> String {
        var out = ""
        let chars = Array(fmt)
        var i = 0
        while i < chars.count {
            let c = chars[i]
            if c != "%" || i + 1 >= chars.count {
                out.append(c)
                i += 1
                continue
            }
            let f = chars[i + 1]
            i += 2
            switch f {
            case "d": out += two(d.day)
            case "e": out += d.day < 10 ? " \(d.day)" : "\(d.day)"
            case "m": out += two(d.month)
            case "y": out += two(d.year % 100)
            case "Y": out += "\(d.year)"
            case "b": out += String(months[d.month - 1].prefix(3))
            case "B": out += months[d.month - 1]
            case "a": out += String(days[d.weekday].prefix(3))
            case "A": out += days[d.weekday]
            case "H": out += two(d.hour)
            case "M": out += two(d.minute)
            case "S": out += two(d.second)
            case "%": out += "%"
            default: out += "%\(f)"
            }
        }
        return out
    }
}

// MARK: - streaming, stats, cache plan (Streaming.kt)

/// Stop strings matched on streamed text; text that could still grow into one is held back.
/// Works on Unicode scalars (code points), as Kotlin and Python compare, not on Swift Characters.
public final class StopFilter {
    private let stops: [[Unicode.Scalar]]
    private var held: [Unicode.Scalar] = []
    public private(set) var stopped = false
    public private(set) var stopString: String? = nil
    /// Index of the piece (0-based, counting every push) in which the stop string completed.
    public private(set) var stopPiece: Int? = nil
    private var pieces = 0

    public init(_ stops: [String]) { self.stops = stops.map { Array($0.unicodeScalars) } }

    /// The text to show now for this piece ("" while holding or once stopped).
    public func push(_ piece: String) -> String {
        let index = pieces
        pieces += 1
        if stopped { return "" }
        held += Array(piece.unicodeScalars)
        let text = held
        var first = -1
        var which: [Unicode.Scalar]? = nil
        for s in stops {
            let at = indexOf(text, s)
            if at >= 0 && (first < 0 || at < first) {
                first = at
                which = s
            }
        }
        if first >= 0 {
            stopped = true
            stopString = which.map(string)
            stopPiece = index
            held = []
            return string(Array(text[..<first]))
        }
        let keep = holdFrom(text)
        held = Array(text[keep...])
        return string(Array(text[..<keep]))
    }

    /// The generation ended without a stop string: what was held back is real text.
    public func finish() -> String {
        if stopped { return "" }
        let rest = held
        held = []
        return string(rest)
    }

    /// The earliest position whose tail could still grow into a stop string.
    private func holdFrom(_ text: [Unicode.Scalar]) -> Int {
        for p in 0..<text.count {
            let tail = text[p...]
            if stops.contains(where: { $0.starts(with: tail) }) { return p }
        }
        return text.count
    }

    private func indexOf(_ text: [Unicode.Scalar], _ s: [Unicode.Scalar]) -> Int {
        if s.isEmpty || s.count > text.count { return s.isEmpty ? 0 : -1 }
        for p in 0...(text.count - s.count) where text[p..<(p + s.count)].elementsEqual(s) { return p }
        return -1
    }

    private func string(_ scalars: [Unicode.Scalar]) -> String {
        var v = String.UnicodeScalarView()
        v.append(contentsOf: scalars)
        return String(v)
    }
}

func hasScalarPrefix(_ s: String, _ prefix: String) -> Bool { s.unicodeScalars.starts(with: prefix.unicodeScalars) }

/// The runner's stats JSON (ExecuTorch extension/llm/runner/stats.h).
public struct RunStats: Equatable {
    public let promptTokens: Int
    public let generatedTokens: Int
    public let prefillTokensPerSecond: Double
    public let decodeTokensPerSecond: Double
    public let timeToFirstTokenSeconds: Double

    /// nil for text that is not a stats object. Rates as ExecuTorch's print_report computes them.
    public static func parse(_ json: String) -> RunStats? {
        guard let any = try? JSONSerialization.jsonObject(with: Data(json.utf8)), let o = any as? [String: Any] else { return nil }
        func num(_ k: String) -> Double? { (o[k] as? NSNumber)?.doubleValue }
        let scale = num("SCALING_FACTOR_UNITS_PER_SECOND") ?? 1000.0
        guard let start = num("inference_start_ms"), let promptEnd = num("prompt_eval_end_ms"), let end = num("inference_end_ms"),
              let first = num("first_token_ms"), let prompt = num("prompt_tokens"), let generated = num("generated_tokens") else { return nil }
        return RunStats(
            promptTokens: Int(prompt),
            generatedTokens: Int(generated),
            prefillTokensPerSecond: promptEnd > start ? prompt / ((promptEnd - start) / scale) : 0.0,
            decodeTokensPerSecond: end > promptEnd ? generated / ((end - promptEnd) / scale) : 0.0,
            timeToFirstTokenSeconds: (first - start) / scale
        )
    }
}

/// Multi-turn KV-cache reuse (see CachePlan in Streaming.kt): prefill only the new text when the new
/// rendering extends what the cache holds at a special-token boundary; otherwise reset and prefill all.
public struct CachePlan: Equatable {
    public let reset: Bool
    public let text: String

    public static func plan(cached: String?, rendered: String, format: PromptFormat) -> CachePlan {
        if let cached = cached, !cached.isEmpty, hasScalarPrefix(rendered, cached) {
            let delta = String(String.UnicodeScalarView(rendered.unicodeScalars.dropFirst(cached.unicodeScalars.count)))
            let suffix = format.assistantSuffix
            if !suffix.isEmpty && hasScalarPrefix(delta, suffix) { return CachePlan(reset: false, text: delta) }
        }
        return CachePlan(reset: true, text: rendered)
    }
}
