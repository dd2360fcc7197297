// COMPILE-ONLY STUB of org.pytorch:executorch-android 1.4.1 (never packaged: the app gets the real
// class from the AAR). Only the members the demo calls, each with the upstream signature; the test
// tests/test_apps.py checks every line here against ../executorch-android-1.4.1.api (extracted
// from ExecuTorch's LlmModule.kt / LlmCallback.kt at tag v1.4.1).
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
