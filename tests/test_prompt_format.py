"""prompt_format: the chat template reduced for the apps, proved, and the shared app vectors.

References: transformers' own jinja rendering (`render_jinja_template`, its sandbox and its
strftime_now), the `tokenizers` library and ExecuTorch's C++ tokenizer (`pytorch_tokenizers`,
the one TextLLMRunner uses). The committed vectors in tests/fixtures/apps/ are checked to be
what build_vectors.py makes from those references today.
"""

from __future__ import annotations

import datetime
import sys
import importlib.util
import json
from pathlib import Path

import pytest

from mobilellm_export import prompt_format as pf
from mobilellm_export.errors import UserError

APPS = Path(__file__).resolve().parent / "fixtures" / "apps"


def _builder():
    spec = importlib.util.spec_from_file_location("build_vectors", APPS / "build_vectors.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """The vectors and bundles as build_vectors.py makes them now (bundles with tokenizer files)."""
    tmp = tmp_path_factory.mktemp("apps")
    mod = _builder()
    files = mod.build(tmp)
    return tmp, files, dict(mod.TOKENIZERS)


@pytest.fixture(scope="session")
def toks(built):
    """(C++ ExecuTorch tokenizer, `tokenizers` tokenizer) of a built bundle, loaded once."""
    import functools

    from pytorch_tokenizers import CppHFTokenizer
    from tokenizers import Tokenizer as HF

    import hashlib

    @functools.lru_cache(maxsize=None)
    def load(digest, path):
        cpp = CppHFTokenizer()
        cpp.load(path)
        return cpp, HF.from_file(path)

    def get(name):  # the two Llama 3 bundles share one tokenizer.json: load it once
        path = built[0] / name / "tokenizer.json"
        return load(hashlib.sha256(path.read_bytes()).hexdigest(), str(path))
    return get


def _bundles(built):
    return {p.parent.name: json.loads(text) for p, text in
            ((Path(f), t) for f, t in built[1].items()) if p.name == "bundle.json"}


def test_every_real_template_reduces(built):
    bundles = _bundles(built)
    assert sorted(bundles) == ["gemma3", "qwen3", "r1-llama3", "r1-llama3.2-template", "smollm2"]
    for name, m in bundles.items():
        f = m["generation"]["prompt_format"]
        assert f["reducible"], (name, f.get("reason"))
    g = {n: m["generation"]["prompt_format"] for n, m in bundles.items()}
    # what each family needs, as derived (not written by hand anywhere)
    assert g["gemma3"]["system"]["placement"] == "first_user" and g["gemma3"]["system"]["separator"] == "\n\n"
    assert g["gemma3"]["roles"]["assistant"]["prefix"] == "<start_of_turn>model\n"
    assert g["smollm2"]["system"]["default"].startswith("You are a helpful AI assistant named SmolLM")
    assert g["qwen3"]["thinking"]["history"] == "drop_reasoning"
    assert g["qwen3"]["thinking"]["generation_prompt_off"] == "<think>\n\n</think>\n\n"
    assert g["r1-llama3.2-template"]["date"] == {"strftime": "%d %b %Y", "placeholder": "{date}"}
    assert g["r1-llama3"]["roles"]["user"]["trim"] and not g["qwen3"]["roles"]["user"]["trim"]
    assert sorted(g["r1-llama3"]["system_prompts"]) == ["code", "math"] and g["qwen3"]["system_prompts"] == {}
    assert g["r1-llama3"]["stop"]["ids"] == [128001, 128008, 128009]
    assert "<|eot_id|>" in g["r1-llama3"]["stop"]["strings"]


def _transformers_render(template: str, conv: dict, bos: str, eos: str) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    kw = dict(conv.get("kwargs", {}))
    # transformers' strftime_now reads the clock; the template takes a pinned date_string instead
    kw["date_string"] = pf.FIXED_DATE.strftime("%d %b %Y")
    out = render_jinja_template([conv["messages"]], chat_template=template, add_generation_prompt=True,
                                bos_token=bos, eos_token=eos, **kw)
    return out[0][0] if isinstance(out, tuple) else out[0]


def test_format_equals_jinja_and_transformers_on_every_mandated_conversation(built):
    """The proof, re-run against an independent renderer: for every bundle and conversation,
    prompt_format == our jinja sandbox == transformers' jinja, byte for byte."""
    n = 0
    for name, m in _bundles(built).items():
        gen = m["generation"]
        cfg = json.loads((built[0] / name / "tokenizer_config.json").read_text())
        bos, eos = gen["bos"]["text"] or "", cfg.get("eos_token") or ""
        eos = eos["content"] if isinstance(eos, dict) else eos
        for conv in pf.PROOF_CONVERSATIONS:
            kw = conv.get("kwargs", {})
            ours = pf.render(gen["prompt_format"], conv["messages"], date=pf.FIXED_DATE, **kw)
            assert ours == pf.jinja_render(gen["chat_template"], conv["messages"], bos_token=bos, eos_token=eos, **kw)
            assert ours == _transformers_render(gen["chat_template"], conv, bos, eos), (name, conv["name"])
            n += 1
    assert n == 5 * len(pf.PROOF_CONVERSATIONS)


def test_mandated_cases_are_in_the_proof_set():
    names = {c["name"]: c for c in pf.PROOF_CONVERSATIONS}
    roles = {n: [m["role"] for m in c["messages"]] for n, c in names.items()}
    assert roles["single"] == ["user"] and roles["single-system"] == ["system", "user"]
    assert roles["multi"] == ["user", "assistant", "user"] and roles["multi-system"][0] == "system"
    ws = "".join(m["content"] for m in names["whitespace"]["messages"])
    assert ws != ws.strip() and "\u0085" in ws and "\u00a0" in ws  # Python-only whitespace too
    think = [c for c in pf.PROOF_CONVERSATIONS if "</think>" in json.dumps(c)]
    assert {c.get("kwargs", {}).get("enable_thinking") for c in think} == {None, True, False}


def test_the_date_is_the_pinned_one_and_strftime_subset_equals_python():
    f = json.loads((APPS / "bundles" / "r1-llama3.2-template" / "bundle.json").read_text())["generation"]["prompt_format"]
    d = datetime.datetime(2031, 12, 1, 0, 0, 0)
    text = pf.render(f, [{"role": "user", "content": "hi"}], date=d)
    assert "Today Date: 01 Dec 2031\n" in text
    for day in range(0, 400, 37):
        t = datetime.datetime(2024, 1, 1, 7, 3, 9) + datetime.timedelta(days=day, hours=day)
        fmt = " ".join(pf.STRFTIME)
        assert pf.strftime(fmt, t) == t.strftime(fmt)


def test_qwen3_drops_earlier_reasoning_and_thinking_off_adds_the_empty_block():
    f = json.loads((APPS / "bundles" / "qwen3" / "bundle.json").read_text())["generation"]["prompt_format"]
    conv = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "<think>\nrsn\n</think>\n\nb"},
            {"role": "user", "content": "c"}]
    on, off = pf.render(f, conv, enable_thinking=True), pf.render(f, conv, enable_thinking=False)
    assert "rsn" not in on and "<think>" not in on and "<|im_start|>assistant\nb<|im_end|>" in on
    assert off == on + "<think>\n\n</think>\n\n"


