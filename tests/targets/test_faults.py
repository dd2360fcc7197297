"""The seeded-fault suite (tests/faults): each fault really corrupts what the artifact computes or
says, never the reference it is judged against, and the gate catches the gross ones.

Fast: every `prepare` fault against a clean `prepare` of the same quantized tiny R1 model (eager,
no lowering), and the `file` faults on a bundle written by a stub target. `slow` (CI): three
representative faults, one per level, through export + gate on a 2-layer model. `extra`: every
fault through the gate on the 4-layer model (benchmarks/gate_faults.py runs the same with the
clean false-alarm cases and writes the catch rate).
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from faults import BY_NAME, FAULTS, harness

from conftest import calib

from mobilellm_export.backends import Artifact, ExportSpec, Target
from mobilellm_export.backends.executorch.xnnpack import Android

MAX_CONTEXT = 64
LEVELS = ("prepare", "export", "file")
PREPARE = [f for f in FAULTS if f.level == "prepare"]
EXPORT = [f for f in FAULTS if f.level == "export"]
FILE = ["tokenizer_from_other_model", "bos_policy_flipped"]  # each with its expected effect below
# The spec fields whose lie bundle.json does not repeat (FaultyAndroid.export restores them there).
PTE_ONLY = {"eos_ids": "get_eos_ids", "max_seq_len": "get_max_seq_len", "max_context": "get_max_context_len"}


def test_every_fault_is_well_formed_and_exercised_here():
    """What the catalogue must hold for the gate's catch rate to mean anything: unique names; each
    fault a known level and severity, a description, a shipped recipe; a gross fault (one the gate
    must catch) at every level; near faults only where a dial exists (prepare); and every fault
    reached by a fast test of this file, so none is applied only in the slow runs."""
    from mobilellm_export.quant.recipe import available

    names = [f.name for f in FAULTS]
    assert len(set(names)) == len(names) and set(BY_NAME) == set(names)
    for f in FAULTS:
        assert f.level in LEVELS and f.severity in ("gross", "near"), f
        assert f.description.strip() and callable(f.apply), f
        assert f.recipe in available(), f
    assert {f.level for f in FAULTS if f.severity == "gross"} == set(LEVELS)
    assert {f.level for f in FAULTS if f.severity == "near"} == {"prepare"}
    # every fault has a fast test: prepare faults by PREPARE, export by EXPORT, file faults by FILE
    assert {f.name for f in FAULTS if f.level == "file"} == set(FILE)
    assert len(PREPARE) + len(EXPORT) + len(FILE) == len(FAULTS)


@pytest.mark.parametrize("fault", EXPORT, ids=lambda f: f.name)
def test_export_fault_lies_in_the_artifact_alone(fault, monkeypatch, tmp_path):
    """An export fault hands the lowering another spec (what the .pte's constant methods then say),
    while bundle.json's record stays the clean spec's: the lie is between the two files, where the
    metadata checks look. A fault that changed both, or neither, would be invisible to them."""
    from mobilellm_export.presets import PRESETS

    spec = ExportSpec(config=PRESETS["tiny-r1"], max_context=MAX_CONTEXT, max_seq_len=32, eos_ids=(2, 3), bos_id=1)
    lowered = []

    def fake_export(self, model, s, out_dir, status=lambda msg: None):  # what Android.export records
        lowered.append(s)
        return Artifact(files=["model.pte"], entry="model.pte", manifest={"constant_methods": {
            "get_eos_ids": list(s.eos_ids), "get_max_seq_len": s.max_seq_len,
            "get_max_context_len": s.max_context, "get_vocab_size": s.config.vocab_size}})

    monkeypatch.setattr(Android, "export", fake_export)
    art = harness.FaultyAndroid(fault).export(None, spec, tmp_path)
    (told,) = lowered
    changed = {k for k in PTE_ONLY if getattr(told, k) != getattr(spec, k)}
    assert changed, f"{fault.name} changes nothing the artifact is told"
    assert all(getattr(told, k) == getattr(spec, k) for k in ("config", "bos_id", "threads"))
    methods = art.manifest["constant_methods"]
    assert {k: methods[m] for k, m in PTE_ONLY.items()} == {"eos_ids": [2, 3], "max_seq_len": 32,
                                                           "max_context": MAX_CONTEXT}  # the truth


@pytest.fixture(scope="module")
def tiny_src(tmp_path_factory):
    return harness.tiny_r1_dir(tmp_path_factory.mktemp("faults") / "tiny-r1-hf")


@pytest.fixture(scope="module")
def references(tiny_src):
    """recipe -> (quantized eager reference of the tiny R1 folder, its ExportSpec), built as export does."""
    from mobilellm_export.checkpoints import build_model
    from mobilellm_export.quant.quantize import quantize
    from mobilellm_export.quant.recipe import load_recipe
    from mobilellm_export.checkpoints import load

    built = {}

    def get(recipe):
        if recipe not in built:
            ck = load(str(tiny_src))
            model = build_model(ck, MAX_CONTEXT)
            quantize(model, load_recipe(recipe), calib(model))
            built[recipe] = model, ExportSpec(config=model.cfg, max_context=MAX_CONTEXT, max_seq_len=32,
                                              eos_ids=(2,), bos_id=1)
        return built[recipe]
    return get


TOKENS = torch.randint(0, 512, (1, 48), generator=torch.Generator().manual_seed(0))


def _logits(model) -> torch.Tensor:
    model.full_logits = True  # prepared copies return the last position only; compare all of them
    with torch.no_grad():
        return model(TOKENS, torch.tensor([0]))[0]


@pytest.mark.parametrize("fault", PREPARE, ids=lambda f: f.name)
def test_prepare_fault_changes_the_prepared_model_and_not_the_reference(fault, references):
    ref, spec = references(fault.recipe)
    modules = [id(m) for m in ref.modules()]
    before = _logits(ref)
    clean = _logits(Android().prepare(ref, spec))
    faulty = _logits(harness.FaultyAndroid(fault).prepare(ref, spec))
    again = _logits(Android().prepare(ref, spec))
    # The prepared copy shares the reference's tensors: a fault must replace, never write into them.
    assert torch.equal(_logits(ref), before) and [id(m) for m in ref.modules()] == modules
    assert torch.equal(again, clean)  # ... nor into what the next clean prepare starts from
    # Logits spread with std ~4 on these weights: the smallest fault still moves them by > 0.3 %.
    err = (faulty - clean).abs()
    assert err.mean() > 0.01 and err.max() > 0.1, (fault.name, float(err.mean()), float(err.max()))


def test_a_fault_that_needs_another_model_says_so(references):
    ref, spec = references("4bit")  # 8-bit shared embedding: there are no nibbles to flip
    with pytest.raises(ValueError, match="4bit-fast"):
        harness.FaultyAndroid(BY_NAME["embedding_nibbles_flipped"]).prepare(ref, spec)


class StubTarget(Target):
    """A target whose artifact is a few bytes: a real bundle (tokenizer, bundle.json) in a second."""
    name, runtime = "fault-stub", "none"

    def export(self, model, spec, out_dir, status=lambda msg: None):
        (Path(out_dir) / "weights.bin").write_bytes(bytes(16))
        return Artifact(files=["weights.bin"], entry="weights.bin")


@pytest.fixture(scope="module")
def stub_bundle(tiny_src, tmp_path_factory):
    path, _ = harness.export_bundle(str(tiny_src), tmp_path_factory.mktemp("stub"), "fp32", target=StubTarget(),
                                    verify=False)
    return path


@pytest.mark.parametrize("name", FILE)
def test_file_fault_passes_every_sha256_check_and_changes_what_the_app_reads(name, stub_bundle, tiny_src, tmp_path):
    from mobilellm_export import bundle as bundle_mod
    from mobilellm_export.text.tokenizer import Tokenizer
    from mobilellm_export.verify import metadata
    from mobilellm_export.text.corpus import SAMPLE

    b = tmp_path / stub_bundle.name
    shutil.copytree(stub_bundle, b)
    BY_NAME[name].apply(b)
    with pytest.raises(Exception, match="sha256"):  # the edit alone is what sha256 catches ...
        bundle_mod.check_files(b, bundle_mod.read_manifest(b))
    harness.rehash(b)
    m = bundle_mod.read_manifest(b)
    bundle_mod.check_files(b, m)  # ... re-hashed with the project's own writer, it is invisible to it
    checks = {c["name"]: c for c in metadata.derive(b, m, StubTarget())}
    failed = [n for n, c in checks.items() if not c["ok"]]
    old, new = Tokenizer.from_dir(stub_bundle), Tokenizer.from_dir(b)
    if name == "bos_policy_flipped":
        assert failed == ["BOS policy add"]
        assert (checks["BOS policy add"]["manifest"], checks["BOS policy add"]["derived"]) == (True, False)
    else:
        # A tokenizer of the same size and special ids: every metadata check that reads the
        # swapped files judges it on the swapped file's own values, and they agree with bundle.json
        # (only the comparison with the source's own tokenizer, below, sees it) ...
        assert new.vocab_size == old.vocab_size == 512
        assert (new.bos_id, new.eos_id) == (old.bos_id, old.eos_id) == (1, 2)
        reads_tokenizer = {"tokenizer vocabulary": 512, "BOS policy id": 1, "BOS policy text": "<s>",
                           "BOS policy add": True, "chat template": None}
        assert {n: checks[n]["derived"] for n in reads_tokenizer} == reads_tokenizer
        assert all(checks[n]["ok"] for n in reads_tokenizer) and checks["tokenizer fits the embedding table"]["ok"]
        # ... while the text the app feeds the model becomes other ids almost everywhere, and the
        # model's ids come back to the user as other text.
        text = SAMPLE.read_text()[:2000]
        a, z = old.encode(text, add_special_tokens=False), new.encode(text, add_special_tokens=False)
        same = sum(x == y for x, y in zip(a, z))
        assert same < 0.2 * min(len(a), len(z)), (same, len(a), len(z))
        assert new.decode(a) != old.decode(a)
    from mobilellm_export.checkpoints import own_tokenizer

    source = own_tokenizer(str(tiny_src))
    assert source[0] is not None, source
    assert metadata.tokenizer_is_sources(old, *source)["ok"]
    row = metadata.tokenizer_is_sources(new, *source)
    part = "BOS/EOS flags" if name == "bos_policy_flipped" else "vocabulary"  # the first part that differs
    assert not row["ok"] and f"its {part} differ" in row["message"], row


# ---- through the gate ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clean_2layer(tmp_path_factory):
    """A clean export + gate of a 2-layer R1-layout folder (4bit): the baseline the CI faults use."""
    d = tmp_path_factory.mktemp("faults-e2e")
    src = harness.tiny_r1_dir(d / "tiny-r1-2l", n_layers=2)
    bundle, rep = harness.export_bundle(str(src), d / "clean", "4bit")
    return bundle, rep


@pytest.mark.extra  # make test-all (benchmarks/gate_faults.py runs the whole catalogue); the conformance suite fails a seeded fault for every target
@pytest.mark.slow
def test_a_clean_bundle_passes_the_gate_against_its_own_baseline(clean_2layer):
    bundle, rep = clean_2layer
    assert rep["passed"], harness.failed_checks(rep)
    source = json.loads((bundle / "bundle.json").read_text())["source"]["id"]  # this test's own folder
    again = harness.verify_bundle(bundle, baseline=str(bundle / "report.json"), threads=2, source=source)
    assert again["passed"] and not harness.failed_checks(again)
    assert any(c["suite"] == "baseline" and c["status"] == "pass" for c in again["gate"]["checks"])


@pytest.mark.extra  # make test-all (benchmarks/gate_faults.py runs the whole catalogue); the conformance suite fails a seeded fault for every target
@pytest.mark.slow
@pytest.mark.parametrize("name,check", [
    ("eos_ids_wrong", "metadata: EOS ids"),  # export level: the .pte's own metadata lie
    # prepare level: the lowered arithmetic is wrong (a re-export: `extra`, to keep CI in budget)
    pytest.param("qk_norm_dropped", "quant->artifact kl_mean", marks=pytest.mark.extra),
    # file level, invisible to the metadata of the bundle's own files (test_file_fault_... above):
    # the comparison with the source's own tokenizer sees it, a failed check under --baseline
    ("tokenizer_from_other_model", "metadata: tokenizer is the source's"),
    ("bos_policy_flipped", "metadata: BOS policy add"),  # file level: a failed check under --baseline, not a refusal
])
def test_representative_gross_fault_is_caught_by_a_named_check(name, check, clean_2layer, tmp_path):
    bundle, _ = clean_2layer
    row = harness.run_fault(BY_NAME[name], bundle / "report.json", tmp_path)
    assert row["crashed"] is None and row["refused"] is None, row
    assert row["caught"] and row["artifact_runs_here"], row
    assert check in row["caught_by"], row
    if name == "eos_ids_wrong":
        from mobilellm_export.bundle import read_manifest
        from mobilellm_export.backends.executorch.pte_file import constant_methods

        out = tmp_path / bundle.name
        want = read_manifest(out)["generation"]["eos_ids"]
        assert constant_methods(out / "model.pte")["get_eos_ids"] == [e + 1 for e in want]
    if name == "qk_norm_dropped":
        assert row["localise"] == "layers.0.self_attn", row  # where the fault first acts


@pytest.fixture(scope="module")
def clean_4layer(tmp_path_factory):
    """recipe -> clean report of the 4-layer R1-layout folder (the benchmark's model)."""
    d = tmp_path_factory.mktemp("faults-extra")
    src = harness.tiny_r1_dir(d / "tiny-r1-hf")
    done = {}

    def get(recipe):
        if recipe not in done:
            bundle, _ = harness.export_bundle(str(src), d / f"clean-{recipe}", recipe)
            done[recipe] = bundle / "report.json"
        return done[recipe]
    return get


@pytest.mark.extra
@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name)
def test_every_fault_through_the_gate(fault, clean_4layer, tmp_path):
    row = harness.run_fault(fault, clean_4layer(fault.recipe), tmp_path)
    assert row["crashed"] is None, row
    if fault.severity == "gross":
        assert row["caught"], row
    # near-threshold faults: which are caught is measured (benchmarks/gate_faults.py), not required


# ---- faults in the shared path (faults/shared.py; benchmarks/shared_path_faults.py runs them) -------

@pytest.fixture(scope="module")
def shared_sources(tmp_path_factory):
    """The benchmark's sources: the R1-layout folder (its tokenizer_config.json says add_bos_token) and a
    tiny llama GGUF (Q/K permuted as llama.cpp writes them)."""
    from test_gguf_source import write_gguf

    gguf = tmp_path_factory.mktemp("shared-gguf") / "tiny.gguf"
    write_gguf(gguf, hidden=64, n_heads=2, n_kv=1)  # as the benchmark writes it
    return {"folder": (str(harness.tiny_r1_dir(tmp_path_factory.mktemp("shared") / "r1", n_layers=2)), None),
            "gguf": (str(gguf), None)}


def _observed(source: tuple[str, str | None], recipe: str) -> dict:
    """What a shared-path fault can change, built the way export builds it: the float model's
    weights and RoPE theta (the loader), the BOS policy bundle.json records, and every parameter
    of the quantized reference."""
    from mobilellm_export import pipeline
    from mobilellm_export.checkpoints import build_model, load
    from mobilellm_export.quant.quantize import reference_digest
    from mobilellm_export.quant.recipe import load_recipe

    ck = load(source[0], tokenizer=source[1])
    model = build_model(ck, MAX_CONTEXT)
    seen = {"float": reference_digest(model), "rope_theta": ck.config.rope_theta,
            "bos_add": ck.tokenizer.bos_policy(ck.config.bos_token_id)["add"]}
    seen["quantized"] = pipeline.quantize(model, load_recipe(recipe), calib(model, windows=4, length=32))["reference_sha256"]
    return seen


def test_every_shared_path_fault_changes_what_it_claims_and_restores_on_exit(shared_sources):
    """Each shared-path fault is live where the gate would meet it: a loader fault changes the float
    model (or the BOS policy) and so everything built from it; a quantize-side fault leaves the float
    model alone and changes the quantized reference. After its `with` block no trace is left: the
    clean observation is reproduced bit for bit."""
    from faults.shared import SHARED_FAULTS

    clean = {(f.source, f.recipe): _observed(shared_sources[f.source], f.recipe) for f in SHARED_FAULTS}
    for f in SHARED_FAULTS:
        base = clean[f.source, f.recipe]
        with f.active():
            seen = _observed(shared_sources[f.source], f.recipe)
        changed = {k for k in base if seen[k] != base[k]}
        if f.where == "loader":
            assert changed & {"float", "rope_theta", "bos_add"}, f.name
        else:
            assert changed == {"quantized"}, (f.name, changed)
        assert _observed(shared_sources[f.source], f.recipe) == base, f"{f.name} left a patch behind"
