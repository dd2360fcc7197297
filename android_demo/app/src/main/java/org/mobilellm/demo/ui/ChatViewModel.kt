// UI state for the chat screen (NOT compiled here: needs androidx; see README "Not verified here").
// All logic lives in core (tested) and engine/ChatEngine (compiled against the stubs); this only
// moves strings between them and Compose.
package org.mobilellm.demo.ui

import androidx.compose.runtime.mutableStateListOf
import androidx.compose.runtime.mutableStateOf
import androidx.lifecycle.ViewModel
import androidx.lifecycle.viewModelScope
import java.io.File
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import org.mobilellm.demo.core.Message
import org.mobilellm.demo.core.RunStats
import org.mobilellm.demo.engine.BundleLocator
import org.mobilellm.demo.engine.ChatEngine
import org.mobilellm.demo.engine.ChatListener
import org.mobilellm.demo.engine.FoundBundle

class ChatViewModel : ViewModel() {
    val bundles = mutableStateListOf<FoundBundle>()
    val messages = mutableStateListOf<Message>()
    val streaming = mutableStateOf("")
    val busy = mutableStateOf(false)
    val status = mutableStateOf("")
    val systemPreset = mutableStateOf<String?>(null) // a key of prompt_format.system_prompts (R1: math, code)
    val thinking = mutableStateOf(true)
    private var engine: ChatEngine? = null

    /** /data/local/tmp/mobilellm/ first, then the app's own folders. */
    fun scan(appStorage: List<File>) {
        bundles.clear()
        bundles += BundleLocator.find(listOf(File(BundleLocator.PUSH_DIR)) + appStorage)
    }

    fun open(found: FoundBundle) {
        val b = found.bundle ?: return
        engine?.close()
        messages.clear()
        status.value = "loading ${b.model}…"
        viewModelScope.launch(Dispatchers.Default) {
            val e = ChatEngine(found.dir, b)
            e.load()
            engine = e
            withContext(Dispatchers.Main) { status.value = "${b.model}: ${b.maxContext}-token context" }
        }
    }

    fun send(text: String) {
        val e = engine ?: return
        val system = systemPreset.value?.let { e.bundle.promptFormat.systemPrompts[it] }
        if (messages.isEmpty() && system != null) messages += Message("system", system)
        messages += Message("user", text)
        busy.value = true
        streaming.value = ""
        val thinkingFlag = if (e.bundle.promptFormat.hasThinking) thinking.value else null
        viewModelScope.launch(Dispatchers.Default) {
            val reply = e.reply(messages.toList(), maxNewTokens = 512, enableThinking = thinkingFlag, listener = object : ChatListener {
                override fun onText(text: String) {
                    viewModelScope.launch(Dispatchers.Main) { streaming.value += text }
                }

                override fun onStats(stats: RunStats) {
                    viewModelScope.launch(Dispatchers.Main) {
                        status.value = "%.1f tok/s decode · %.1f tok/s prefill · TTFT %.2f s".format(
                            stats.decodeTokensPerSecond, stats.prefillTokensPerSecond, stats.timeToFirstTokenSeconds)
                    }
                }
            })
            withContext(Dispatchers.Main) {
                messages += Message("assistant", reply.text)
                streaming.value = ""
                busy.value = false
                reply.error?.let { status.value = it }
            }
        }
    }

    fun stop() = engine?.stop()

    override fun onCleared() {
        engine?.close()
    }
}
