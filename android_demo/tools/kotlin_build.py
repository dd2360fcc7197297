"""Compile android_demo/core (pure Kotlin + org.json) and its tests, and the Android glue against
the compile-only ExecuTorch stubs, with the npm `kotlinc` and the machine's JDK 17; run the core
tests (JUnit 4) on the shared vectors. Gradle cannot reach Maven here, so this drives kotlinc.

    python android_demo/tools/kotlin_build.py test [VECTORS_DIR]   # build (cached) + run; exit code of JUnit

Jars are cached under build/apps/<hash of sources and tools>/, so a rerun with unchanged sources
does not recompile.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "android_demo"
CORE_SRC = DEMO / "core" / "src" / "main" / "kotlin"
TEST_SRC = DEMO / "core" / "src" / "test" / "kotlin"
STUBS_SRC = DEMO / "stubs" / "src"
GLUE_SRC = DEMO / "app" / "src" / "main" / "java" / "org" / "mobilellm" / "demo" / "engine"
KOTLINC = Path(os.environ.get("KOTLINC", ROOT / "build/tools/kotlin/node_modules/kotlin-compiler/bin/kotlinc"))
# Debian: libandroid-json-org-java (Android's own org.json), junit4 (+ libhamcrest-java)
JSON_JAR = Path(os.environ.get("ORG_JSON_JAR", "/usr/share/java/json-android.jar"))
JUNIT_JARS = [Path(p) for p in os.environ.get(
    "JUNIT_JARS", "/usr/share/java/junit4.jar:/usr/share/java/hamcrest-core.jar").split(":")]
VECTORS = ROOT / "tests" / "fixtures" / "apps"


class ToolMissing(RuntimeError):
    pass


def _check_tools() -> None:
    missing = [str(p) for p in (KOTLINC, JSON_JAR, *JUNIT_JARS) if not p.exists()]
    if missing or not shutil.which("java"):
        raise ToolMissing("missing " + ", ".join(missing or ["java"]) + ": run `make setup` (apps-tools)")


def _sources(*dirs: Path) -> list[Path]:
    return sorted(p for d in dirs for p in d.rglob("*.kt"))


def _key() -> str:
    h = hashlib.sha256()
    for p in _sources(CORE_SRC, TEST_SRC, STUBS_SRC, GLUE_SRC):
        h.update(str(p.relative_to(ROOT)).encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(str(KOTLINC.resolve()).encode() + (KOTLINC.resolve().parents[1] / "build.txt").read_bytes()
             if (KOTLINC.resolve().parents[1] / "build.txt").exists() else b"")
    return h.hexdigest()[:16]


def _kotlinc(classpath: list[Path], sources: list[Path], out: Path) -> None:
    cmd = [str(KOTLINC), "-jvm-target", "17", "-nowarn", "-cp", ":".join(map(str, classpath)),
           *map(str, sources), "-d", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"kotlinc failed ({' '.join(cmd[:6])} ...):\n{r.stdout}{r.stderr}")


ALLOWED_IMPORTS = ("kotlin.", "java.", "org.json.", "org.mobilellm.demo.core.")


def core_imports() -> list[str]:
    """Every import of the core sources (tests/test_apps.py checks they are JVM + org.json only)."""
    import re

    return sorted({m for p in _sources(CORE_SRC) for m in re.findall(r"^import\s+([\w.]+)", p.read_text(), re.M)})


def build() -> dict[str, Path]:
    """One kotlinc run (a JVM start costs ~15 s here): the core, its tests, and the glue compiled
    against the stubs, into one jar. The core's independence from Android is checked on its imports
    (`core_imports`), and the core compiles with only org.json and the Kotlin stdlib on the classpath."""
    _check_tools()
    out = ROOT / "build" / "apps" / _key()
    jars = {"all": out / "apps.jar"}
    if all(p.is_file() for p in jars.values()):
        return jars
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _kotlinc([JSON_JAR, *JUNIT_JARS], _sources(CORE_SRC, TEST_SRC, STUBS_SRC, GLUE_SRC), tmp / "apps.jar")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return jars


def stdlib() -> Path:
    return KOTLINC.resolve().parents[1] / "lib" / "kotlin-stdlib.jar"


def run_tests(vectors: Path = VECTORS) -> subprocess.CompletedProcess:
    jars = build()
    cp = [jars["all"], stdlib(), JSON_JAR, *JUNIT_JARS]
    return subprocess.run(["java", f"-Dvectors={vectors}", "-cp", ":".join(map(str, cp)), "org.junit.runner.JUnitCore",
                           "org.mobilellm.demo.core.VectorsTest"], capture_output=True, text=True)


if __name__ == "__main__":
    if sys.argv[1:2] != ["test"]:
        sys.exit(__doc__)
    try:
        r = run_tests(Path(sys.argv[2]) if len(sys.argv) > 2 else VECTORS)
    except (ToolMissing, RuntimeError) as e:
        sys.exit(str(e))
    sys.stdout.write(r.stdout + r.stderr)
    sys.exit(r.returncode)
