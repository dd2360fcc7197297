// COMPILE-ONLY STUB of org.pytorch:executorch-android 1.5.1 (see LlmModule.kt here).
package org.pytorch.executorch.extension.llm

interface LlmCallback {
  fun onResult(result: String)

  fun onStats(stats: String) {}

  fun onError(errorCode: Int, message: String) {}
}
