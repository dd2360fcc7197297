// prompt_format: the chat template reduced at export to data (mobilellm_export/prompt_format.py documents it),
// proved there byte-equal to the jinja rendering. This file renders it exactly as render() does in Python.
package org.mobilellm.demo.core

data class Message(val role: String, val content: String)

data class Turn(val prefix: String, val suffix: String, val trim: Boolean)

data class Thinking(
    val open: String,
    val close: String,
    val history: String, // "drop_reasoning" | "keep"
    val historyLstrip: String,
    val generationPromptOn: String,
    val generationPromptOff: String,
)

/** A calendar date and time, with weekday computed here (no locale, no time zone rules). */
data class SimpleDate(val year: Int, val month: Int, val day: Int, val hour: Int = 0, val minute: Int = 0, val second: Int = 0) {
    /** 0 = Monday ... 6 = Sunday (Python's weekday()). */
    val weekday: Int
        get() {
            val t = intArrayOf(0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4)
            val y = if (month < 3) year - 1 else year
            val sunday0 = (y + y / 4 - y / 100 + y / 400 + t[month - 1] + day) % 7
            return (sunday0 + 6) % 7
        }

    companion object {
        fun now(): SimpleDate {
            val d = java.time.LocalDateTime.now()
            return SimpleDate(d.year, d.monthValue, d.dayOfMonth, d.hour, d.minute, d.second)
        }

        /** "2026-03-09T14:05:07" */
        fun parseIso(s: String): SimpleDate {
            val p = s.split('-', 'T', ':').map { it.toInt() }
            return SimpleDate(p[0], p[1], p[2], p.getOrElse(3) { 0 }, p.getOrElse(4) { 0 }, p.getOrElse(5) { 0 })
        }
    }
}

class PromptError(message: String) : Exception(message)

/**
 * One step of prompt_format.pre_normalize: "NFC" (java.text.Normalizer) or "Replace" (every
 * non-overlapping occurrence of the literal [pattern], left to right, by [content]). The bundle's
 * tokenizer.json no longer holds these normalizer steps (ExecuTorch's C++ tokenizer applies them
 * differently from the `tokenizers` library), so the text is given to LlmModule with them applied.
 */
data class NormalizeStep(val type: String, val pattern: String = "", val content: String = "") {
    fun apply(text: String): String = when (type) {
        "NFC" -> java.text.Normalizer.normalize(text, java.text.Normalizer.Form.NFC)
        "Replace" -> text.replace(pattern, content)
        else -> throw PromptError("unknown pre_normalize step $type") // parse() refuses it first
    }
}

