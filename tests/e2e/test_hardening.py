"""Bad input and faults, as a careless user or an attacker causes them: each ends in one `error:`
line, a non-zero exit, no traceback and no partial output, raised by the stage that should catch
it (checked by message and, where the order matters, by making the later stages' work fail: see
`guarded_cli`). No test asserts wall time: a hang is bounded by the subprocess timeouts. Grouped as
in the hardening issue: config types, sizes, chat templates, signals, disk and paths, what `verify`
trusts, and small visible things."""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors.torch import save_file

from conftest import LLAMA3_TOKENIZER
from test_sources import r1_config, r1_tensors, write_r1_dir

# A bound on a hang, not a speed assertion: a quick CLI call takes seconds (torch import included);
# the work these tests guard against (generating or reading weights) is caught by stage, not by time.
CLI_TIMEOUT = 120
COMMON = ["--max-context", "128", "--max-seq-len", "16"]


def cli(*args, timeout=CLI_TIMEOUT):
    return subprocess.run([sys.executable, "-m", "mobilellm_export.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def one_line(r, needle: str, code: int = 2):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr


# The CLI with the work of later stages made to fail loudly: each guard replaces the functions that
# do that work with one that records its name in $GUARD_LOG and exits 97. A test then knows its
# error (or its success) came before that work, whatever the machine's speed.
#   data  every tensor-data read: safetensors (load_file, load, safe_open's get_tensor and slice
#         reads; shapes and dtypes from the header stay allowed), torch.load, GGUF dequantization
#   load  checkpoints.load itself (a preset's random weights, any source's files)
_GUARDED = textwrap.dedent("""
    import os, sys

    def forbidden(what):
        def stop(*a, **k):
            with open(os.environ["GUARD_LOG"], "a") as f:
                f.write(what + "\\n")
            os._exit(97)
        return stop

    guards = os.environ["GUARDS"].split(",")
    if "data" in guards:
        import safetensors, safetensors.numpy, safetensors.torch, torch, gguf.quants
        real_open = safetensors.safe_open

        class Slice:
            def __init__(self, s):
                self._s = s
            def get_shape(self):
                return self._s.get_shape()
            def get_dtype(self):
                return self._s.get_dtype()
            def __getitem__(self, index):
                forbidden("safe_open slice read")()

        class Open:
            def __init__(self, *a, **k):
                self._f = real_open(*a, **k)
            def __enter__(self):
                self._f.__enter__()
                return self
            def __exit__(self, *exc):
                return self._f.__exit__(*exc)
            def get_slice(self, name):
                return Slice(self._f.get_slice(name))
            def get_tensor(self, name):
                forbidden("safe_open.get_tensor")()
            def __getattr__(self, name):  # keys(), metadata(), offset_keys(): the header
                return getattr(self._f, name)

        safetensors.safe_open = safetensors.torch.safe_open = Open
        for mod in (safetensors.torch, safetensors.numpy):
            mod.load_file = forbidden(mod.__name__ + ".load_file")
            mod.load = forbidden(mod.__name__ + ".load")
        torch.load = forbidden("torch.load")
        gguf.quants.dequantize = forbidden("gguf.quants.dequantize")
        import mobilellm_export.checkpoints.gguf as gguf_source
        gguf_source._dequantize = forbidden("checkpoints.gguf._dequantize")
    if "load" in guards:
        import mobilellm_export.checkpoints as checkpoints
        checkpoints.load = forbidden("checkpoints.load")

    from mobilellm_export.cli import main
    sys.argv = ["mobilellm-export"] + sys.argv[1:]
    main()
""")


def guarded_cli(log: Path, guards: str, *args, timeout=CLI_TIMEOUT):
    """`cli(*args)` with the `guards` (comma-separated) in force; names any forbidden call in r.forbidden."""
    # PYTHONHASHSEED set: a CLI that re-execs itself under a fixed hash seed when none is set would
    # run the fresh process without the guards (test_the_guards_stop_the_work_they_name would fail).
    env = {**os.environ, "GUARDS": guards, "GUARD_LOG": str(log), "PYTHONHASHSEED": "0"}
    r = subprocess.run([sys.executable, "-c", _GUARDED, *args], capture_output=True, text=True, timeout=timeout,
                       env=env)
    r.forbidden = log.read_text().split() if log.exists() else []
    return r


def test_the_guards_stop_the_work_they_name(tmp_path):
    """The guards themselves: a command that needs the forbidden work exits 97 and names it (else a
    guarded test could pass because its guard never fired)."""
    d = hf_dir(tmp_path)
    r = guarded_cli(tmp_path / "data.log", "data", "generate", str(d), "--prompt", "x", "--max-new-tokens", "1")
    assert r.returncode == 97 and r.forbidden == ["safetensors.torch.load_file"], (r.returncode, r.stderr)
    r = guarded_cli(tmp_path / "load.log", "load", "inspect", "tiny-r1")
    assert r.returncode == 97 and r.forbidden == ["checkpoints.load"], (r.returncode, r.stderr)


def hf_dir(tmp_path, edit=None, name="m"):
    """A tiny R1-layout HF folder; `edit(config_dict)` mutates config.json after the weights are written."""
    d = tmp_path / name
    write_r1_dir(d)
    if edit is not None:
        raw = json.loads((d / "config.json").read_text())
        edit(raw)
        (d / "config.json").write_text(json.dumps(raw))
    return d


# ---- 1. config.json and tokenizer_config.json types ------------------------------------------------

@pytest.mark.parametrize("edit,needle", [
    (lambda c: c.update(hidden_size="abc"), "hidden_size = 'abc': expected an integer"),
    (lambda c: c.update(hidden_size=None), "lacks required field 'hidden_size'"),
    (lambda c: c.update(eos_token_id="x"), "eos_token_id = 'x'"),
    (lambda c: c.update(eos_token_id=[2, 10**6]), "eos_token_id 1000000"),
    (lambda c: c.update(rms_norm_eps="abc"), "rms_norm_eps = 'abc': expected a number"),
    (lambda c: c.update(rms_norm_eps=-1), "rms_norm_eps = -1.0"),
    (lambda c: c.update(hidden_size=0), "hidden_size = 0"),
    (lambda c: c.update(num_attention_heads=0), "num_attention_heads = 0"),
    (lambda c: c.update(intermediate_size_mlp=-5), "intermediate_size_mlp = -5"),
    (lambda c: c.update(vocab_size=-1), "vocab_size = -1"),
    (lambda c: c.update(tie_word_embeddings="yes"), "tie_word_embeddings = 'yes': expected true or false"),
    (lambda c: c.update(no_rope_layers=[1]), "no_rope_layers has 1 entries for 2 layers"),
    (lambda c: c.update(rope_parameters="fast"), "rope_parameters = 'fast'"),
    (lambda c: c.update(architectures="Llama4ForCausalLM"), "architectures"),
])
def test_config_json_fields_are_typed(tmp_path, edit, needle):
    d = hf_dir(tmp_path, edit)
    r = cli("inspect", str(d))
    one_line(r, needle)
    assert "config.json" in r.stderr  # the message names the file


def test_config_json_that_is_not_an_object(tmp_path):
    d = hf_dir(tmp_path)
    (d / "config.json").write_text("[1, 2, 3]")
    one_line(cli("inspect", str(d)), "config.json: expected a JSON object, found a JSON list")


@pytest.mark.parametrize("cfg,needle", [
    ([1, 2], "expected a JSON object"),
    ({"bos_token": 5}, "bos_token = 5"),
    ({"add_bos_token": "yes"}, "add_bos_token = 'yes'"),
    ({"chat_template": 7}, "chat_template: expected a string"),
])
def test_tokenizer_config_fields_are_typed(tmp_path, cfg, needle):
    d = hf_dir(tmp_path)
    shutil.copy(LLAMA3_TOKENIZER / "tokenizer.json", d / "tokenizer.json")
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    r = cli("inspect", str(d))
    one_line(r, needle)
    assert "tokenizer_config.json" in r.stderr


# ---- 2. sizes that would hang -------------------------------------------------------------------------

@pytest.mark.parametrize("edit,needle", [
    (lambda c: c.update(num_hidden_layers=1_000_000), "num_hidden_layers = 1000000"),
    (lambda c: c.update(hidden_size=1 << 20, num_attention_heads=16), "hidden_size = 1048576"),
    (lambda c: c.update(vocab_size=1 << 30), "vocab_size = 1073741824"),
    (lambda c: c.update(num_hidden_layers=1000, hidden_size=32768, intermediate_size_mlp=131072,
                        num_attention_heads=256, num_key_value_heads=256, head_dim=128, no_rope_layers=[1] * 1000),
     "parameters; this tool exports models up to"),
])
def test_absurd_sizes_fail_fast(tmp_path, edit, needle):
    """Refused by the config check, from config.json alone: `generate` (which would read the weights
    and build the model) stops before any tensor data is read."""
    d = hf_dir(tmp_path, edit)
    for cmd in (["inspect", str(d)], ["generate", str(d), "--prompt", "x", "--max-new-tokens", "1"]):
        r = guarded_cli(tmp_path / f"{cmd[0]}.log", "data", *cmd)
        assert r.forbidden == [], (cmd[0], r.forbidden)
        one_line(r, needle)
        assert "config.json" in r.stderr, r.stderr  # the message names the file it judged


def test_tensor_names_are_checked_from_the_header_before_any_data(tmp_path):
    """A checkpoint whose header lies about its data: names and shapes are compared first, so the
    error is about the missing tensor, not a read of 4 GB."""
    d = hf_dir(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_hidden_layers"] = 200  # the file holds 2
    cfg["no_rope_layers"] = [1] * 200
    (d / "config.json").write_text(json.dumps(cfg))
    # `generate` reads the weights: with every tensor-data read forbidden, the error still comes
    # (from the header comparison), and no read was attempted before it.
    r = guarded_cli(tmp_path / "guard.log", "data", "generate", str(d), "--prompt", "x", "--max-new-tokens", "1")
    assert r.forbidden == [], r.forbidden
    one_line(r, "is missing 1782 tensor(s)")


# ---- 3. chat templates ---------------------------------------------------------------------------------

@pytest.mark.parametrize("template,needle", [
    ("{% if %}", "TemplateSyntaxError"),
    ("{{ messages.__class__.__subclasses__() }}", "chat template"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", "exceed"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "ran past"),
    ("{{ 'x' * 10**10 }}", "exceed"),
    ("{{ raise_exception('no system role') }}", "no system role"),
])
def test_chat_templates_are_bounded(tmp_path, template, needle):
    tok = tmp_path / "tok"
    tok.mkdir()
    shutil.copy(LLAMA3_TOKENIZER / "tokenizer.json", tok / "tokenizer.json")
    (tok / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin_of_text|>", "chat_template": template}))
    one_line(cli("generate", "tiny-r1", "--tokenizer", str(tok), "--prompt", "hi", "--max-new-tokens", "1"), needle)


# ---- 4. signals ------------------------------------------------------------------------------------------

_LOWER_THEN = textwrap.dedent("""
    import os, signal, sys
    import mobilellm_export.backends.executorch.program as android
    real = android.export_pte
    def export_then(model, cfg, path, **kw):
        facts = real(model, cfg, path, **kw)     # a full artifact is in the temp bundle ...
        signal.raise_signal(signal.{sig})        # ... when the signal comes (handled before it returns)
        return facts
    android.export_pte = export_then
    from mobilellm_export.cli import main
    sys.argv = ["mobilellm-export"] + sys.argv[1:]
    main()
""")


def _export_with_signal(sig: str, out: Path):
    return subprocess.run([sys.executable, "-c", _LOWER_THEN.format(sig=sig), "--model", "tiny-r1", "--tokenizer",
                           str(LLAMA3_TOKENIZER), "--quant", "fp32", "--out", str(out), "--no-verify", "--quiet",
                           *COMMON],
                          capture_output=True, text=True, timeout=600)


# SIGHUP takes the same handler as SIGTERM (only the exit code differs): extra, for CI time.
@pytest.mark.parametrize("sig,code", [("SIGTERM", 143), pytest.param("SIGHUP", 129, marks=pytest.mark.extra)])
def test_sigterm_and_sighup_take_the_ctrl_c_path(tmp_path, sig, code):
    r = _export_with_signal(sig, tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == code and lines == [f"error: terminated by {sig}; nothing was written"], r.stderr
    assert list(tmp_path.iterdir()) == []  # no .partial folder, no lock file


def test_a_sigkilled_export_is_cleaned_up_by_the_next_one(tmp_path):
    r = _export_with_signal("SIGKILL", tmp_path)
    assert r.returncode == -signal.SIGKILL
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and left[0].endswith(".partial") and left[1].endswith(".partial.lock"), left
    # a partial folder whose export is still running (its lock held) must survive the clean-up
    live = tmp_path / ".other-android-fp32.abc.partial"
    live.mkdir()
    with open(live.with_name(live.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        r = cli("--model", "tiny-r1", "--tokenizer", str(LLAMA3_TOKENIZER), "--quant", "fp32", "--out", str(tmp_path),
                "--no-verify", "--quiet", *COMMON, timeout=600)
        assert r.returncode == 0, r.stderr
        names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [live.name, live.name + ".lock", "tiny-r1-android-fp32"], names


# ---- 5. disk and paths -----------------------------------------------------------------------------------

_TOKENIZER_DISK_FULL = textwrap.dedent("""
    import sys
    import tokenizers
    def full(self, path, pretty=True):
        raise Exception("No space left on device (os error 28)")   # what tokenizers raises, verbatim
    tokenizers.Tokenizer.save = full
    from mobilellm_export.cli import main
    sys.argv = ["mobilellm-export"] + sys.argv[1:]
    main()
""")


def test_disk_full_while_the_tokenizer_saves(tmp_path):
    r = subprocess.run([sys.executable, "-c", _TOKENIZER_DISK_FULL, "--model", "tiny-r1", "--tokenizer",
                        str(LLAMA3_TOKENIZER), "--quant", "fp32", "--out", str(tmp_path), "--no-verify", "--quiet",
                        *COMMON], capture_output=True, text=True, timeout=600)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "disk full while writing" in lines[0], r.stderr
    assert "tokenizer.json" in lines[0] and list(tmp_path.iterdir()) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 6 MB filesystem: the tiny export's files (a 17 MB tokenizer) cannot fit. CI runs as root; a
    machine where the mount fails fails this test (mount is no tool a machine cannot have)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a 6 MB tmpfs ({r.stderr.strip()}): run the tests as root, as CI does")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_on_a_real_small_filesystem(small_tmpfs):
    r = cli("--model", "tiny-r1", "--tokenizer", str(LLAMA3_TOKENIZER), "--quant", "fp32", "--out", str(small_tmpfs),
            "--no-verify", "--quiet", *COMMON, timeout=600)
    one_line(r, "disk full")
    assert list(small_tmpfs.iterdir()) == []


def test_out_under_a_regular_file(tmp_path):
    (tmp_path / "f").write_text("x")
    one_line(cli("--model", "tiny-r1", "--tokenizer", str(LLAMA3_TOKENIZER), "--out", str(tmp_path / "f" / "out")),
             "is a file, not a folder")


def test_read_only_out_is_refused_before_any_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True)
    target = ro if r.returncode == 0 else Path("/proc/no-such-dir/out")  # not root: a path nothing can create
    try:
        # Before any work: with checkpoints.load forbidden (it would generate 950M parameters), the
        # refusal still comes, naming the folder.
        g = guarded_cli(tmp_path / "guard.log", "load", "--model", "r1-950m", "--tokenizer", str(LLAMA3_TOKENIZER),
                        "--out", str(target))
        assert g.forbidden == [], g.forbidden
        one_line(g, f"--out {target} is not writable")
    finally:
        if r.returncode == 0:
            subprocess.run(["umount", str(ro)], check=False)


def test_a_file_where_the_bundle_folder_goes_is_left_alone(tmp_path):
    (tmp_path / "tiny-r1-android-fp32").write_text("my notes")
    one_line(cli("--model", "tiny-r1", "--tokenizer", str(LLAMA3_TOKENIZER), "--quant", "fp32", "--out",
                 str(tmp_path), "--no-verify", "--quiet", *COMMON), "is not a bundle folder")
    assert (tmp_path / "tiny-r1-android-fp32").read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-r1-android-fp32"]


def test_replacing_a_bundle_exchanges_atomically(tmp_path):
    from mobilellm_export import bundle

    final = tmp_path / "b"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with bundle.atomic_dir(final) as tmp:
        (tmp / "new.txt").write_text("new")
        assert oct(tmp.stat().st_mode & 0o777) == "0o755"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"] and (final / "new.txt").is_file()
    assert not (final / "old.txt").exists()


def test_replace_without_exchange_restores_the_old_bundle_on_failure(tmp_path, monkeypatch):
    from mobilellm_export import bundle

    final, new = tmp_path / "b", tmp_path / "n"
    final.mkdir()
    new.mkdir()
    (final / "old.txt").write_text("old")
    monkeypatch.setattr(bundle, "_exchange", lambda a, b: False)
    real = os.rename
    calls = []

    def failing_second(a, b):
        calls.append((a, b))
        if len(calls) == 2:
            raise KeyboardInterrupt  # between the two renames
        real(a, b)

    monkeypatch.setattr(bundle.os, "rename", failing_second)
    with pytest.raises(KeyboardInterrupt):
        bundle._replace(new, final)
    assert (final / "old.txt").read_text() == "old"


# ---- 6. verify trusts nothing it did not check --------------------------------------------------------------

@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("good")
    r = cli("--model", "tiny-r1", "--tokenizer", str(LLAMA3_TOKENIZER), "--quant", "fp32", "--out", str(out),
            "--no-verify", "--quiet", *COMMON, timeout=600)
    assert r.returncode == 0, r.stderr
    return out / "tiny-r1-android-fp32"


def _edited(good_bundle, tmp_path, edit_manifest=None, edit_dir=None):
    d = tmp_path / "b"
    shutil.copytree(good_bundle, d)
    if edit_manifest is not None:
        m = json.loads((d / "bundle.json").read_text())
        edit_manifest(m)
        (d / "bundle.json").write_text(json.dumps(m))
    if edit_dir is not None:
        edit_dir(d)
    return d


def _rehash(m, d, name):
    from mobilellm_export.bundle import sha256

    m["files"][name] = {"sha256": sha256(d / name), "bytes": (d / name).stat().st_size}


@pytest.mark.parametrize("edit,needle", [
    (lambda m: m["generation"].update(eos_ids=[128001]), "on EOS ids"),
    (lambda m: m["generation"].update(max_context=16), "on max context"),
    (lambda m: m["generation"].update(chat_template="{{ messages[0].content }}"), "on chat template"),
    (lambda m: m["generation"]["bos"].update(add=False), "on BOS policy add"),
    (lambda m: m["config"].update(vocab_size=128000), "on vocabulary size"),
    (lambda m: m.update(files={}), "files"),
    (lambda m: m.pop("files"), "'files' is a required property"),
    (lambda m: m["files"].pop("model.ptd"), "does not list model.ptd"),
    (lambda m: m["files"].update({"../../../../etc/hostname": {"sha256": "0" * 64, "bytes": 1}}), "files"),
    (lambda m: m.update(schema_version="1"), "schema_version"),
    (lambda m: m["target"].update(name="wasm"), "unknown target 'wasm'"),  # a target this version lacks
    (lambda m: m.update(target=[]), "target"),
])
def test_verify_fails_on_an_edited_manifest(good_bundle, tmp_path, edit, needle):
    one_line(cli("verify", str(_edited(good_bundle, tmp_path, edit)), "--no-latency", "--quiet"), needle)


def test_verify_flags_an_unlisted_file(good_bundle, tmp_path):
    d = _edited(good_bundle, tmp_path, edit_dir=lambda d: (d / "evil.so").write_bytes(b"\x7fELF"))
    one_line(cli("verify", str(d), "--no-latency", "--quiet"), "does not list, e.g. evil.so")


def test_verify_refuses_a_link_out_of_the_bundle(good_bundle, tmp_path):
    def link(d):
        (d / "model.ptd").unlink()
        (d / "model.ptd").symlink_to("/etc/hostname")

    one_line(cli("verify", str(_edited(good_bundle, tmp_path, edit_dir=link)), "--no-latency", "--quiet"),
             "model.ptd is a link")


def test_a_truncated_data_file_with_a_matching_hash_is_one_line(good_bundle, tmp_path):
    """Corruption sha256 cannot see: the manifest carries the hash of the truncated file."""
    d = tmp_path / "b"
    shutil.copytree(good_bundle, d)
    data = (d / "model.ptd").read_bytes()
    (d / "model.ptd").write_bytes(data[: len(data) // 2])
    m = json.loads((d / "bundle.json").read_text())
    _rehash(m, d, "model.ptd")
    (d / "bundle.json").write_text(json.dumps(m))
    one_line(cli("verify", str(d), "--no-latency", "--quiet"), "ExecuTorch cannot load model.pte")


# ---- 7/8. run, generate and the small visible things ------------------------------------------------------------

def test_pickle_refusal_never_suggests_running_it(tmp_path):
    import pickle

    d = hf_dir(tmp_path)
    for f in d.glob("*.safetensors"):
        f.unlink()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (d / "pytorch_model.bin").write_bytes(pickle.dumps({"x": Evil()}))
    r = cli("generate", str(d), "--prompt", "x")  # reads the weights (inspect reads headers only)
    one_line(r, "refusing")
    assert "weights_only=False" not in r.stderr and not (tmp_path / "pwned").exists()


def _garble_after(f: Path, offset: int) -> None:
    raw = bytearray(f.read_bytes())
    raw[offset:] = os.urandom(len(raw) - offset)
    f.write_bytes(bytes(raw))


@pytest.mark.parametrize("kind", ["safetensors", "gguf"])
def test_inspect_reads_headers_only(tmp_path, kind):
    """inspect on a checkpoint whose tensor data is garbage but whose header is right, with every
    tensor-data read forbidden (a read exits 97 and is named): it describes the model from the
    headers alone. Garbage floats alone would not show a read; the guard does."""
    if kind == "safetensors":
        src = hf_dir(tmp_path)
        f = next(src.glob("*.safetensors"))
        _garble_after(f, 8 + int.from_bytes(f.read_bytes()[:8], "little"))  # past the JSON header
        arch, layers = "llama4_text", 2
    else:
        import gguf

        from test_gguf_source import N_LAYERS, write_gguf

        src = tmp_path / "tiny.gguf"
        write_gguf(src)
        _garble_after(src, gguf.GGUFReader(str(src)).data_offset)  # past the key/values and tensor infos
        arch, layers = "llama", N_LAYERS
    r = guarded_cli(tmp_path / "guard.log", "data", "inspect", str(src))
    assert r.forbidden == [] and r.returncode == 0, (r.forbidden, r.returncode, r.stderr)
    assert f"architecture  {arch}: {layers} layers" in r.stdout, r.stdout


def test_report_of_an_unverified_export_says_so(good_bundle):
    assert "Result: **not verified" in (good_bundle / "report.md").read_text()
