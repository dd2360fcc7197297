"""The target conformance suite: every registered target x every architecture (tiny shapes).

A target that passes it is correct; nothing here names a target. A new backend registers through the
`mobilellm_export.backends` entry-point group and is collected like the built-in ones
(tests/e2e/test_backend_plugin.py installs a fake one, and a copy with one seeded bug, to show both).

- fp32 against transformers (the independent reference), prefill of 1..64 tokens (chunked by the
  artifact's max_seq_len) and 32 decode steps through the artifact's KV cache:
  - a target whose runtime computes in fp32: max |dlogit| <= 2e-5 x max |logit|;
  - an fp16 target (`Target.precision`; Core ML, whose package stores fp16 constants): `runner()`
    (our MIL executor in fp32 mode: Core ML itself cannot run on Linux) and `device_runner()` (the
    executor with every op rounded to fp16, as a device computes) against transformers within
    FP16_BOUND.
- the quantized lowering pair (the target's reference against its artifact), within the target's
  noise-floor-relative bounds, as `verify` judges it;
- verify's independent reference: transformers reading the source files agrees with our float model
  on a clean export, and a loader fault every pair shares (RoPE theta from a missing key) fails the
  gate on that check alone;
- the single-token decode path, teacher-forced on the reference's greedy tokens, within the lowering
  bound relative to that path's own noise floor;
- the metadata the artifact itself records (EOS ids, context, vocabulary) equal to bundle.json's;
- a tampered artifact refused; two exports byte-identical; the localiser (`probe`) works; and a
  lowering with one seeded fault fails verification.
Every bundle is built once per run (`_bundle`), keyed by target, architecture, recipe and fault.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import hf_tiny
import pytest
import torch

from mobilellm_export import backends, pipeline
from mobilellm_export.console import Progress
from mobilellm_export.errors import UserError
from mobilellm_export.verify import quick

TARGETS = backends.names()
ARCHS = hf_tiny.ARCHS
MAX_CONTEXT, MAX_SEQ_LEN, EVAL_TOKENS = 128, 16, 128
FP32_BOUND = 2e-5
# fp16 keeps 11 significant bits: each rounding is off by at most u = 2^-11 relative. The logits of
# a tiny model pass through ~10 roundings on their longest path per layer (weights, the two matmul
# outputs, norm, softmax, residual add...) over 2-3 layers, and rounding errors add up like a random
# walk at worst linearly: 64 u = 2^-5 bounds it with margin (measured: see the test's message).
FP16_BOUND = 64 * 2.0 ** -11
PREFILLS = (1, 2, 7, 16, 17, 33, 64)  # one call, the chunk boundary either side, several chunks
DECODE = 32


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory):
    made = {}

    def get(arch):
        if arch not in made:
            made[arch] = hf_tiny.build(arch, tmp_path_factory.mktemp(arch))
        return made[arch]
    return get


@pytest.fixture(scope="session")
def bundles(tmp_path_factory, hf_models):
    """(target, arch, recipe, verify, fault, copy) -> (bundle folder, report), built once per run."""
    built = {}

    def get(target, arch, recipe="fp32", verify=False, fault=None, copy=0):
        key = (target, arch, recipe, verify, fault, copy)
        if key not in built:
            from mobilellm_export.checkpoints import load
            from mobilellm_export.quant.recipe import load_recipe

            _, folder = hf_models(arch)
            tgt = backends.get(target)
            rec = load_recipe(recipe)
            ck = load(str(folder), tokenizer=str(hf_tiny.TOKENIZER))
            out = tmp_path_factory.mktemp(f"{target}-{arch}-{recipe}")
            built[key] = pipeline.export(
                ck, rec, tgt, out=str(out), max_context=MAX_CONTEXT, max_seq_len=MAX_SEQ_LEN,
                checking=pipeline.Checking(eval_tokens=EVAL_TOKENS, latency=False, threads=2),
                thresholds=pipeline.thresholds_for(rec, tgt), progress=Progress(quiet=True), do_verify=verify,
                lowering_fault=fault)
        return built[key]
    return get


def _manifest(path: Path) -> dict:
    return json.loads((path / "bundle.json").read_text())


def _tokens(n: int, seed: int = 1) -> list[int]:
    return torch.randint(3, hf_tiny.V, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _worst(runner, reference_logits: torch.Tensor, toks: list[int]) -> float:
    """max |dlogit| / max |logit| over prefills of PREFILLS tokens and DECODE steps after the longest."""
    worst = 0.0
    scale = reference_logits.abs().max().item()
    for n in PREFILLS:
        runner.reset()
        worst = max(worst, (runner.prefill(toks[:n]).float() - reference_logits[n - 1]).abs().max().item())
    for i in range(PREFILLS[-1], PREFILLS[-1] + DECODE):
        worst = max(worst, (runner.decode(toks[i]).float() - reference_logits[i]).abs().max().item())
    return worst / scale


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("target", TARGETS)
def test_fp32_matches_transformers(target, arch, bundles, hf_models):
    hf, _ = hf_models(arch)
    path, _ = bundles(target, arch)
    m = _manifest(path)
    tgt = backends.of_bundle(m)
    toks = _tokens(PREFILLS[-1] + DECODE)
    with torch.no_grad():
        want = hf(torch.tensor([toks])).logits[0].float()
    runner = tgt.runner(path, m, threads=2)
    assert runner is not None, f"target {target} cannot run its artifact here"
    if tgt.precision == "fp32":
        worst = _worst(runner, want, toks)
        assert worst <= FP32_BOUND, f"{target} {arch}: {worst:.3g} x max |logit| from transformers"
        return
    # An fp16 target: the package's program (fp16 constants) in our executor's fp32 mode, and in its
    # fp16 mode as a device computes, each against transformers within the fp16 bound.
    worst = _worst(runner, want, toks)
    assert worst <= FP16_BOUND, f"{target} {arch}: fp32-mode program {worst:.3g} x max |logit| from transformers"
    device = tgt.device_runner(path, m, threads=2)
    assert device is not None, f"fp16 target {target} has no device_runner"
    worst16 = _worst(device, want, toks)
    assert worst16 <= FP16_BOUND, f"{target} {arch}: fp16 arithmetic {worst16:.3g} x max |logit| from transformers"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("target", TARGETS)
def test_quantized_lowering_within_the_targets_bounds(target, arch, bundles):
    """4bit, as `verify` judges it: the lowering pair against the noise floor measured in the same run."""
    _, rep = bundles(target, arch, "4bit", verify=True)
    assert rep["artifact_runs_here"], f"{target}: the artifact did not run"
    lowering = [c for c in rep["checks"] if c["suite"] == "lowering"]
    assert lowering, "no lowering check was made"
    bad = [f"{c['name']} = {c['value']} {c['op']} {c['bound']}" for c in lowering if not c["ok"]]
    assert not bad, f"{target} {arch}: " + "; ".join(bad)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("target", TARGETS)
def test_the_float_model_agrees_with_transformers_reading_the_source(target, arch, bundles):
    """verify's independent reference (verify/independent.py) on a clean export: transformers, reading
    the same HF folder, agrees with our float model as closely as two fp32 implementations do."""
    from mobilellm_export.verify import independent

    _, rep = bundles(target, arch, "4bit", verify=True)  # the quantized test's bundle: no export more
    (src,) = [c for c in rep["checks"] if c["suite"] == independent.SUITE]
    assert src["status"] == "pass" and src["value"] <= FP32_BOUND, src["message"]
    assert "transformers" in src["message"] and "top-1 agreement 1.000" in src["message"], src["message"]


@pytest.mark.parametrize("target", TARGETS)
def test_a_loader_fault_every_pair_shares_is_caught_by_transformers(target, hf_models, tmp_path, monkeypatch):
    """A fault in the shared path: RoPE theta read from a key the config does not have (the default
    1e4 for R1's 8e6). The float model, the reference and the artifact all come through our loader,
    so every pair the gate scores agrees, and fp32 passes every bound of its own. Only transformers,
    reading the same files, disagrees, and the gate fails on that check alone."""
    import dataclasses

    from mobilellm_export.checkpoints import hf, load
    from mobilellm_export.quant.recipe import load_recipe
    from mobilellm_export.verify import independent

    _, folder = hf_models("tiny-r1")
    right = hf.from_hf_config
    monkeypatch.setattr(hf, "from_hf_config", lambda *a, **k: dataclasses.replace(right(*a, **k), rope_theta=1e4))
    ck = load(str(folder), tokenizer=str(hf_tiny.TOKENIZER))
    assert ck.config.rope_theta == 1e4  # the fault is in (transformers reads 8e6 from the same file)
    rec, tgt = load_recipe("fp32"), backends.get(target)
    _, rep = pipeline.export(ck, rec, tgt, out=str(tmp_path), max_context=MAX_CONTEXT, max_seq_len=MAX_SEQ_LEN,
                             checking=pipeline.Checking(eval_tokens=EVAL_TOKENS, latency=False, threads=2),
                             thresholds=pipeline.thresholds_for(rec, tgt), progress=Progress(quiet=True))
    failed = [c for c in rep["gate"]["checks"] if c["status"] == "fail"]
    assert rep["passed"] is False and [c["name"] for c in failed] == [independent.CHECK], failed
    assert failed[0]["value"] > 100 * independent.BOUND, failed[0]["message"]  # not a near miss
    assert "our loader reads the source differently" in failed[0]["message"]
    # every pair through our loader agrees: without the independent reference this export passes
    assert rep["parity"]["float_vs_artifact"]["top1"] >= 0.99, rep["parity"]["float_vs_artifact"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("target", TARGETS)
def test_the_decode_path_sits_at_its_own_noise_floor(target, arch, bundles):
    """The single-token decode path, teacher-forced on the reference's greedy tokens: a correct
    artifact's KL there is within the target's lowering bound, taken relative to the same path's
    noise floor (the reference against itself with 1-ulp noise, on the same tokens)."""
    from mobilellm_export.quant.recipe import load_recipe
    from mobilellm_export.verify.report import lowering_kl_bound

    _, rep = bundles(target, arch, "4bit", verify=True)  # the quantized test's bundle: no export more
    dp = rep["decode_path"]
    assert set(dp) == {"quant_vs_artifact", "quant_noise_floor"}, dp
    assert dp["quant_vs_artifact"]["steps"] == len(rep["greedy_tokens"]["reference"]) >= 2
    assert "quant_noise_floor" in rep["greedy"]  # the greedy noise floor: where the 1-ulp run leaves the clean one
    th = pipeline.thresholds_for(load_recipe("4bit"), backends.get(target))
    bound, basis = lowering_kl_bound(th, dp["quant_noise_floor"]["kl_mean"])
    assert dp["quant_vs_artifact"]["kl_mean"] <= bound, (target, arch, dp, basis)


@pytest.mark.parametrize("target", TARGETS)
def test_metadata_round_trip(target, bundles):
    path, rep = bundles(target, "tiny-r1", "4bit", verify=True)
    m = _manifest(path)
    assert rep["metadata"] and all(c["ok"] for c in rep["metadata"]), rep["metadata"]
    facts = backends.of_bundle(m).metadata(path, m)
    if facts is not None:  # None: the artifact records nothing of its own (then nothing to disagree)
        gen = m["generation"]
        assert facts == {"eos_ids": gen["eos_ids"], "max_context": gen["max_context"],
                         "max_seq_len": gen["max_seq_len"], "vocab_size": m["tokenizer"]["vocab_size"]}


@pytest.mark.parametrize("target", TARGETS)
def test_tampered_artifact_is_refused(target, bundles, tmp_path):
    path, _ = bundles(target, "tiny-r1", "4bit", verify=True)  # the metadata test's bundle: one export less
    copy = tmp_path / path.name
    shutil.copytree(path, copy)
    m = _manifest(copy)
    entry = copy / m["target"]["entry"]
    victim = entry if entry.is_file() else max((p for p in entry.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256"):
        pipeline.verify_command(pipeline.VerifyRequest(str(copy), checking=pipeline.Checking(latency=False)),
                                Progress(quiet=True))


@pytest.mark.parametrize("target", TARGETS)
def test_a_tokenizer_from_another_model_is_refused_without_scoring(target, bundles, hf_models, tmp_path):
    """The bundle's tokenizer swapped for another model's of the same size and special ids (other
    merges), every hash rewritten: every check of the bundle's own files agrees with itself, and
    nothing is scored (random weights, no KL): verify compares the tokenizer with the one the export
    was given (`--tokenizer`; these sources carry none) and refuses it in one line naming the part."""
    from faults import harness

    from mobilellm_export.verify import metadata

    path, _ = bundles(target, "tiny-r1", "4bit", verify=True)  # the metadata test's bundle: one export less
    _, folder = hf_models("tiny-r1")
    req = dict(source=str(folder), checking=pipeline.Checking(latency=False))
    opened = pipeline.open_bundle(pipeline.VerifyRequest(str(path), tokenizer=str(hf_tiny.TOKENIZER), **req),
                                  Progress(quiet=True))
    (row,) = [c for c in opened.meta if c["name"] == metadata.TOKENIZER_CHECK]
    assert row["ok"] and "status" not in row, row  # compared, and the same
    opened = pipeline.open_bundle(pipeline.VerifyRequest(str(path), **req), Progress(quiet=True))
    (row,) = [c for c in opened.meta if c["name"] == metadata.TOKENIZER_CHECK]
    assert row["status"] == "skip" and "carries no tokenizer" in row["message"], row  # said, not passed
    copy = tmp_path / path.name
    shutil.copytree(path, copy)
    harness.make_tokenizer(copy, reversed_words=True, with_config=False)
    harness.rehash(copy)
    with pytest.raises(UserError, match=r"^the bundle's tokenizer is not --tokenizer .*: its vocabulary differ") as e:
        pipeline.open_bundle(pipeline.VerifyRequest(str(copy), tokenizer=str(hf_tiny.TOKENIZER), **req),
                             Progress(quiet=True))
    assert "\n" not in str(e.value)
    meta = metadata.derive(copy, _manifest(copy), backends.of_bundle(_manifest(copy)))
    assert all(c["ok"] for c in meta), [c for c in meta if not c["ok"]]  # only the source check sees it


@pytest.mark.parametrize("target", TARGETS)
def test_consistent_wrong_metadata_is_re_derived_from_the_source(target, bundles, hf_models, tmp_path, monkeypatch):
    """An exporter that writes the same wrong value into every file (the artifact, bundle.json,
    tokenizer_config.json): the files agree with each other, so only verify's values re-derived
    from the source (its config, its own tokenizer) see it. An extra stop id (the tokenizer's EOS
    still among them: a real token that would end answers early), a flipped BOS policy, another
    chat template. Each is refused in one line before anything is scored."""
    import dataclasses

    from faults import harness

    from mobilellm_export.checkpoints import load
    from mobilellm_export.quant.recipe import load_recipe
    from mobilellm_export.text.tokenizer import Tokenizer
    from mobilellm_export.verify import metadata

    _, folder = hf_models("tiny-r1")
    req = dict(source=str(folder), tokenizer=str(hf_tiny.TOKENIZER), checking=pipeline.Checking(latency=False))

    def refused(bundle: Path, match: str) -> None:
        m = _manifest(bundle)
        meta = metadata.derive(bundle, m, backends.of_bundle(m))
        assert all(c["ok"] for c in meta), [c for c in meta if not c["ok"]]  # consistent: the files agree
        with pytest.raises(UserError, match=match) as e:
            pipeline.open_bundle(pipeline.VerifyRequest(str(bundle), **req), Progress(quiet=True))
        assert "\n" not in str(e.value)

    right = pipeline.export_spec
    monkeypatch.setattr(pipeline, "export_spec", lambda *a, **k: dataclasses.replace(
        right(*a, **k), eos_ids=(*right(*a, **k).eos_ids, 5)))
    rec, tgt = load_recipe("fp32"), backends.get(target)
    eos, _ = pipeline.export(load(str(folder), tokenizer=str(hf_tiny.TOKENIZER)), rec, tgt, out=str(tmp_path / "eos"),
                             max_context=MAX_CONTEXT, max_seq_len=MAX_SEQ_LEN, checking=pipeline.Checking(
                                 eval_tokens=EVAL_TOKENS, latency=False, threads=2),
                             thresholds=pipeline.thresholds_for(rec, tgt), progress=Progress(quiet=True),
                             do_verify=False)
    monkeypatch.undo()
    assert _manifest(eos)["generation"]["eos_ids"] == [2, 5]
    facts = tgt.metadata(eos, _manifest(eos))
    assert facts is None or facts["eos_ids"] == [2, 5]  # the artifact says the same
    # named where bundle.json first records the stop ids (the prompt format's copy, then eos_ids)
    refused(eos, r"generation\.(prompt_format\.stop\.ids|eos_ids) .*\[2, 5\] in bundle\.json, \[2\] derived")

    path, _ = bundles(target, "tiny-r1", "4bit", verify=True)  # the metadata test's bundle: one export less
    for case, edit, match in [
        ("bos", lambda cfg: cfg.update(add_bos_token=not Tokenizer.from_dir(path).bos_policy()["add"]),
         "its BOS/EOS flags differ"),
        ("template", lambda cfg: cfg.update(chat_template="{% for m in messages %}{{ m['content'] }}</s>{% endfor %}"),
         "its chat template differ"),
    ]:
        copy = tmp_path / case / path.name
        shutil.copytree(path, copy)
        cfg = json.loads((copy / "tokenizer_config.json").read_text())
        edit(cfg)
        (copy / "tokenizer_config.json").write_text(json.dumps(cfg))
        tok, m = Tokenizer.from_dir(copy), _manifest(copy)
        m["generation"].update(bos=tok.bos_policy(m["config"].get("bos_token_id")), chat_template=tok.chat_template)
        (copy / "bundle.json").write_text(json.dumps(m))
        harness.rehash(copy)
        refused(copy, match)


def _cli_export(folder: Path, target: str, out: Path) -> Path:
    from test_sources import run_cli

    r = run_cli("export", "--model", str(folder), "--tokenizer", str(hf_tiny.TOKENIZER), "--target", target,
                "--quant", "4bit", "--max-context", str(MAX_CONTEXT), "--max-seq-len", str(MAX_SEQ_LEN),
                "--no-verify", "--out", str(out), "--quiet", timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    (bundle,) = [p for p in out.iterdir() if (p / "bundle.json").is_file()]
    return bundle


def _differences(a: Path, b: Path) -> list[str]:
    """Files that differ between two bundles, the report (dates; a verification's plots) aside, and
    what only a verified export adds (the reference logits for --quick, and their manifest entries).
    The manifest could miss a file, so every file is compared, not only those bundle.json lists."""
    def files(d):
        return {p.relative_to(d).as_posix() for p in d.rglob("*")
                if p.is_file() and not p.name.startswith("report") and p.name != quick.FILE}

    def content(d, f):
        if f != "bundle.json":
            return (d / f).read_bytes()
        m = _manifest(d)
        m.pop("quick_check", None)
        m["files"].pop(quick.FILE, None)
        return m

    fa, fb = files(a), files(b)
    return sorted((fa ^ fb) | {f for f in fa & fb if content(a, f) != content(b, f)})


@pytest.mark.parametrize("target", TARGETS)
def test_two_exports_are_byte_identical(target, bundles, hf_models, tmp_path):
    """An export in its own process, as a user runs it, writes the same bytes as another. The other is
    this suite's export of the same model when that matches (it was built in a worker that lowered
    other models before); where repeated exports in one process differ (Core ML's do, cause not yet
    traced: docs/bundle-format.md), a second export in its own process."""
    _, folder = hf_models("tiny-r1")
    a = _cli_export(folder, target, tmp_path / "cli")
    assert sorted(p.name for p in a.glob("report*")) == ["report.json", "report.md"]
    assert "not verified" in (a / "report.md").read_text()  # --no-verify says so instead of PASS
    b, _ = bundles(target, "tiny-r1", "4bit", verify=True)  # the metadata test's bundle
    if _differences(a, b):
        b = _cli_export(folder, target, tmp_path / "cli2")
    assert _differences(a, b) == []


@pytest.mark.parametrize("target", TARGETS)
def test_a_seeded_lowering_fault_fails_verification(target, bundles):
    _, rep = bundles(target, "tiny-r1", "4bit", verify=True, fault=0)
    assert rep["passed"] is False
    failed = [c["name"] for c in rep["checks"] if not c["ok"]]
    assert any(c["suite"] == "lowering" and not c["ok"] for c in rep["checks"]), failed


def _quick(bundle: Path) -> dict:
    return pipeline.verify_command(pipeline.VerifyRequest(str(bundle), quick=True), Progress(quiet=True))


@pytest.mark.parametrize("target", TARGETS)
def test_quick_verify_catches_an_artifact_swapped_after_export(target, bundles, tmp_path):
    """`verify --quick` passes the lowering of the bundle as exported, reproducing the export's own
    numbers on the stored positions, and fails a copy whose artifact was replaced by a faulty
    lowering of the same model with every hash rewritten (what --quick is for: the artifact changed,
    the references did not). (Random tiny weights miss the recipe's absolute quality bounds, in the
    export's own verification as here: only the lowering checks decide.)"""
    good, exported = bundles(target, "tiny-r1", "4bit", verify=True)
    rep = _quick(good)
    lowering = [c for c in rep["gate"]["checks"] if c["suite"] == "lowering"]
    assert lowering and all(c["ok"] for c in lowering), lowering
    for pair, kl in rep["quick"]["export_kl"].items():  # the same artifact, runtime and positions
        assert rep["parity"][pair]["kl_mean"] == pytest.approx(kl, rel=1e-3, abs=1e-7), pair
        # the eval is one window here, so top-1 (exact from the stored argmax) is the export's
        assert rep["parity"][pair]["top1"] == exported["parity"][pair]["top1"], pair
    faulty, _ = bundles(target, "tiny-r1", "4bit", verify=True, fault=0)  # the seeded-fault test's bundle
    swapped = tmp_path / good.name
    shutil.copytree(good, swapped)
    m, mf = _manifest(swapped), _manifest(faulty)
    artifact = [f for f in mf["files"] if f != quick.FILE and not f.startswith("tokenizer")]
    for f in list(m["files"]):
        if f in artifact or f.startswith(m["target"]["entry"].rstrip("/") + "/"):
            (swapped / f).unlink()
            del m["files"][f]
    for f in artifact:
        (swapped / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(faulty / f, swapped / f)
        m["files"][f] = mf["files"][f]  # hashes "rewritten": the faulty artifact's own
    (swapped / "bundle.json").write_text(json.dumps(m, indent=2, sort_keys=True))
    rep = _quick(swapped)
    assert rep["passed"] is False
    assert [c for c in rep["gate"]["checks"] if c["suite"] == "lowering" and not c["ok"]], rep["gate"]["checks"]


@pytest.mark.parametrize("target", TARGETS)
def test_probe_localises_the_artifact(target, hf_models):
    """The localiser works for every target: a clean lowering has no divergent op, and the seeded
    fault (one layer's MLP down-projection) is named at its layer's MLP."""
    from mobilellm_export.checkpoints import build_model, load
    from mobilellm_export.quant.quantize import quantize
    from mobilellm_export.quant.recipe import load_recipe
    from mobilellm_export.verify.localise import localise

    from conftest import calib

    tgt = backends.get(target)
    ck = load(str(hf_models("tiny-r1")[1]), tokenizer=str(hf_tiny.TOKENIZER))
    model = build_model(ck, MAX_CONTEXT)
    quantize(model, load_recipe("4bit"), calib(model))
    reference = tgt.reference(model)
    spec = backends.ExportSpec(config=model.cfg, max_context=MAX_CONTEXT, max_seq_len=MAX_SEQ_LEN, eos_ids=(2,),
                               bos_id=1)
    toks = _tokens(48, seed=3)
    clean = localise(tgt, reference, spec, toks)
    assert clean is not None, f"target {target} cannot probe its artifact (Target.probe returned None)"
    assert clean["first"] is None, clean["message"]

    class Faulty(type(tgt)):
        def prepare(self, reference, spec):
            return self.seeded_fault(reference, super().prepare(reference, spec), 0)

    faulty = Faulty(**tgt.options)
    found = localise(faulty, reference, spec, toks)
    layer = int(torch.randint(0, model.cfg.n_layers, (1,), generator=torch.Generator().manual_seed(0)))
    assert found["first"] is not None and found["layer"] == layer and found["op"] == "mlp", found["message"]
