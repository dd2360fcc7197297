"""Public member signatures of Kotlin sources, one normalized line each (used to diff the
compile-only stubs against ExecuTorch's published API text).

    python android_demo/tools/api_signatures.py FILE.kt ...                      # print
    python android_demo/tools/api_signatures.py --upstream GIT_DIR TAG            # extract ExecuTorch's at TAG
    python android_demo/tools/api_signatures.py --upstream GIT_DIR REV VERSION    # at REV, for VERSION

REV other than the tag v<VERSION> (a git without that tag) is said so in the text's header.

A line: `<Class> constructor(name: Type, ...)` or `<Class> fun name(name: Type, ...): Return`
(annotations, default values and whitespace dropped; private/internal/protected members skipped;
members of a companion object are skipped, the demo uses none).
"""

from __future__ import annotations

import re
import subprocess
import sys

UPSTREAM_DIR = "extension/android/executorch_android/src/main/java/org/pytorch/executorch/extension/llm"
UPSTREAM_FILES = ("LlmModule.kt", "LlmCallback.kt")


def _strip_comments(src: str) -> str:
    src = re.sub(r"/\*.*?\*/", " ", src, flags=re.S)
    return re.sub(r"//[^\n]*", " ", src)


def _close(src: str, i: int) -> int:
    """Index just past the parenthesis matching src[i] == '('."""
    depth = 0
    for j in range(i, len(src)):
        depth += {"(": 1, ")": -1}.get(src[j], 0)
        if depth == 0:
            return j + 1
    raise ValueError("unbalanced parentheses")


def _params(text: str) -> str:
    out = []
    depth, cur = 0, ""
    for ch in text + ",":
        if ch in "(<[":
            depth += 1
        elif ch in ")>]":
            depth -= 1
        if ch == "," and depth == 0:
            p = re.sub(r"@\w+(\([^)]*\))?", "", cur).split("=")[0]
            p = re.sub(r"\s+", " ", p).strip()
            p = re.sub(r"\b(vararg|noinline|crossinline)\s+", "", p)
            if p:
                out.append(re.sub(r"\s*:\s*", ": ", p))
            cur = ""
        else:
            cur += ch
    return ", ".join(out)


def signatures(src: str) -> list[str]:
    src = _strip_comments(src)
    cls = re.search(r"\b(?:class|interface)\s+(\w+)", src).group(1)
    companion = src.find("companion object")
    out = []
    for m in re.finditer(r"\b(constructor|fun\s+(\w+))\s*\(", src):
        if 0 <= companion < m.start():
            continue
        line_start = src.rfind("\n", 0, m.start()) + 1
        mods = src[line_start:m.start()]
        if re.search(r"\b(private|internal|protected)\b", mods):
            continue
        end = _close(src, m.end() - 1)
        params = _params(src[m.end():end - 1])
        if m.group(1) == "constructor":
            out.append(f"{cls} constructor({params})")
            continue
        ret = re.match(r"\s*:\s*([\w.<>?, ]+?)\s*(?:[{=\n]|$)", src[end:])
        out.append(f"{cls} fun {m.group(2)}({params}): {ret.group(1).strip() if ret else 'Unit'}")
    return sorted(set(out))


def upstream(git_dir: str, rev: str, version: str | None = None) -> str:
    """The API text of ExecuTorch's git at `rev` (a tag v<version>, or a commit standing in for it)."""
    version = version or rev.lstrip("v")
    commit = subprocess.run(["git", "--git-dir", git_dir, "rev-parse", f"{rev}^{{commit}}"], check=True,
                            capture_output=True, text=True).stdout.strip()
    lines = [f"# org.pytorch:executorch-android {version}: public API of org.pytorch.executorch.extension.llm",
             f"# extracted by android_demo/tools/api_signatures.py from pytorch/executorch {rev} ({commit})",
             f"# {UPSTREAM_DIR}/{{{','.join(UPSTREAM_FILES)}}}"]
    if rev != f"v{version}":
        lines.append(f"# NOT the tag v{version}, which the git this was read from lacks: {rev} stands in for it")
    for f in UPSTREAM_FILES:
        src = subprocess.run(["git", "--git-dir", git_dir, "show", f"{commit}:{UPSTREAM_DIR}/{f}"], check=True,
                             capture_output=True, text=True).stdout
        lines += signatures(src)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--upstream"]:
        sys.stdout.write(upstream(*sys.argv[2:5]))
    else:
        for path in sys.argv[1:]:
            print("\n".join(signatures(open(path).read())))
