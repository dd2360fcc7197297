// COMPILE-ONLY STUB of org.pytorch:executorch-android 1.5.1 (never packaged: the app gets the real
// class from the AAR). Only the members the demo calls, each with the upstream signature; the test
// tests/e2e/test_apps.py checks every line here against ../executorch-android-1.5.1.api (extracted
// from ExecuTorch's LlmModule.kt / LlmCallback.kt; its header says at which commit).
package org.pytorch.executorch.extension.llm

import java.io.Closeable

class LlmModule : Closeable {
  constructor(modulePath: String, tokenizerPath: String, temperature: Float) { stub() }

  constructor(modulePath: String, tokenizerPath: String, temperature: Float, dataPath: String) { stub() }

  fun generate(
      prompt: String,
      seqLen: Int,
      llmCallback: LlmCallback,
      echo: Boolean,
      temperature: Float,
      numBos: Int,
      numEos: Int,
  ) { stub() }

  fun resetContext() { stub() }

  fun stop() { stub() }

  fun load() { stub() }

  override fun close() { stub() }

  private fun stub(): Nothing = throw UnsupportedOperationException("compile-only stub")
}
