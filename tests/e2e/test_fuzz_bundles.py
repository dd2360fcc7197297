"""Fuzzing what a pull request can change in a bundle: bundle.json's fields (types, paths, sizes) on
every target, an .mlpackage's Manifest.json and ONNX's genai_config.json (issue 25).

Each case edits a copy of a real bundle (tests/fixtures/bundles_v2), rewrites its hashes as an
attacker would, and runs verify's trust checks in-process (`pipeline.open_bundle`: everything
verify does before it quantizes) with the source named on the command line. Every case has an
expected outcome, from where the edit lands:
- PROVENANCE: recorded, never obeyed (the bounds come from the tool, the source from the command
  line): a change of the same type keeps the meaning and must pass;
- REFERENCE: recipe settings verify rebuilds the reference from; the parity run judges those
  (the end-to-end cases below), so the trust checks may pass or refuse them;
- everything else is re-derived from the files and the source: any change must be refused.
A crash (any exception but UserError), a pass where a refusal is due, a hang past HANG_S, or a
read outside the allowed roots (an audit hook on `open`) fails the test. FUZZ_EXAMPLES cases per
file (100 in `make test`, 2,000 in `make test-all`); FUZZ_LOG gets a line per file.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_fuzz import JSON_VALUES, bounded

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bundles_v2"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
HANG_S = 60  # a tiny bundle's trust checks take about a second
SOURCE = "tiny-llama"  # the fixtures' source, as a user passes it with --source

PROVENANCE = ("model", "source", "tools", "recipe.description", "recipe.path", "recipe.gate", "recipe.thresholds",
              "recipe.target_thresholds")
ENUMS = ("source.kind", "model")  # provenance, but the schema constrains them (a list, a name's characters)
# (the recipe as a whole too: an edit of its table, such as a dropped `auto = null`, is typed,
# checked for unknown keys, and then rebuilt from)
REFERENCE = ("recipe", "target.options")
NASTY_STRINGS = ["", "../../../../etc/passwd", "/etc/hostname", "/dev/zero", "model.pte/../../x", "a" * 5000,
                 "\u0000", "tokenizer.json", "model.onnx", "C:\\x", "~/.ssh/id_rsa", "https://example.com/x"]


# ---- reads outside the allowed roots ------------------------------------------------------------------

class OpenTrace:
    """Every path Python opens while `active`, from one audit hook (a hook cannot be removed)."""

    def __init__(self):
        self.active, self.paths = False, []
        sys.addaudithook(self._hook)

    def _hook(self, event, args):
        if self.active and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            if not path.startswith("__editable__."):  # an import hook's name for itself, not a file
                self.paths.append(os.path.abspath(path))

    def outside(self, roots: list[str]) -> list[str]:
        real = tuple({os.path.realpath(r).rstrip("/") for r in roots})
        out = []
        for p in dict.fromkeys(self.paths):  # each path once, in order
            rp = os.path.realpath(p)
            if not (rp in real or rp.startswith(tuple(r + "/" for r in real))):
                out.append(p)
        return out


TRACE = OpenTrace()


def allowed_roots(bundle: Path) -> list[str]:
    """The bundle, the interpreter and its packages (the tool, its recipes and presets among them),
    the process's own /proc entries, the null device and fixed system files a library reads at
    import: nothing a bundle can name, no home folder."""
    import mobilellm_export

    tool = Path(mobilellm_export.__file__).parent
    return [str(bundle), sys.prefix, sys.base_prefix, str(tool), str(tool.parent / "mobilellm_export.egg-info"),
            str(tool.parent / "quant_recipes"), "/proc/self", f"/proc/{os.getpid()}",
            os.devnull, "/dev/urandom", "/sys/devices/system/cpu",
            # fixed system files libraries read as they are imported: onnxruntime checks the
            # distribution, dateutil (under coremltools) loads UTC, filelock reads the boot id
            "/etc/os-release", "/usr/share/zoneinfo", "/proc/sys/kernel/random/boot_id"]


# ---- one case -----------------------------------------------------------------------------------------

def trust_checks(d: Path) -> str:
    from mobilellm_export import pipeline
    from mobilellm_export.console import Progress

    req = pipeline.VerifyRequest(str(d), source=SOURCE,
                                 checking=pipeline.Checking(latency=False, eval_tokens=64, threads=1))
    return {"ok": "pass", "refused": "refused"}[bounded(pipeline.open_bundle, req, Progress(quiet=True), seconds=HANG_S)]


def rehash(d: Path) -> dict:
    from mobilellm_export.bundle import bundle_files, sha256

    m = json.loads((d / "bundle.json").read_text())
    m["files"] = {f: {"sha256": sha256(d / f), "bytes": (d / f).stat().st_size} for f in bundle_files(d)}
    return m


def run_case(tmp: Path, target: str, edit_file=None, edit_manifest=None) -> str:
    """Copy the target's bundle, edit a file (then rehash, as an attacker would), edit bundle.json,
    and run the trust checks with reads traced: 'pass' or 'refused'."""
    d = tmp / f"tiny-llama-{target}-4bit"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(FIXTURES / d.name, d)
    if edit_file is not None:
        edit_file(d)
    m = rehash(d)
    if edit_manifest is not None:
        m = edit_manifest(m)
    (d / "bundle.json").write_bytes(m if isinstance(m, bytes) else json.dumps(m).encode())
    TRACE.paths, TRACE.active = [], True
    try:
        outcome = trust_checks(d)
    finally:
        TRACE.active = False
    outside = TRACE.outside(allowed_roots(d))
    assert not outside, f"the trust checks read outside the bundle: {outside[:5]}"
    return outcome


# ---- bundle.json mutations ------------------------------------------------------------------------------

def paths(node, prefix=()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, prefix + (i,))
    return out


def same_type(value):
    """A strategy for another value of value's JSON type."""
    if isinstance(value, bool):
        return st.just(not value)
    if isinstance(value, int):
        return st.sampled_from([0, -1, 1, value + 1, value - 1, value * 2, 2 ** 31, 2 ** 63, -2 ** 63]) | st.integers()
    if isinstance(value, float):
        return st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -value, value * 1e9, value + 1e-9])
    if isinstance(value, str):
        return st.sampled_from(NASTY_STRINGS) | st.text(max_size=12)
    if isinstance(value, list):
        return st.lists(JSON_VALUES, max_size=3) | st.just(value + value) | st.just(value[1:])
    if isinstance(value, dict):
        return st.just({**value, "x_unknown": 1}) | st.just({k: v for k, v in list(value.items())[1:]})
    return JSON_VALUES


