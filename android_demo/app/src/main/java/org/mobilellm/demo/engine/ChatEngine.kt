// The Android glue: one LlmModule per bundle, fed from prompt_format. No Android classes here, so
// it compiles on the JVM against compile-only stubs of executorch-android 1.5.1 (android_demo/stubs).
// Bundle.parse has already refused a bundle whose target.min_runtime is newer than that.
package org.mobilellm.demo.engine

import java.io.File
import org.mobilellm.demo.core.Bundle
import org.mobilellm.demo.core.CachePlan
import org.mobilellm.demo.core.Message
import org.mobilellm.demo.core.RunStats
import org.mobilellm.demo.core.SimpleDate
import org.mobilellm.demo.core.StopFilter
import org.pytorch.executorch.extension.llm.LlmCallback
import org.pytorch.executorch.extension.llm.LlmModule

interface ChatListener {
    /** Text to append on screen (never a piece of a stop string). */
    fun onText(text: String)

    fun onStats(stats: RunStats)
}

data class Reply(val text: String, val stopped: Boolean, val reusedCache: Boolean, val error: String?)

/**
 * LlmModule API used (executorch-android 1.5.1, TextLLMRunner underneath; LlmModule.kt, LlmCallback.kt and
 * the JNI as at 1.4.1 in the sources read, android_demo/README.md):
 *  - LlmModule(model, tokenizer, temperature[, dataPath]): dataPath = the bundle's .ptd (target.data_file);
 *  - generate(prompt, seqLen, callback, echo=false, temperature, numBos=0, numEos=0): tokenizes
 *    `prompt`, prefills it at the runner's current position and decodes; the position persists
 *    across calls, so a second generate() with only the new text continues the conversation
 *    (KV cache kept) — this is how a turn "prefills only the new tokens";
 *  - resetContext(): position 0, i.e. a fresh KV cache — used when the new rendering does not
 *    extend what the cache holds (Qwen3 dropping earlier reasoning, a trimmed answer, a stop we
 *    caused ourselves, the context limit);
 *  - stop(): ends generate() early (called from onResult when a stop string shows up; stop() takes
 *    no lock, unlike the other methods, which must not be called from a callback).
 * BOS is in the prompt text (generation.bos), so numBos = 0; the runner stops by itself on the
 * .pte's get_eos_ids. The cache plan works on the prompt text; LlmModule is given the text to
 * prefill pre-normalized (prompt_format.pre_normalize: the bundle's tokenizer.json leaves NFC and
 * Gemma's space replacement to the app, see PromptFormat.runnerText).
 */
class ChatEngine(val dir: File, val bundle: Bundle, private val temperature: Float = bundle.temperature.toFloat()) : AutoCloseable {
    private val module: LlmModule = bundle.dataFile.let { data ->
        val model = File(dir, bundle.entry).path
        val tokenizer = File(dir, bundle.tokenizerFile).path
        if (data != null) LlmModule(model, tokenizer, temperature, File(dir, data).path) else LlmModule(model, tokenizer, temperature)
    }
    /** The text whose tokens the KV cache holds (null: nothing reusable), and how many tokens that is. */
    private var cached: String? = null
    private var cachedTokens = 0

    fun load() = module.load()

    /**
     * One assistant turn for `conversation` (ending with the user's message). Blocks until done;
     * call it off the UI thread. At the context limit (the runner does not check it when
     * max_seq_len < max_context), the oldest user/assistant pair is dropped and the cache reset.
     */
    fun reply(conversation: List<Message>, maxNewTokens: Int, enableThinking: Boolean?, listener: ChatListener,
              date: SimpleDate = SimpleDate.now()): Reply {
        var turns = conversation
        var rendered = bundle.prompt(turns, enableThinking, date)
        var plan = CachePlan.plan(cached, rendered, bundle.promptFormat)
        // A token is at least one UTF-8 byte of the text tokenized, so bytes bound the tokens from above.
        fun fits(p: CachePlan) = (if (p.reset) 0 else cachedTokens) + utf8(bundle.promptFormat.runnerText(p.text)) + maxNewTokens <= bundle.maxContext
        while (!fits(plan)) {
            val system = if (turns.first().role == "system") 1 else 0
            if (turns.size - system < 3) return Reply("", false, false, "the message does not fit in the ${bundle.maxContext}-token context")
            turns = turns.take(system) + turns.drop(system + 2)
            rendered = bundle.prompt(turns, enableThinking, date)
            plan = CachePlan(true, rendered)
        }
        if (plan.reset) {
            module.resetContext()
            cachedTokens = 0
        }
        val filter = StopFilter(bundle.promptFormat.stopStrings)
        val shown = StringBuilder()
        var error: String? = null
        var lastStats: RunStats? = null
        val callback = object : LlmCallback {
            override fun onResult(result: String) {
                val text = filter.push(result)
                if (text.isNotEmpty()) {
                    shown.append(text)
                    listener.onText(text)
                }
                if (filter.stopped) module.stop()
            }

            override fun onStats(stats: String) {
                RunStats.parse(stats)?.let { s ->
                    lastStats = s
                    listener.onStats(s)
                }
            }

            override fun onError(errorCode: Int, message: String) {
                error = "ExecuTorch error $errorCode: $message"
            }
        }
        // LlmModule passes seqLen but not LlmGenerationConfig.maxNewTokens to the runner, which
        // caps new tokens at min(seqLen, max_context) - occupied, where occupied is 0 when the .pte
        // prefills in chunks (max_seq_len < max_context, our exports) and the position otherwise.
        val seqLen = if (bundle.maxSeqLen < bundle.maxContext) maxNewTokens else bundle.maxContext
        try {
            module.generate(bundle.promptFormat.runnerText(plan.text), seqLen, callback, false, temperature, 0, 0)
        } catch (e: RuntimeException) {
            error = e.message ?: e.toString()
        }
        val rest = filter.finish()
        if (rest.isNotEmpty()) {
            shown.append(rest)
            listener.onText(rest)
        }
        // Reusable next turn only when the runner stopped on an EOS (its text is a stop string):
        // then the cache holds the prompt and every answer token. After a max-length stop the last
        // sampled token was never fed back, and after an error nothing is known: reset next time.
        val s = lastStats
        if (error == null && filter.stopped && s != null) {
            cached = rendered + shown // == what was cached + plan.text + the answer
            cachedTokens += s.promptTokens + s.generatedTokens
        } else {
            cached = null
        }
        return Reply(shown.toString(), filter.stopped, !plan.reset, error)
    }

    /** The stop button. */
    fun stop() = module.stop()

    override fun close() = module.close()

    private fun utf8(s: String) = s.toByteArray(Charsets.UTF_8).size
}