@pytest.mark.parametrize("template, why", [
    ("{% for m in messages %}{{ m['content'] | upper }}{% endfor %}", "content once"),
    ("{% for m in messages %}{% if m.role != 'system' %}<{{ m.role }}>{{ m.content }}</s>{% endif %}{% endfor %}"
     "<assistant>", "system message"),
    # renders each turn with a fixed prefix/suffix except that the 2nd user turn is numbered
    ("{% for m in messages %}<{{ m.role }}{{ loop.index if loop.index > 2 else '' }}>{{ m.content }}</s>{% endfor %}"
     "<assistant>", ""),
])
def test_irreducible_templates_are_reported(template, why):
    f = pf.reduce_template(template, bos_token="<s>", eos_token="</s>", specials=["<s>", "</s>"], eos_ids=[2],
                           eos_texts=["</s>"])
    assert f["reducible"] is False and why in f["reason"]
    with pytest.raises(UserError, match="no prompt_format"):
        pf.render(f, [{"role": "user", "content": "x"}])


def test_conversation_shape_is_checked():
    f = json.loads((APPS / "bundles" / "qwen3" / "bundle.json").read_text())["generation"]["prompt_format"]
    for bad in ([], [{"role": "assistant", "content": "x"}], [{"role": "user", "content": "x"}] * 2,
                [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
                [{"role": "user", "content": 3}]):
        with pytest.raises(UserError, match="conversation"):
            pf.render(f, bad)


def test_committed_vectors_are_what_the_references_give_today(built):
    """tests/fixtures/apps/* (read by the Kotlin and Swift tests) equal a fresh build; the bundles
    are compared on their generation section (tokenizer hashes follow the tokenizers version)."""
    for f, text in built[1].items():
        committed = (APPS / f).read_text()
        if f.endswith("bundle.json"):
            assert json.loads(committed)["generation"] == json.loads(text)["generation"], f
        else:
            assert committed == text, f"{f} is stale: run .venv/bin/python tests/fixtures/apps/build_vectors.py"


def test_prompt_ids_equal_executorch_cpp_tokenizer_bos_included(toks):
    """Every vector's prompt (BOS policy applied) tokenizes to the same ids in the tokenizers
    library and in ExecuTorch's C++ tokenizer asked for no BOS (num_bos = 0, as the runner is)."""
    vectors = json.loads((APPS / "prompts.json").read_text())
    seen, differ = set(), set()
    for v in vectors:
        b = v["bundle"]
        cpp, hf = ({b: toks(b)[0]}, {b: toks(b)[1]})
        bos = json.loads((APPS / "bundles" / b / "bundle.json").read_text())["generation"]["bos"]
        want = hf[b].encode(v["prompt"], add_special_tokens=False).ids
        assert v["ids"] == want, (b, v["conversation"])
        if cpp[b].encode(v["prompt"], 0, 0) != want:
            differ.add((b, v["conversation"]))
        if bos["add"]:  # BOS once, first (SmolLM2's "BOS" <|im_start|> opens every ChatML turn: not added)
            assert want[0] == bos["id"] and want[1] != bos["id"], (b, v["conversation"])
        seen.add(b)
    assert len(seen) == 5
    assert differ == KNOWN_CPP_DIVERGENCE  # see test_cpp_nfc_normalizer_drops_the_cedilla


# ExecuTorch's C++ tokenizer (pytorch_tokenizers 1.5.0) disagrees with `tokenizers` here, and no BOS
# policy can fix it: its NFC normalizer (Qwen3's tokenizer.json has one) turns "Ç" into "C", and on
# Gemma 3 it splits a run of spaces into single "▁" tokens where `tokenizers` uses "▁▁", "▁▁▁".
KNOWN_CPP_DIVERGENCE = {("qwen3", "unicode"), ("gemma3", "whitespace"), ("gemma3", "whitespace-no-system")}


def test_cpp_gemma3_splits_space_runs(toks):
    cpp, hf = toks("gemma3")
    assert hf.encode("a  b", add_special_tokens=False).ids == [236746, 138, 236763]  # a ▁▁ b
    assert cpp.encode("a  b", 0, 0) == [236746, 236743, 518]  # a ▁ ▁b
    assert cpp.encode("a b. Hello world", 0, 0) == hf.encode("a b. Hello world", add_special_tokens=False).ids


def test_cpp_nfc_normalizer_drops_the_cedilla(toks):
    """The divergence above, pinned: when pytorch_tokenizers fixes it this fails and the known set
    above should become empty."""
    cpp, hf = toks("qwen3")
    assert hf.decode(hf.encode("Ça va").ids) == "Ça va"
    assert hf.decode(cpp.encode("Ça va", 0, 0)) == "Ca va"
    for text in ("日本語 🙂 — “quotes”", "plain ASCII, {braces} <tags>"):
        assert cpp.encode(text, 0, 0) == hf.encode(text).ids


def test_gemma3_needs_the_policy_to_agree(toks):
    """Where the two tokenizers differ (Gemma 3: tokenizer.json's post-processor adds BOS in
    Python, the C++ tokenizer asked for none adds none), the rendered text already carries BOS
    and the policy adds no second one."""
    v = next(v for v in json.loads((APPS / "prompts.json").read_text()) if v["bundle"] == "gemma3")
    cpp, hf = toks("gemma3")
    body = v["text"][len("<bos>"):]
    assert hf.encode(body).ids[0] == 2
    assert cpp.encode(body, 0, 0)[0] != 2
    assert v["prompt"] == v["text"] and v["ids"][0] == 2 and v["ids"].count(2) == 1


def test_stream_and_stats_vectors_match_their_references():
    """The stop vectors' expectations are a plain search (re-done here); the stats ones are what
    ExecuTorch printed: recompute them from the JSON with its formulas."""
    for v in json.loads((APPS / "stream.json").read_text()):
        text = "".join(v["pieces"])
        cut = min((text.find(s) for s in v["stop_strings"] if s in text), default=len(text))
        assert v["expect"]["visible"] == text[:cut]
    for v in json.loads((APPS / "stats.json").read_text()):
        if v["expect"] is None:
            continue
        s = json.loads(v["json"])
        k = s["SCALING_FACTOR_UNITS_PER_SECOND"]
        assert v["expect"]["prefill_tok_s"] == pytest.approx(
            s["prompt_tokens"] / (s["prompt_eval_end_ms"] - s["inference_start_ms"]) * k, rel=1e-6)
        assert v["expect"]["decode_tok_s"] == pytest.approx(
            s["generated_tokens"] / (s["inference_end_ms"] - s["prompt_eval_end_ms"]) * k, rel=1e-6)
        assert v["expect"]["ttft_s"] == pytest.approx((s["first_token_ms"] - s["inference_start_ms"]) / k)


def test_exported_manifest_validates_with_prompt_format(built):
    from mobilellm_export import bundle

    for name, m in _bundles(built).items():
        bundle.validate(m, name)
    m = _bundles(built)["qwen3"]
    m["generation"]["prompt_format"]["roles"]["user"].pop("trim")
    with pytest.raises(UserError, match="prompt_format"):
        bundle.validate(m)


# ---- mobilellm-export run --conversation ---------------------------------------------------------

def _vector(bundle: str, conversation: str) -> dict:
    return next(v for v in json.loads((APPS / "prompts.json").read_text())
                if v["bundle"] == bundle and v["conversation"] == conversation)


def test_conversation_text_is_the_vectors_prompt_for_every_bundle(built):
    """`run --conversation` formats exactly as the apps do (prompt_format, then the BOS policy):
    for every bundle and conversation it gives the vector's prompt (the jinja rendering)."""
    from mobilellm_export.run_bundle import conversation_text

    warned, loaded = [], {}
    for v in json.loads((APPS / "prompts.json").read_text()):
        d = built[0] / v["bundle"]
        if v["bundle"] not in loaded:
            loaded[v["bundle"]] = json.loads((d / "bundle.json").read_text()), built[2][v["bundle"]]
        m, tok = loaded[v["bundle"]]
        got = conversation_text(m, tok, v["messages"], enable_thinking=v["enable_thinking"],
                                date=datetime.datetime.fromisoformat(v["date"]), warn=warned.append)
        assert got == v["prompt"], (v["bundle"], v["conversation"])
    assert warned == []


def test_run_feeds_the_runner_that_text(built, tmp_path, monkeypatch):
    """run_bundle with --conversation hands the app runner exactly that text (the runner itself
    is faked here; test_run_conversation_through_text_llm_runner runs the real one)."""
    from mobilellm_export import run_bundle as rb

    fed = []

    class App:
        def generate(self, text, max_new_tokens, temperature, on_text):
            fed.append(text)
            return {"generated_tokens": 0, "prompt_tokens": 0}

    class Target:
        name, runtime = "android", "fake"

        def app_runner(self, d, m, threads):
            return App()

    monkeypatch.setattr(rb, "check_files", lambda d, m: None)
    monkeypatch.setattr(rb.targets, "of_bundle", lambda m: Target())
    monkeypatch.setattr(rb.prompt_format, "FIXED_DATE", pf.FIXED_DATE)
    for bundle, conv in (("qwen3", "reasoning-history-think-off"), ("smollm2", "multi")):
        v = _vector(bundle, conv)
        path = tmp_path / f"{bundle}.json"
        path.write_text(json.dumps({"messages": v["messages"], "enable_thinking": v["enable_thinking"]}))
        monkeypatch.setattr(rb, "conversation_text", _pinned(rb.conversation_text))
        rb.run_bundle(str(built[0] / bundle), None, max_new_tokens=1, conversation=str(path), write=lambda s: None)
        assert fed[-1] == v["prompt"]
    with pytest.raises(UserError, match="last message must be the user's"):
        path.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}))
        rb.run_bundle(str(built[0] / "qwen3"), None, max_new_tokens=1, conversation=str(path))


