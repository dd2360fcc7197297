"""The demo apps' logic, tested here: the Kotlin core (kotlinc + JDK 17 + Debian org.json/JUnit 4)
on the shared vectors in tests/fixtures/apps/, the Android glue compiled against compile-only
ExecuTorch stubs diffed with upstream's API text, the Swift mirror through tree-sitter, and
`mobilellm-export run --conversation`.

Needs `make setup` (apps-tools: npm kotlin-compiler, Debian junit4 + libandroid-json-org-java).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "tests" / "fixtures" / "apps"
sys.path.insert(0, str(ROOT / "android_demo" / "tools"))

import api_signatures  # noqa: E402
import kotlin_build  # noqa: E402


@pytest.fixture(scope="module")
def kotlin_tests():
    """The Kotlin build (cached under build/apps/) and one JUnit run on the committed vectors."""
    return kotlin_build.run_tests(APPS)


def test_kotlin_core_passes_the_shared_vectors(kotlin_tests):
    out = kotlin_tests.stdout + kotlin_tests.stderr
    assert kotlin_tests.returncode == 0, out
    counts = {f: len(json.loads((APPS / f).read_text())) for f in ("parse.json", "prompts.json", "stream.json",
                                                                    "stats.json", "kv.json")}
    for f, n in counts.items():  # every file read, every vector in it checked
        assert f"{f}: {n} vectors passed" in out, out
    assert counts["prompts.json"] >= 5 * 11 and re.search(r"OK \(6 tests\)", out)


def test_a_wrong_vector_fails_the_kotlin_tests(tmp_path, kotlin_tests):
    """The Kotlin tests are not vacuous: one byte changed in an expected prompt, a runner text
    left un-normalized, a stop string shown where it must not be, a future schema and an unknown
    pre_normalize step declared parseable, a bundle needing a newer runtime declared loadable, a
    runtime version compared as text, and a wrong cache decision each fail, and the report names
    exactly those vectors."""
    bad = tmp_path / "apps"
    shutil.copytree(APPS, bad)
    prompts = json.loads((bad / "prompts.json").read_text())
    v = next(v for v in prompts if v["bundle"] == "gemma3" and v["conversation"] == "single-system")
    v["text"] = v["text"].replace("\n\n", "\n", 1)  # Gemma's folded system separator, one byte short
    w = next(v for v in prompts if v["bundle"] == "gemma3" and v["conversation"] == "multi")
    w["runner_text"] = w["prompt"]  # Gemma's spaces not replaced
    stream = json.loads((bad / "stream.json").read_text())
    s = next(s for s in stream if s["name"] == "split-stop")
    s["expect"]["shown_after_each"][0] += "<|eo"  # a partial stop string on screen
    parse = json.loads((bad / "parse.json").read_text())
    p = next(p for p in parse if p["name"] == "future-schema")
    p["expect"] = next(q for q in parse if q["name"] == "valid-r1-llama3")["expect"]
    u = next(p for p in parse if p["name"] == "pre-normalize-unknown-step")
    u["expect"] = next(q for q in parse if q["name"] == "pre-normalize-two-steps")["expect"]
    newer = next(p for p in parse if p["name"] == "min-runtime-newer")
    newer["expect"] = next(q for q in parse if q["name"] == "min-runtime-equal")["expect"]  # a newer runtime let in
    numeric = next(p for p in parse if p["name"] == "min-runtime-numeric-not-text")
    numeric["expect"] = {"ok": False, "error": "this bundle needs ExecuTorch"}  # 1.9.0 read as newer than 1.10.0
    kv = json.loads((bad / "kv.json").read_text())
    k = next(k for k in kv if k["name"] == "qwen3-reasoning")
    k["expect"]["reuse"] = True
    for f, data in (("prompts.json", prompts), ("stream.json", stream), ("parse.json", parse), ("kv.json", kv)):
        (bad / f).write_text(json.dumps(data, ensure_ascii=False))
    r = kotlin_build.run_tests(bad)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "Tests run: 6,  Failures: 4" in out, out
    for name in ("gemma3/single-system: rendered prompt", "gemma3/multi: runner text", "split-stop: shown after piece 0",
                 "future-schema: bundle.json has schema_version 4",
                 "pre-normalize-unknown-step: bundle.json: generation.prompt_format.pre_normalize[1]: unknown step type",
                 "min-runtime-newer: bundle.json: this bundle needs ExecuTorch ≥ 1.10.0 (target.min_runtime); this app has 1.5.1",
                 "min-runtime-numeric-not-text: parsed, expected an error", "qwen3-reasoning: reuse"):
        assert name in out, out
    assert "2 of 55 vectors failed" in out and "stats.json: 4 vectors passed" in out
    assert f"4 of {len(parse)} vectors failed" in out


def test_core_is_pure_kotlin():
    """android_demo/core imports nothing but the JVM, Kotlin and org.json (which Android ships)."""
    imports = kotlin_build.core_imports()
    assert imports and all(i.startswith(kotlin_build.ALLOWED_IMPORTS) for i in imports), imports
    src = "".join(p.read_text() for p in kotlin_build._sources(kotlin_build.CORE_SRC))
    assert "android." not in src and "org.pytorch" not in src


API = ROOT / "android_demo" / "executorch-android-1.5.1.api"


def test_glue_compiled_against_stubs_that_match_upstream(kotlin_tests):
    """The glue (ChatEngine, BundleLocator) compiled against the stubs (it is in the jar the
    tests ran from), and every stub member is, signature for signature, in ExecuTorch's published
    API of the pinned release (android_demo/executorch-android-1.5.1.api, extracted from ExecuTorch's
    sources by android_demo/tools/api_signatures.py at the commit its header names)."""
    import zipfile

    assert kotlin_tests.returncode == 0
    jar = kotlin_build.build()["all"]
    names = set(zipfile.ZipFile(jar).namelist())
    assert {"org/mobilellm/demo/engine/ChatEngine.class", "org/mobilellm/demo/engine/BundleLocator.class",
            "org/pytorch/executorch/extension/llm/LlmModule.class"} <= names
    api = API.read_text().splitlines()
    assert api[0].startswith("# org.pytorch:executorch-android 1.5.1:") and re.search(r" \([0-9a-f]{40}\)$", api[1])
    upstream = {line for line in api if not line.startswith("#")}
    stubs = []
    for f in (ROOT / "android_demo" / "stubs" / "src").rglob("*.kt"):
        stubs += api_signatures.signatures(f.read_text())
    assert len(stubs) == 10
    assert [s for s in stubs if s not in upstream] == []


def test_the_apps_run_the_executorch_that_writes_the_bundles():
    """One ExecuTorch version everywhere: the AAR app/build.gradle.kts pins, the Kotlin core's
    EXECUTORCH_VERSION (what it compares target.min_runtime with), the Swift package branch and the
    Swift core's executorchVersion, the API text the stubs are checked against, the READMEs, and the
    pip ExecuTorch that writes and verifies the bundles (whose min_runtime is its release)."""
    from importlib import metadata

    from mobilellm_export.backends import release

    def one(pattern: str, path: str) -> str:
        found = set(re.findall(pattern, (ROOT / path).read_text()))
        assert len(found) == 1, (path, found)
        return found.pop()

    pins = {
        "gradle": one(r'"org\.pytorch:executorch-android:([0-9.]+)"', "android_demo/app/build.gradle.kts"),
        "kotlin": one(r'EXECUTORCH_VERSION = "([0-9.]+)"', "android_demo/core/src/main/kotlin/org/mobilellm/demo/core/Bundle.kt"),
        "swiftpm": one(r'branch: "swiftpm-([0-9.]+)"', "ios_demo/Package.swift"),
        "swift": one(r'executorchVersion = "([0-9.]+)"', "ios_demo/Sources/MobileLLMCore/MobileLLMCore.swift"),
        "api": one(r"^# org\.pytorch:executorch-android ([0-9.]+):", API.relative_to(ROOT).as_posix()),
        "android README": one(r"pinned to\s+\*\*`org\.pytorch:executorch-android:([0-9.]+)`", "android_demo/README.md"),
        "ios README": one(r"branch\s+`swiftpm-([0-9.]+)` of pytorch/executorch", "ios_demo/README.md"),
        "pip": release(metadata.version("executorch")),
    }
    assert len(set(pins.values())) == 1, pins
    bundle = json.loads((APPS / "bundles" / "smollm2" / "bundle.json").read_text())
    assert bundle["target"]["min_runtime"] == {"name": "executorch", "version": pins["pip"]}


def test_the_schema_and_the_apps_agree_on_min_runtime():
    """Every min_runtime the apps accept or refuse by version is valid bundle.json (the schema), and
    the malformed ones the apps refuse, the schema refuses too."""
    from mobilellm_export.bundle import validate
    from mobilellm_export.errors import UserError

    vectors = [v for v in json.loads((APPS / "parse.json").read_text()) if v["name"].startswith("min-runtime-")]
    malformed = {"min-runtime-bad-version", "min-runtime-not-an-object"}
    assert len(vectors) >= 12 and malformed < {v["name"] for v in vectors}
    for v in vectors:
        if v["name"] in malformed:
            with pytest.raises(UserError, match="target/min_runtime"):
                validate(v["manifest"])
        else:
            validate(v["manifest"])


def test_signature_diff_catches_a_wrong_stub():
    """A stub whose generate() lost its numBos parameter is not in the upstream text."""
    src = (ROOT / "android_demo" / "stubs" / "src" / "org/pytorch/executorch/extension/llm/LlmModule.kt").read_text()
    wrong = src.replace("      numBos: Int,\n", "")
    upstream = set(API.read_text().splitlines())
    missing = [s for s in api_signatures.signatures(wrong) if s not in upstream]
    assert missing == ["LlmModule fun generate(prompt: String, seqLen: Int, llmCallback: LlmCallback, echo: Boolean, "
                       "temperature: Float, numEos: Int): Unit"]


@pytest.mark.extra
def test_stored_api_text_is_upstream(tmp_path):
    """Re-extract the API text from ExecuTorch's git at the revision its header names (needs a
    clone: EXECUTORCH_GIT)."""
    import os

    git = os.environ.get("EXECUTORCH_GIT", "/work/.mirror/pytorch+executorch/repo")
    if not Path(git).exists():
        pytest.fail(f"no ExecuTorch git at {git}: set EXECUTORCH_GIT")
    text = API.read_text()
    rev = re.search(r"from pytorch/executorch (\S+) \(", text.splitlines()[1]).group(1)
    assert api_signatures.upstream(git, rev, "1.5.1") == text


# ---- iOS: the Swift mirror ----------------------------------------------------------------------

SWIFT = sorted((ROOT / "ios_demo").rglob("*.swift"))


def _swift_errors(path: Path) -> list[str]:
    import tree_sitter
    import tree_sitter_swift

    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_swift.language()))
    tree = parser.parse(path.read_bytes())
    out, stack = [], [tree.root_node]
    while stack:
        n = stack.pop()
        if n.type == "ERROR" or n.is_missing:
            out.append(f"{path.name}:{n.start_point[0] + 1}:{n.start_point[1] + 1}: {n.type} {n.text[:40]!r}")
        stack += n.children
    return out


def test_swift_sources_pass_the_tree_sitter_syntax_check():
    assert {p.name for p in SWIFT} >= {"Package.swift", "MobileLLMCore.swift", "VectorsTests.swift", "ChatEngine.swift",
                                       "CoreMLEngine.swift", "App.swift"}
    assert [e for p in SWIFT for e in _swift_errors(p)] == []


def test_tree_sitter_check_catches_a_syntax_error(tmp_path):
    broken = tmp_path / "Broken.swift"
    src = (ROOT / "ios_demo/Sources/MobileLLMCore/MobileLLMCore.swift").read_text()
    broken.write_text(src.replace("public func push(_ piece: String) -> String {", "public func push(_ piece: String -> String {"))
    assert _swift_errors(broken)


def test_swift_core_mirrors_the_kotlin_core():
    """Every function and type of the Kotlin core has its Swift counterpart in the one Swift file,
    and the Swift tests check the same vector files with the same checks."""
    kt = "".join(p.read_text() for p in kotlin_build._sources(kotlin_build.CORE_SRC))
    swift = (ROOT / "ios_demo/Sources/MobileLLMCore/MobileLLMCore.swift").read_text()
    funs = set(re.findall(r"\bfun\s+(\w+)\s*\(", kt)) - {"name", "raw", "bad", "two"}
    types = set(re.findall(r"\b(?:class|data class|object)\s+(\w+)", kt)) - {"Fields"}
    assert funs and all(re.search(rf"\bfunc\s+{f}\b", swift) for f in funs), sorted(
        f for f in funs if not re.search(rf"\bfunc\s+{f}\b", swift))
    assert all(re.search(rf"\b(?:struct|class)\s+{t}\b", swift) for t in types), types
    kt_tests = (ROOT / "android_demo/core/src/test/kotlin/org/mobilellm/demo/core/VectorsTest.kt").read_text()
    swift_tests = (ROOT / "ios_demo/Tests/MobileLLMCoreTests/VectorsTests.swift").read_text()
    files = set(re.findall(r'"(\w+\.json)"', kt_tests))
    assert files == {"parse.json", "prompts.json", "stream.json", "stats.json", "kv.json"} == set(
        re.findall(r'"(\w+\.json)"', swift_tests))
    for check in ("rendered prompt", "prompt with BOS policy", "runner text", "pre_normalize", "probe runner text",
                  "min_runtime", "shown after piece", "stop piece", "text to prefill", "runner text to prefill"):
        assert check in kt_tests and check in swift_tests
