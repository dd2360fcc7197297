// Finding bundles: `adb push` puts them in /data/local/tmp/mobilellm/<bundle>/ (readable by a
// debuggable app on most devices), or the app copies one into its own storage.
package org.mobilellm.demo.engine

import java.io.File
import org.mobilellm.demo.core.Bundle
import org.mobilellm.demo.core.BundleError

data class FoundBundle(val dir: File, val bundle: Bundle?, val error: String?)

object BundleLocator {
    const val PUSH_DIR = "/data/local/tmp/mobilellm"

    /** Every folder holding a bundle.json under the given roots, parsed (or why it cannot be used). */
    fun find(roots: List<File>): List<FoundBundle> =
        roots.flatMap { root -> root.listFiles()?.filter { File(it, "bundle.json").isFile }?.sortedBy { it.name } ?: emptyList() }
            .map { dir -> open(dir) }

    fun open(dir: File): FoundBundle = try {
        val b = Bundle.parse(File(dir, "bundle.json").readText())
        val missing = listOfNotNull(b.entry, b.dataFile, b.tokenizerFile).firstOrNull { !File(dir, it).isFile }
        if (missing != null) FoundBundle(dir, null, "$missing is missing in ${dir.path}") else FoundBundle(dir, b, null)
    } catch (e: BundleError) {
        FoundBundle(dir, null, e.message)
    }
}