def _pinned(fn):
    def call(*a, **kw):
        kw["date"] = pf.FIXED_DATE
        return fn(*a, **kw)
    return call


@pytest.mark.extra
def test_run_conversation_through_text_llm_runner(tmp_path):
    """A real tiny-r1 bundle with the Llama 3 tokenizer (~1 min to export): `run --conversation`
    feeds ExecuTorch's TextLLMRunner the vector's prompt, and the runner counts the vector's ids."""
    import subprocess

    from mobilellm_export import run_bundle as rb

    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "mobilellm_export.cli", "export", "--model", "tiny-r1", "--tokenizer",
                        str(APPS.parents[2].parent / "shared/data/llama3-tokenizer"), "--quant", "fp32",
                        "--max-context", "256", "--max-seq-len", "64", "--no-verify", "--quiet", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = out / "tiny-r1-android-fp32"
    m = json.loads((d / "bundle.json").read_text())
    committed = json.loads((APPS / "bundles" / "r1-llama3" / "bundle.json").read_text())
    assert m["generation"]["prompt_format"] == committed["generation"]["prompt_format"]
    v = _vector("r1-llama3", "multi-system")
    conv = tmp_path / "conv.json"
    conv.write_text(json.dumps({"messages": v["messages"]}))
    fed, stats = [], []
    real = rb.targets.of_bundle(m)

    class Recording:  # the real target and runner, recording what generate() is given
        name, runtime = real.name, real.runtime

        def app_runner(self, d_, m_, threads):
            app = real.app_runner(d_, m_, threads=threads)
            gen = app.generate

            def generate(text, *a, **kw):
                fed.append(text)
                stats.append(gen(text, *a, **kw))
                return stats[-1]
            app.generate = generate
            return app

    orig = rb.targets.of_bundle
    rb.targets.of_bundle = lambda mm: Recording()
    try:
        rb.run_bundle(str(d), None, max_new_tokens=4, temperature=0.0, conversation=str(conv), write=lambda s: None)
    finally:
        rb.targets.of_bundle = orig
    assert fed == [v["prompt"]]
    assert stats[0]["prompt_tokens"] == len(v["ids"])
