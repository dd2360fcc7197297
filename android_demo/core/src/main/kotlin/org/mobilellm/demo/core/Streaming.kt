// What the chat screen shows while LlmCallback.onResult streams text pieces, and the runner's stats.
package org.mobilellm.demo.core

import org.json.JSONObject

/**
 * Stop strings matched on streamed text. A stop string may arrive split over several pieces, so
 * text that could still grow into one is held back until the next piece decides it; nothing of a
 * stop string is ever shown. (Stop *ids* are the runner's job: it reads get_eos_ids from the .pte.)
 */
class StopFilter(private val stops: List<String>) {
    private val held = StringBuilder()
    var stopped: Boolean = false
        private set
    var stopString: String? = null
        private set
    /** Index of the piece (0-based, counting every push) in which the stop string completed. */
    var stopPiece: Int? = null
        private set
    private var pieces = 0

    /** The text to show now for this piece ("" while holding or once stopped). */
    fun push(piece: String): String {
        val index = pieces++
        if (stopped) return ""
        held.append(piece)
        val text = held.toString()
        var first = -1
        var which: String? = null
        for (s in stops) {
            val at = text.indexOf(s)
            if (at >= 0 && (first < 0 || at < first)) {
                first = at
                which = s
            }
        }
        if (first >= 0) {
            stopped = true
            stopString = which
            stopPiece = index
            held.setLength(0)
            return text.substring(0, first)
        }
        val keep = holdFrom(text)
        held.setLength(0)
        held.append(text, keep, text.length)
        return text.substring(0, keep)
    }

    /** The generation ended without a stop string: what was held back is real text. */
    fun finish(): String {
        if (stopped) return ""
        val rest = held.toString()
        held.setLength(0)
        return rest
    }

    /** The earliest position whose tail could still grow into a stop string. */
    private fun holdFrom(text: String): Int {
        for (p in text.indices) {
            val tail = text.substring(p)
            if (stops.any { it.startsWith(tail) }) return p
        }
        return text.length
    }
}

/** The runner's stats JSON (LlmCallback.onStats; ExecuTorch extension/llm/runner/stats.h). */
data class RunStats(
    val promptTokens: Int,
    val generatedTokens: Int,
    val prefillTokensPerSecond: Double,
    val decodeTokensPerSecond: Double,
    val timeToFirstTokenSeconds: Double,
) {
    companion object {
        /** null for text that is not a stats object. Rates as ExecuTorch's print_report computes them. */
        fun parse(json: String): RunStats? {
            val o = try {
                JSONObject(json)
            } catch (e: Exception) {
                return null
            }
            return try {
                val scale = o.optDouble("SCALING_FACTOR_UNITS_PER_SECOND", 1000.0)
                val start = o.getLong("inference_start_ms")
                val promptEnd = o.getLong("prompt_eval_end_ms")
                val end = o.getLong("inference_end_ms")
                val first = o.getLong("first_token_ms")
                val prompt = o.getInt("prompt_tokens")
                val generated = o.getInt("generated_tokens")
                RunStats(
                    promptTokens = prompt,
                    generatedTokens = generated,
                    prefillTokensPerSecond = if (promptEnd > start) prompt / ((promptEnd - start) / scale) else 0.0,
                    decodeTokensPerSecond = if (end > promptEnd) generated / ((end - promptEnd) / scale) else 0.0,
                    timeToFirstTokenSeconds = (first - start) / scale,
                )
            } catch (e: Exception) {
                null
            }
        }
    }
}

/**
 * Multi-turn KV-cache reuse. Each turn re-renders the whole conversation (authoritative). The
 * cache holds what was fed so far: the previous prompt plus the generated answer (the stop token
 * is not fed back). When the new rendering extends that text and the new part starts with the
 * assistant turn's suffix (a special-token boundary, so the new part tokenizes apart from the old),
 * prefill only the new part; otherwise (for example Qwen3 dropping the earlier reasoning, or a
 * template trimming the answer) reset the context and prefill everything.
 */
data class CachePlan(val reset: Boolean, val text: String) {
    companion object {
        fun plan(cached: String?, rendered: String, format: PromptFormat): CachePlan {
            if (cached != null && cached.isNotEmpty() && rendered.startsWith(cached)) {
                val delta = rendered.substring(cached.length)
                val suffix = format.assistantSuffix
                if (suffix.isNotEmpty() && delta.startsWith(suffix)) return CachePlan(false, delta)
            }
            return CachePlan(true, rendered)
        }
    }
}