def where(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def expected(path: tuple, old, new, kind: str, provenance=(), reference=()) -> set[str]:
    """What the trust checks must answer for `new` at `path` (was `old`; `kind` "delete" removes it)."""
    w = where(path)
    prov = any(w == p or w.startswith(p + ".") for p in provenance)
    if kind == "delete":
        return {"pass", "refused"} if prov or any(w == p or w.startswith(p + ".") for p in reference) else {"refused"}
    if _same(old, new):
        return {"pass"}
    if prov:  # another value of the same type (a string not empty) is what a provenance field may hold
        keeps = type(old) is type(new) and not isinstance(old, (dict, list)) and new != "" and w not in ENUMS
        return {"pass"} if keeps else {"pass", "refused"}
    if any(w == p or w.startswith(p + ".") for p in reference):
        return {"pass", "refused"}
    return {"refused"}


def _same(a, b) -> bool:
    """Equal as JSON values (NaN never equals anything in bundle.json: json writes it as a literal)."""
    if isinstance(a, float) and isinstance(b, float) and (math.isnan(a) or math.isnan(b)):
        return False
    return type(a) is type(b) and a == b if not isinstance(a, (int, float)) or isinstance(a, bool) else (
        not isinstance(b, bool) and isinstance(b, (int, float)) and a == b and type(a) is type(b))


@st.composite
def manifest_edit(draw, manifest: dict):
    ps = [p for p in paths(manifest) if p[0] != "files" or len(p) <= 3]
    path = draw(st.sampled_from(ps))
    parent = manifest
    for k in path[:-1]:
        parent = parent[k]
    old = parent[path[-1]]
    kind = draw(st.sampled_from(["same", "same", "any", "delete"]))
    if kind == "delete":
        return path, old, None, "delete"
    new = draw(same_type(old) if kind == "same" else JSON_VALUES)
    return path, old, new, kind


def apply(m: dict, path: tuple, new, kind: str) -> dict:
    m = copy.deepcopy(m)
    parent = m
    for k in path[:-1]:
        parent = parent[k]
    if kind == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return m


# ---- the fuzz targets -----------------------------------------------------------------------------------

class Tally:
    def __init__(self, name: str):
        self.name, self.counts = name, {}

    def add(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def write(self) -> None:
        log = os.environ.get("FUZZ_LOG")
        if log:
            with open(log, "a") as f:
                f.write(json.dumps({"target": self.name, "examples": sum(self.counts.values()), **self.counts,
                                    "crashes": 0, "reads_outside": 0}) + "\n")


@pytest.fixture(scope="module")
def manifests():
    return {t: json.loads((FIXTURES / f"tiny-llama-{t}-4bit" / "bundle.json").read_text())
            for t in ("android", "onnx", "ios")}


@pytest.mark.parametrize("target", ["android", "onnx", "ios"])
def test_the_clean_bundles_pass_their_trust_checks(target, tmp_path):
    assert run_case(tmp_path, target) == "pass"


def test_fuzz_bundle_json(manifests, tmp_path_factory):
    tally = Tally("bundle.json")
    tmp = tmp_path_factory.mktemp("fuzz-bundle-json")

    @FUZZ
    @given(st.sampled_from(["android", "onnx", "ios"]).flatmap(
        lambda t: st.tuples(st.just(t), manifest_edit(manifests[t]))))
    def case(arg):
        target, (path, old, new, kind) = arg
        want = expected(path, old, new, kind, PROVENANCE, REFERENCE)
        got = run_case(tmp, target, edit_manifest=lambda m: apply(m, path, new, kind))
        tally.add(got)
        assert got in want, f"{target}: {kind} {where(path)} {old!r:.60} -> {new!r:.60}: {got}, expected {want}"

    case()
    tally.write()


def test_fuzz_bundle_json_formatting(manifests, tmp_path_factory):
    """Edits that keep the meaning: key order, indentation, escapes, a trailing newline."""
    tmp = tmp_path_factory.mktemp("fuzz-format")

    @settings(max_examples=min(EXAMPLES, 30), derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(["android", "onnx", "ios"]), st.booleans(), st.sampled_from([None, 0, 1, 4]),
           st.booleans(), st.booleans())
    def case(target, sort_keys, indent, ascii_only, newline):
        def fmt(m):
            return (json.dumps(m, sort_keys=sort_keys, indent=indent, ensure_ascii=ascii_only)
                    + ("\n" if newline else "")).encode()

        assert run_case(tmp, target, edit_manifest=fmt) == "pass"

    case()


def _genai_edit(path, new, kind):
    def edit(d: Path):
        g = json.loads((d / "genai_config.json").read_text())
        (d / "genai_config.json").write_text(json.dumps(apply(g, path, new, kind)))
    return edit


def test_fuzz_genai_config(tmp_path_factory):
    """ORT GenAI apps read genai_config.json: every value is re-derived, so every change is refused,
    except the tuning knobs ORT GenAI's own docs mark as the app's to choose (none in ours)."""
    tally = Tally("genai_config.json")
    tmp = tmp_path_factory.mktemp("fuzz-genai")
    g = json.loads((FIXTURES / "tiny-llama-onnx-4bit" / "genai_config.json").read_text())

    @FUZZ
    @given(manifest_edit(g))
    def case(edit):
        path, old, new, kind = edit
        # the export's --threads, an app's own setting: no value of it changes what the model computes
        want = expected(path, old, new, kind, ["model.decoder.session_options.intra_op_num_threads"])
        got = run_case(tmp, "onnx", edit_file=_genai_edit(path, new, kind))
        tally.add(got)
        assert got in want, f"genai_config {kind} {where(path)} {old!r:.60} -> {new!r:.60}: {got}, expected {want}"

    case()
    tally.write()


def _mlpackage_edit(path, new, kind):
    def edit(d: Path):
        p = d / "model.mlpackage" / "Manifest.json"
        p.write_text(json.dumps(apply(json.loads(p.read_text()), path, new, kind)))
    return edit


def test_fuzz_mlpackage_manifest(tmp_path_factory):
    """An .mlpackage's Manifest.json says where the model and its weights are: coremltools followed
    its paths outside the bundle, and a device's Core ML reads it too. Every change is refused
    (only the items' random ids are free, and this mutator keeps keys)."""
    tally = Tally("Manifest.json")
    tmp = tmp_path_factory.mktemp("fuzz-mlpackage")
    man = json.loads((FIXTURES / "tiny-llama-ios-4bit" / "model.mlpackage" / "Manifest.json").read_text())

    @FUZZ
    @given(manifest_edit(man))
    def case(edit):
        path, old, new, kind = edit
        want = expected(path, old, new, kind)
        got = run_case(tmp, "ios", edit_file=_mlpackage_edit(path, new, kind))
        tally.add(got)
        assert got in want, f"Manifest.json {kind} {where(path)} {old!r:.60} -> {new!r:.60}: {got}, expected {want}"

    case()
    tally.write()


# ---- end to end: reference edits the trust checks let through are the parity run's to catch -----------

E2E_EDITS = [
    pytest.param("onnx", ("recipe", "head", "bits"), 4, id="onnx-head-bits"),
    pytest.param("ios", ("recipe", "linear", "bits"), 8, id="ios-linear-bits"),
    pytest.param("android", ("recipe", "name"), "8bit", id="android-recipe-name"),
    # each of these ends in the localiser (an XNNPACK probe export, ~1 min): make test-all
    pytest.param("android", ("recipe", "linear", "group_size"), 64, id="android-group-size", marks=pytest.mark.extra),
    pytest.param("android", ("recipe", "smooth"), 0.0, id="android-smooth", marks=pytest.mark.extra),
    pytest.param("android", ("recipe", "linear", "bits"), 8, id="android-linear-bits", marks=pytest.mark.extra),
]


@pytest.mark.parametrize("target,path,value", E2E_EDITS)
def test_a_recipe_edit_the_trust_checks_pass_fails_the_full_verify(target, path, value, tmp_path):
    """bundle.json's recipe is what verify rebuilds the reference from: an edited one passes the
    trust checks (they cannot tell) and must then fail the lowering pair, exit 1."""
    from test_sources import run_cli

    assert run_case(tmp_path, target, edit_manifest=lambda m: apply(m, path, value, "same")) == "pass"
    r = run_cli("verify", str(tmp_path / f"tiny-llama-{target}-4bit"), "--source", SOURCE, "--no-latency",
                "--eval-tokens", "128", "--json", "--quiet", timeout=900)
    assert r.returncode == 1, r.stderr[-2000:]
    rep = json.loads(r.stdout)
    failed = [c["name"] for c in rep["gate"]["checks"] if c["status"] == "fail"]
    assert not rep["passed"] and failed, rep["gate"]


# ---- native reads and the network, traced (make test-all) ----------------------------------------------

SYSTEM_FILES = ("/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/", "/usr/local/cuda",  # shared libraries, dlopen probes
                "/usr/share/locale/", "/usr/share/zoneinfo/", "/etc/ld.so.cache", "/etc/localtime", "/etc/os-release",
                "/etc/passwd", "/etc/group", "/etc/nsswitch.conf",  # the user's name (getpass, for cache folders)
                "/proc/", "/sys/", "/dev/null", "/dev/urandom", "/dev/shm/")


def traced_opens(log: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(path, flags) of every successful open and execve in an `strace -f -z` log, and every
    connect that is not to a local (AF_UNIX) socket."""
    import re

    opens, nets = [], []
    for line in log.read_text(errors="replace").splitlines():
        m = re.search(r'\b(?:open|openat)\((?:AT_FDCWD|-?\d+), "([^"]*)", ([A-Z_|]+)', line)
        if m:
            opens.append((m.group(1), m.group(2)))
        elif (m := re.search(r'\bexecve\("([^"]*)"', line)):
            opens.append((m.group(1), "EXEC"))
        elif "connect(" in line and "AF_UNIX" not in line:
            nets.append(line.strip())
    return opens, nets


@pytest.mark.extra
@pytest.mark.parametrize("target", ["android", "onnx", "ios"])
def test_a_full_verify_opens_nothing_outside_and_never_reaches_the_network(target, tmp_path):
    """The audit hook above sees Python's opens only; ONNX Runtime, ExecuTorch and tokenizers read
    natively. So a whole verify runs under `strace -f`: every file it opens is in the bundle, the
    report folder, the interpreter and its packages, the tool's own temporary files or a fixed
    system file (libraries, locale, the user's name); no socket but a local one is connected."""
    import subprocess
    import tempfile

    strace = shutil.which("strace")
    assert strace, "strace is missing: `make test-all` installs it (apt)"
    d = tmp_path / f"tiny-llama-{target}-4bit"
    shutil.copytree(FIXTURES / d.name, d)
    rep, log = tmp_path / "rep", tmp_path / "strace.log"
    r = subprocess.run([strace, "-f", "-qq", "-z", "-e", "trace=open,openat,execve,connect", "-o", str(log),
                        sys.executable, "-m", "mobilellm_export.cli", "verify", str(d), "--source", SOURCE,
                        "--no-latency", "--eval-tokens", "128", "--report-dir", str(rep), "--quiet"],
                       capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    opens, nets = traced_opens(log)
    assert len(opens) > 1000  # the trace saw the imports: it traced the right process tree
    tmp = tempfile.gettempdir().rstrip("/") + "/"
    home = os.path.expanduser("~")
    roots = allowed_roots(d) + [str(rep), str(tmp_path / "strace.log"), f"{home}/.cache/matplotlib",
                                f"{home}/.config/matplotlib"]  # matplotlib's font cache, for the report's plots
    outside = sorted({p for p, flags in opens if os.path.isabs(p) and not p.startswith(SYSTEM_FILES)
                      # the tool's own temporary files (parity logits), and tempfile's probe of its folder
                      and not (p.startswith(tmp + "mobilellm-") or (p.startswith(tmp) and "O_CREAT" in flags))
                      and p.rstrip("/") + "/" != tmp and p != str(tmp_path)  # `python -m` lists its working folder
                      and not any(os.path.realpath(p) == os.path.realpath(x) or
                                  os.path.realpath(p).startswith(os.path.realpath(x).rstrip("/") + "/") for x in roots)})
    assert not outside, f"verify opened {len(outside)} path(s) outside the allowed roots: {outside[:10]}"
    assert not nets, f"verify connected a socket: {nets[:3]}"
