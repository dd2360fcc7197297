"""The seeded-fault suite (tests/faults): each fault really corrupts what the artifact computes or
says, never the reference it is judged against, and the gate catches the gross ones.

Fast: every `prepare` fault against a clean `prepare` of the same quantized tiny R1 model (eager,
no lowering), and the `file` faults on a bundle written by a stub target. `slow` (CI): three
representative faults, one per level, through export + gate on a 2-layer model. `extra`: every
fault through the gate on the 4-layer model (benchmarks/gate_faults.py runs the same with the
clean false-alarm cases and writes the catch rate).
"""

import shutil
from pathlib import Path

import pytest
import torch
from faults import BY_NAME, FAULTS, harness

from conftest import calib

from mobilellm_export.backends import Artifact, ExportSpec, Target
from mobilellm_export.backends.executorch.xnnpack import Android

MAX_CONTEXT = 64
PREPARE = [f for f in FAULTS if f.level == "prepare"]


def test_the_catalogue_has_16_distinct_faults_at_three_levels():
    from mobilellm_export.quant.recipe import available

    assert len(FAULTS) >= 16 and len(BY_NAME) == len(FAULTS)
    assert sum(f.severity == "near" for f in FAULTS) >= 4
    assert {f.level for f in FAULTS} == {"prepare", "export", "file"}
    assert {f.severity for f in FAULTS} == {"gross", "near"}
    assert {f.recipe for f in FAULTS} <= set(available())


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


@pytest.mark.parametrize("name", ["tokenizer_from_other_model", "bos_policy_flipped"])
def test_file_fault_passes_every_sha256_check_and_changes_what_the_app_reads(name, stub_bundle, tmp_path):
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
    failed = [c["name"] for c in metadata.derive(b, m, StubTarget()) if not c["ok"]]
    old, new = Tokenizer.from_dir(stub_bundle), Tokenizer.from_dir(b)
    if name == "bos_policy_flipped":
        assert failed == ["BOS policy add"]
    else:
        # Same size and special ids, so no metadata check sees it; the text becomes other ids.
        assert failed == [] and new.vocab_size == old.vocab_size == 512
        assert (new.bos_id, new.eos_id) == (old.bos_id, old.eos_id) == (1, 2)
        text = SAMPLE.read_text()[:2000]
        assert new.encode(text, add_special_tokens=False) != old.encode(text, add_special_tokens=False)


# ---- through the gate ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clean_2layer(tmp_path_factory):
    """A clean export + gate of a 2-layer R1-layout folder (4bit): the baseline the CI faults use."""
    d = tmp_path_factory.mktemp("faults-e2e")
    src = harness.tiny_r1_dir(d / "tiny-r1-2l", n_layers=2)
    bundle, rep = harness.export_bundle(str(src), d / "clean", "4bit")
    return bundle, rep


@pytest.mark.slow
def test_a_clean_bundle_passes_the_gate_against_its_own_baseline(clean_2layer):
    bundle, rep = clean_2layer
    assert rep["passed"], harness.failed_checks(rep)
    again = harness.verify_bundle(bundle, baseline=str(bundle / "report.json"), threads=2)
    assert again["passed"] and not harness.failed_checks(again)
    assert any(c["suite"] == "baseline" and c["status"] == "pass" for c in again["gate"]["checks"])


@pytest.mark.slow
@pytest.mark.parametrize("name,check", [
    ("eos_ids_wrong", "metadata: EOS ids"),  # export level: the .pte's own metadata lie
    # prepare level: the lowered arithmetic is wrong (a re-export: `extra`, to keep CI in budget)
    pytest.param("qk_norm_dropped", "quant->artifact kl_mean", marks=pytest.mark.extra),
    ("tokenizer_from_other_model", None),  # file level: only the scores can show it
    ("bos_policy_flipped", "metadata: BOS policy add"),  # file level: a failed check under --baseline, not a refusal
])
def test_representative_gross_fault_is_caught_by_a_named_check(name, check, clean_2layer, tmp_path):
    bundle, _ = clean_2layer
    row = harness.run_fault(BY_NAME[name], bundle / "report.json", tmp_path)
    assert row["crashed"] is None and row["refused"] is None, row
    assert row["caught"] and row["artifact_runs_here"], row
    if check:
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
