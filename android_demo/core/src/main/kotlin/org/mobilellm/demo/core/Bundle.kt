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

/** target.min_runtime: the oldest runtime that loads the bundle's artifact (e.g. executorch 1.5.1). */
data class MinRuntime(val name: String, val version: String)

data class Bundle(
    val schemaVersion: Int,
    val model: String,
    val entry: String,
    val dataFile: String?,
    val minRuntime: MinRuntime?,
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
        /** The ExecuTorch this app runs: the executorch-android AAR app/build.gradle.kts pins, the version
         *  that writes the bundles (tests/e2e/test_apps.py checks that all three agree). */
        const val EXECUTORCH_VERSION = "1.5.1"
        /** The runtimes this app has, by target.min_runtime's names. */
        val RUNTIMES = mapOf("executorch" to EXECUTORCH_VERSION)

        private val VERSION = Regex("([A-Za-z]*)([0-9]{1,9}(?:\\.[0-9]{1,9})*)")
        private val NAMES = mapOf("executorch" to "ExecuTorch", "coreml" to "Core ML", "onnxruntime" to "ONNX Runtime")

        /**
         * [a] against [b], number by number after the same letter prefix ("1.10.0" > "1.5.1", "iOS18" > "iOS17",
         * a missing number is 0): negative, 0 or positive; null when either is not such a version or the
         * prefixes differ.
         */
        fun compareVersions(a: String, b: String): Int? {
            val x = VERSION.matchEntire(a) ?: return null
            val y = VERSION.matchEntire(b) ?: return null
            if (x.groupValues[1] != y.groupValues[1]) return null
            val p = x.groupValues[2].split(".").map { it.toInt() }
            val q = y.groupValues[2].split(".").map { it.toInt() }
            for (i in 0 until maxOf(p.size, q.size)) {
                val c = p.getOrElse(i) { 0 }.compareTo(q.getOrElse(i) { 0 })
                if (c != 0) return c
            }
            return 0
        }

        /** Why a bundle needing [need] cannot run on [have] (runtime name -> version), in one line; null: it can. */
        fun runtimeRefusal(need: MinRuntime?, have: Map<String, String>): String? {
            if (need == null) return null // written before bundles recorded it
            val name = NAMES[need.name] ?: need.name
            val mine = have[need.name]
                ?: return "bundle.json: this bundle needs $name ≥ ${need.version} (target.min_runtime); this app runs " +
                    have.entries.sortedBy { it.key }.joinToString { "${NAMES[it.key] ?: it.key} ${it.value}" }
            val c = compareVersions(need.version, mine)
            return if (c != null && c <= 0) null
            else "bundle.json: this bundle needs $name ≥ ${need.version} (target.min_runtime); this app has $mine: update the app or re-export the bundle"
        }

        fun parse(text: String, runtimes: Map<String, String> = RUNTIMES): Bundle {
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
            val minRuntime = if (target.has("min_runtime")) parseMinRuntime(target.obj("min_runtime")) else null
            runtimeRefusal(minRuntime, runtimes)?.let { throw BundleError(it) }
            val gen = j.obj("generation")
            val bos = gen.obj("bos")
            return Bundle(
                schemaVersion = version,
                model = j.string("model"),
                entry = target.string("entry"),
                dataFile = target.optString("data_file"),
                minRuntime = minRuntime,
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

        private fun parseMinRuntime(j: Fields): MinRuntime {
            val v = j.string("version")
            if (!VERSION.matches(v)) throw BundleError("bundle.json: target.min_runtime.version: expected a version like 1.5.1 or iOS18, not $v")
            return MinRuntime(j.string("name"), v)
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
