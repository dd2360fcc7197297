// bundle.json: the manifest mobilellm-export writes (schema: mobilellm_export/schemas/bundle.schema.json).
// Pure Kotlin + org.json (Android ships org.json; on the JVM, Debian's libandroid-json-org-java is the same code).
package org.mobilellm.demo.core

import org.json.JSONArray
import org.json.JSONObject

class BundleError(message: String) : Exception(message)

/** generation.bos: put [text] in front of the prompt when [add] and it is not there yet; never ask the runner. */
data class BosPolicy(val id: Int?, val text: String?, val add: Boolean) {
    fun apply(prompt: String): String =
        if (add && text != null && !prompt.startsWith(text)) text + prompt else prompt
}

data class Bundle(
    val schemaVersion: Int,
    val model: String,
    val entry: String,
    val dataFile: String?,
    val tokenizerFile: String,
    val eosIds: List<Int>,
    val bos: BosPolicy,
    val maxContext: Int,
    val maxSeqLen: Int,
    val temperature: Double,
    val topP: Double,
    val promptFormat: PromptFormat,
) {
    /** The prompt for this conversation: prompt_format, then the BOS policy (the chat template's text). */
    fun prompt(messages: List<Message>, enableThinking: Boolean? = null, date: SimpleDate = SimpleDate.now()): String =
        bos.apply(promptFormat.render(messages, enableThinking, date))

    /** The text LlmModule is given for this conversation: [prompt], pre-normalized (prompt_format.pre_normalize). */
    fun runnerPrompt(messages: List<Message>, enableThinking: Boolean? = null, date: SimpleDate = SimpleDate.now()): String =
        promptFormat.runnerText(prompt(messages, enableThinking, date))

    companion object {
        const val SCHEMA_VERSION = 3
        /** Schema 3 only dropped recipe.target_thresholds, which an app never reads: schema 2 loads as it is. */
        const val MIN_SCHEMA_VERSION = 2
        /** prompt_format versions read: 1, and 2 (= 1 + the required pre_normalize list). */
        const val PROMPT_FORMAT_VERSION = 2

        fun parse(text: String): Bundle {
            val root = try {
                JSONObject(text)
            } catch (e: Exception) {
                throw BundleError("bundle.json is not a JSON object: ${e.message}")
            }
            val j = Fields(root, "")
            if (!root.has("schema_version")) throw BundleError("bundle.json: missing schema_version")
            val version = j.int("schema_version")
            if (version > SCHEMA_VERSION) {
                throw BundleError("bundle.json has schema_version $version; this app reads schema_version $MIN_SCHEMA_VERSION-$SCHEMA_VERSION: update the app")
            }
            if (version < MIN_SCHEMA_VERSION) {
                throw BundleError("bundle.json has schema_version $version; this app reads schema_version $MIN_SCHEMA_VERSION-$SCHEMA_VERSION: re-export the bundle")
            }
            val target = j.obj("target")
            val gen = j.obj("generation")
            val bos = gen.obj("bos")
            return Bundle(
                schemaVersion = version,
                model = j.string("model"),
                entry = target.string("entry"),
                dataFile = target.optString("data_file"),
                tokenizerFile = j.obj("tokenizer").string("file"),
                eosIds = gen.intList("eos_ids"),
                bos = BosPolicy(bos.optInt("id"), bos.optString("text"), bos.bool("add")),
                maxContext = gen.int("max_context"),
                maxSeqLen = gen.int("max_seq_len"),
                temperature = gen.double("temperature"),
                topP = gen.double("top_p"),
                promptFormat = PromptFormat.parse(gen.obj("prompt_format")),
            )
        }
    }
}

/** Typed access with one clear error naming the field (a missing one, or one of the wrong type). */
internal class Fields(private val o: JSONObject, private val path: String) {
    private fun name(key: String) = if (path.isEmpty()) key else "$path.$key"

    private fun raw(key: String): Any {
        if (!o.has(key)) throw BundleError("bundle.json: missing ${name(key)}")
        return o.get(key)
    }

    private fun bad(key: String, want: String): Nothing = throw BundleError("bundle.json: ${name(key)}: expected $want")

    fun has(key: String) = o.has(key) && !o.isNull(key)

    fun obj(key: String): Fields = (raw(key) as? JSONObject)?.let { Fields(it, name(key)) } ?: bad(key, "an object")

    fun string(key: String): String = raw(key) as? String ?: bad(key, "a string")

    fun optString(key: String): String? = if (has(key)) string(key) else null

    fun bool(key: String): Boolean = raw(key) as? Boolean ?: bad(key, "true or false")

    fun int(key: String): Int {
        val v = raw(key)
        return if (v is Int || v is Long) (v as Number).toInt() else bad(key, "an integer")
    }

    fun optInt(key: String): Int? = if (has(key)) int(key) else null

    fun double(key: String): Double = (raw(key) as? Number)?.toDouble() ?: bad(key, "a number")

    fun intList(key: String): List<Int> {
        val a = raw(key) as? JSONArray ?: bad(key, "a list of integers")
        return (0 until a.length()).map { i ->
            val v = a.get(i)
            if (v is Int || v is Long) (v as Number).toInt() else bad(key, "a list of integers")
        }
    }

    fun stringList(key: String): List<String> {
        val a = raw(key) as? JSONArray ?: bad(key, "a list of strings")
        return (0 until a.length()).map { i -> a.get(i) as? String ?: bad(key, "a list of strings") }
    }

    /** A list of objects, each named key[i] in errors. */
    fun objList(key: String): List<Fields> {
        val a = raw(key) as? JSONArray ?: bad(key, "a list")
        return (0 until a.length()).map { i -> (a.get(i) as? JSONObject)?.let { Fields(it, "${name(key)}[$i]") } ?: bad("$key[$i]", "an object") }
    }

    fun stringMap(key: String): Map<String, String> {
        val m = obj(key)
        return m.keys().associateWith { m.string(it) }
    }

    fun keys(): List<String> = o.keys().asSequence().map { it as String }.toList().sorted()
}
