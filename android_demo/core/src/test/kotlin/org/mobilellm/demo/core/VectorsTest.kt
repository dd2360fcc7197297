// The shared vectors in tests/fixtures/apps/ (the Python and Swift sides check the same files).
// Run: java -Dvectors=<dir> -cp ... org.junit.runner.JUnitCore org.mobilellm.demo.core.VectorsTest
package org.mobilellm.demo.core

import java.io.File
import org.json.JSONArray
import org.json.JSONObject
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class VectorsTest {
    private val dir = File(System.getProperty("vectors") ?: error("pass -Dvectors=<tests/fixtures/apps>"))

    private fun array(name: String) = JSONArray(File(dir, name).readText())

    private fun objects(name: String): List<JSONObject> = array(name).let { a -> (0 until a.length()).map { a.getJSONObject(it) } }

    private fun bundleText(name: String) = File(dir, "bundles/$name/bundle.json").readText()

    private fun messages(a: JSONArray) = (0 until a.length()).map { a.getJSONObject(it).let { m -> Message(m.getString("role"), m.getString("content")) } }

    private fun ints(a: JSONArray) = (0 until a.length()).map { a.getInt(it) }

    private fun strings(a: JSONArray) = (0 until a.length()).map { a.getString(it) }

    /** Runs every vector, then fails once listing each one that did not hold. */
    private fun check(file: String, body: (JSONObject) -> Unit) {
        val bad = mutableListOf<String>()
        val all = objects(file)
        for (v in all) {
            try {
                body(v)
            } catch (e: Throwable) {
                bad += "${v.optString("name", v.optString("bundle") + "/" + v.optString("conversation"))}: ${e.message}"
            }
        }
        assertTrue("$file: no vectors", all.isNotEmpty())
        if (bad.isNotEmpty()) fail("$file: ${bad.size} of ${all.size} vectors failed:\n  " + bad.joinToString("\n  "))
        println("$file: ${all.size} vectors passed")
    }

    /** A vector's own runtimes (name -> version) or, without them, this app's (Bundle.RUNTIMES). */
    private fun runtimes(v: JSONObject): Map<String, String> =
        v.optJSONObject("runtimes")?.let { r -> r.keys().asSequence().map { it as String }.associateWith { r.getString(it) } } ?: Bundle.RUNTIMES

    @Test
    fun bundleParsing() = check("parse.json") { v ->
        val text = if (v.has("bundle")) bundleText(v.getString("bundle")) else v.getJSONObject("manifest").toString()
        val want = v.getJSONObject("expect")
        if (!want.getBoolean("ok")) {
            try {
                Bundle.parse(text, runtimes(v))
                fail("parsed, expected an error containing '${want.getString("error")}'")
            } catch (e: BundleError) {
                assertTrue("error '${e.message}' lacks '${want.getString("error")}'", e.message!!.contains(want.getString("error")))
            }
            return@check
        }
        val b = Bundle.parse(text, runtimes(v))
        assertEquals(want.getInt("schema_version"), b.schemaVersion)
        val need = want.optJSONObject("min_runtime")
        assertEquals("min_runtime", need?.let { MinRuntime(it.getString("name"), it.getString("version")) }, b.minRuntime)
        assertEquals(want.getString("model"), b.model)
        assertEquals(want.getString("entry"), b.entry)
        assertEquals(if (want.isNull("data_file")) null else want.getString("data_file"), b.dataFile)
        assertEquals(want.getString("tokenizer"), b.tokenizerFile)
        assertEquals(ints(want.getJSONArray("eos_ids")), b.eosIds)
        assertEquals(want.getBoolean("bos_add"), b.bos.add)
        assertEquals(if (want.isNull("bos_text")) null else want.getString("bos_text"), b.bos.text)
        assertEquals(want.getInt("max_context"), b.maxContext)
        assertEquals(want.getDouble("temperature"), b.temperature, 0.0)
        assertEquals(strings(want.getJSONArray("stop_strings")), b.promptFormat.stopStrings)
        assertEquals(want.getBoolean("reducible"), b.promptFormat.reducible)
        assertEquals(strings(want.getJSONArray("system_prompts")), b.promptFormat.systemPrompts.keys.sorted())
        val steps = want.getJSONArray("pre_normalize")
        assertEquals("pre_normalize", (0 until steps.length()).map { steps.getJSONObject(it) }.map {
            NormalizeStep(it.getString("type"), it.optString("pattern", ""), it.optString("content", ""))
        }, b.promptFormat.preNormalize)
        assertEquals("probe runner text", want.getString("probe_runner_text"), b.promptFormat.runnerText(want.getString("probe")))
        if (!b.promptFormat.reducible) {
            try {
                b.prompt(listOf(Message("user", "hi")))
                fail("an irreducible format rendered a prompt")
            } catch (e: PromptError) {
            }
        }
    }

    @Test
    fun promptRendering() {
        val bundles = HashMap<String, Bundle>()
        check("prompts.json") { v ->
            val b = bundles.getOrPut(v.getString("bundle")) { Bundle.parse(bundleText(v.getString("bundle"))) }
            val thinking = if (v.isNull("enable_thinking")) null else v.getBoolean("enable_thinking")
            val date = SimpleDate.parseIso(v.getString("date"))
            val msgs = messages(v.getJSONArray("messages"))
            val text = b.promptFormat.render(msgs, thinking, date)
            assertEquals("rendered prompt", v.getString("text"), text)
            assertEquals("prompt with BOS policy", v.getString("prompt"), b.prompt(msgs, thinking, date))
            assertEquals("runner text", v.getString("runner_text"), b.runnerPrompt(msgs, thinking, date))
        }
    }

    @Test
    fun stopStrings() = check("stream.json") { v ->
        val want = v.getJSONObject("expect")
        val f = StopFilter(strings(v.getJSONArray("stop_strings")))
        val shown = StringBuilder()
        val after = want.getJSONArray("shown_after_each")
        val pieces = strings(v.getJSONArray("pieces"))
        for ((i, p) in pieces.withIndex()) {
            shown.append(f.push(p))
            if (i < after.length()) assertEquals("shown after piece $i", after.getString(i), shown.toString())
            if (f.stopped) break // the app calls LlmModule.stop() here
        }
        shown.append(f.finish())
        assertEquals("visible", want.getString("visible"), shown.toString())
        assertEquals("stopped", want.getBoolean("stopped"), f.stopped)
        assertEquals("stop string", if (want.isNull("stop_string")) null else want.getString("stop_string"), f.stopString)
        assertEquals("stop piece", if (want.isNull("stop_piece")) null else want.getInt("stop_piece"), f.stopPiece)
    }

    @Test
    fun stats() = check("stats.json") { v ->
        val s = RunStats.parse(v.getString("json"))
        if (v.isNull("expect")) {
            assertEquals(null, s)
            return@check
        }
        val want = v.getJSONObject("expect")
        s!!
        assertEquals(want.getInt("prompt_tokens"), s.promptTokens)
        assertEquals(want.getInt("generated_tokens"), s.generatedTokens)
        assertEquals(want.getDouble("prefill_tok_s"), s.prefillTokensPerSecond, 1e-5)
        assertEquals(want.getDouble("decode_tok_s"), s.decodeTokensPerSecond, 1e-5)
        assertEquals(want.getDouble("ttft_s"), s.timeToFirstTokenSeconds, 1e-9)
    }

    @Test
    fun kvCacheReuse() = check("kv.json") { v ->
        val b = Bundle.parse(bundleText(v.getString("bundle")))
        val rendered = b.prompt(messages(v.getJSONArray("messages")), null, SimpleDate(2026, 3, 9, 14, 5, 7))
        val plan = CachePlan.plan(v.getString("cached"), rendered, b.promptFormat)
        val want = v.getJSONObject("expect")
        assertEquals("reuse", want.getBoolean("reuse"), !plan.reset)
        assertEquals("text to prefill", want.getString("delta"), plan.text)
        assertEquals("runner text to prefill", want.getString("runner_text"), b.promptFormat.runnerText(plan.text))
    }

    @Test
    fun strftimeWeekdays() {
        // 2026-03-09 is a Monday; 2000-02-29 a Tuesday; 1999-12-31 a Friday (calendar facts)
        assertEquals("Mon Monday 09 Mar 2026", PromptFormat.strftime("%a %A %d %b %Y", SimpleDate(2026, 3, 9)))
        assertEquals("Tue", PromptFormat.strftime("%a", SimpleDate(2000, 2, 29)))
        assertEquals("Fri 31 December 99 % %q", PromptFormat.strftime("%a %d %B %y %% %q", SimpleDate(1999, 12, 31)))
    }
}