class PromptFormat(
    val reducible: Boolean,
    val reason: String?,
    val stopIds: List<Int>,
    val stopStrings: List<String>,
    val systemPrompts: Map<String, String>,
    private val start: String,
    private val roles: Map<String, Turn>,
    private val trimChars: String,
    private val systemPlacement: String, // "turn" | "first_user"
    private val systemSeparator: String,
    private val systemDefault: String?,
    private val generationPrompt: String,
    private val thinking: Thinking?,
    private val dateFormat: String?,
    private val datePlaceholder: String?,
    val preNormalize: List<NormalizeStep> = emptyList(),
) {
    val assistantSuffix: String get() = roles["assistant"]?.suffix ?: ""
    val hasThinking: Boolean get() = thinking != null

    /** What LlmModule is given for prompt text [text] (a whole prompt or the new part of one): pre_normalize applied. */
    fun runnerText(text: String): String = preNormalize.fold(text) { t, step -> step.apply(t) }

    fun render(messages: List<Message>, enableThinking: Boolean? = null, date: SimpleDate = SimpleDate.now()): String {
        if (!reducible) throw PromptError("this bundle's chat template has no prompt_format: $reason")
        checkConversation(messages)
        val today = if (dateFormat != null) strftime(dateFormat, date) else null

        fun fixed(s: String): String = if (today != null) s.replace(datePlaceholder!!, today) else s
        fun content(role: String, text: String): String = if (roles.getValue(role).trim) strip(text, trimChars) else text

        val hasSystem = messages[0].role == "system"
        var sysText: String? = if (hasSystem) messages[0].content else systemDefault
        if (sysText != null && !hasSystem) sysText = fixed(sysText)
        val turns = if (hasSystem) messages.drop(1) else messages
        val out = StringBuilder(fixed(start))
        var fold = ""
        if (sysText != null) {
            if (systemPlacement == "turn") {
                val r = roles.getValue("system")
                out.append(fixed(r.prefix)).append(content("system", sysText)).append(fixed(r.suffix))
            } else {
                fold = content("system", sysText) + fixed(systemSeparator)
            }
        }
        for ((i, m) in turns.withIndex()) {
            var text = m.content
            if (m.role == "assistant" && thinking != null && thinking.history == "drop_reasoning" && text.contains(thinking.close)) {
                text = lstrip(text.substringAfterLast(thinking.close), thinking.historyLstrip)
            }
            text = content(m.role, text)
            if (i == 0) text = fold + text
            val r = roles.getValue(m.role)
            out.append(fixed(r.prefix)).append(text).append(fixed(r.suffix))
        }
        out.append(fixed(generationPrompt))
        if (thinking != null) {
            out.append(fixed(if (enableThinking == false) thinking.generationPromptOff else thinking.generationPromptOn))
        }
        return out.toString()
    }

    companion object {
        private val ROLES = setOf("system", "user", "assistant")

        internal fun parse(j: Fields): PromptFormat {
            val version = j.int("version")
            if (version < 1 || version > Bundle.PROMPT_FORMAT_VERSION) {
                throw BundleError("bundle.json: generation.prompt_format version $version; this app reads versions 1 to ${Bundle.PROMPT_FORMAT_VERSION}: " +
                    if (version > Bundle.PROMPT_FORMAT_VERSION) "update the app" else "re-export the bundle")
            }
            val pre = parsePreNormalize(j, version)
            val reducible = j.bool("reducible")
            val stop = j.obj("stop")
            val stopIds = stop.intList("ids")
            val stopStrings = stop.stringList("strings")
            val prompts = j.stringMap("system_prompts")
            if (!reducible) {
                return PromptFormat(false, j.string("reason"), stopIds, stopStrings, prompts, "", emptyMap(), "", "turn", "", null, "", null, null, null, pre)
            }
            val r = j.obj("roles")
            val roles = ROLES.associateWith { name ->
                val t = r.obj(name)
                Turn(t.string("prefix"), t.string("suffix"), t.bool("trim"))
            }
            val sys = j.obj("system")
            val placement = sys.string("placement")
            if (placement != "turn" && placement != "first_user") throw BundleError("bundle.json: generation.prompt_format.system.placement: unknown value $placement")
            val thinking = if (j.has("thinking")) j.obj("thinking").let { t ->
                val history = t.string("history")
                if (history != "drop_reasoning" && history != "keep") throw BundleError("bundle.json: generation.prompt_format.thinking.history: unknown value $history")
                Thinking(t.string("open"), t.string("close"), history, t.string("history_lstrip"),
                    t.string("generation_prompt_on"), t.string("generation_prompt_off"))
            } else null
            val date = if (j.has("date")) j.obj("date") else null
            return PromptFormat(
                true, null, stopIds, stopStrings, prompts,
                start = j.string("start"),
                roles = roles,
                trimChars = j.string("trim_chars"),
                systemPlacement = placement,
                systemSeparator = sys.string("separator"),
                systemDefault = sys.optString("default"),
                generationPrompt = j.string("generation_prompt"),
                thinking = thinking,
                dateFormat = date?.string("strftime"),
                datePlaceholder = date?.string("placeholder"),
                preNormalize = pre,
            )
        }

        /**
         * Version 2 requires pre_normalize (a non-empty list) and version 1 has none: an app that
         * knew only version 1 refuses such a bundle instead of mis-tokenizing. A step this app does
         * not know is an error too, never skipped.
         */
        private fun parsePreNormalize(j: Fields, version: Int): List<NormalizeStep> {
            if (version < 2) {
                if (j.has("pre_normalize")) throw BundleError("bundle.json: generation.prompt_format: pre_normalize needs prompt_format version 2")
                return emptyList()
            }
            val steps = j.objList("pre_normalize")
            if (steps.isEmpty()) throw BundleError("bundle.json: generation.prompt_format.pre_normalize: expected a non-empty list")
            return steps.mapIndexed { i, s ->
                when (val type = s.string("type")) {
                    "NFC" -> NormalizeStep("NFC")
                    "Replace" -> {
                        val pattern = s.string("pattern")
                        if (pattern.isEmpty()) throw BundleError("bundle.json: generation.prompt_format.pre_normalize[$i].pattern: expected a non-empty string")
                        NormalizeStep("Replace", pattern, s.string("content"))
                    }
                    else -> throw BundleError("bundle.json: generation.prompt_format.pre_normalize[$i]: unknown step type $type; this app applies NFC and Replace: update the app")
                }
            }
        }

        /** [system], user, (assistant, user)*: the conversations the apps render. */
        fun checkConversation(messages: List<Message>) {
            if (messages.isEmpty()) throw PromptError("conversation: no messages")
            for ((i, m) in messages.withIndex()) {
                if (m.role !in ROLES) throw PromptError("conversation: message $i: unknown role ${m.role}")
            }
            val rest = if (messages[0].role == "system") messages.drop(1) else messages
            if (rest.isEmpty()) throw PromptError("conversation: no user message")
            for ((i, m) in rest.withIndex()) {
                val want = if (i % 2 == 0) "user" else "assistant"
                if (m.role != want) throw PromptError("conversation: turn ${i + 1} is ${m.role}, expected $want")
            }
            if (rest.last().role != "user") throw PromptError("conversation: the last message must be the user's")
        }

        /** Python's str.strip(chars): both ends, by code point. */
        fun strip(s: String, chars: String): String = rstrip(lstrip(s, chars), chars)

        fun lstrip(s: String, chars: String): String {
            var i = 0
            while (i < s.length) {
                val cp = s.codePointAt(i)
                if (chars.indexOf(String(Character.toChars(cp))) < 0) break
                i += Character.charCount(cp)
            }
            return s.substring(i)
        }

        fun rstrip(s: String, chars: String): String {
            var end = s.length
            while (end > 0) {
                val cp = s.codePointBefore(end)
                if (chars.indexOf(String(Character.toChars(cp))) < 0) break
                end -= Character.charCount(cp)
            }
            return s.substring(0, end)
        }

        private val MONTHS = listOf("January", "February", "March", "April", "May", "June", "July", "August",
            "September", "October", "November", "December")
        private val DAYS = listOf("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

        private fun two(n: Int) = n.toString().padStart(2, '0')

        /** The strftime subset of prompt_format.STRFTIME, English names (Python's C locale). */
        fun strftime(fmt: String, d: SimpleDate): String {
            val out = StringBuilder()
            var i = 0
            while (i < fmt.length) {
                val c = fmt[i]
                if (c != '%' || i + 1 >= fmt.length) {
                    out.append(c)
                    i += 1
                    continue
                }
                val f = fmt[i + 1]
                i += 2
                out.append(when (f) {
                    'd' -> two(d.day)
                    'e' -> d.day.toString().padStart(2, ' ')
                    'm' -> two(d.month)
                    'y' -> two(d.year % 100)
                    'Y' -> d.year.toString()
                    'b' -> MONTHS[d.month - 1].substring(0, 3)
                    'B' -> MONTHS[d.month - 1]
                    'a' -> DAYS[d.weekday].substring(0, 3)
                    'A' -> DAYS[d.weekday]
                    'H' -> two(d.hour)
                    'M' -> two(d.minute)
                    'S' -> two(d.second)
                    '%' -> "%"
                    else -> "%$f"
                })
            }
            return out.toString()
        }
    }
}
