"""The Target interface: a target registered at run time goes through export and verify without
any change to the pipeline, and the pipeline, bundle, verify, run and CLI code name no target."""

import json
from pathlib import Path

import pytest
import torch

from mobilellm_export import backends
from mobilellm_export.console import Progress
from mobilellm_export.backends import Artifact, Target

class SafetensorsTarget(Target):
    """An eager fp32 'runtime': the artifact is the prepared model's weights in a safetensors file,
    its runner rebuilds the reference Transformer from the bundle's config and those weights."""
    name = "reference-st"
    runtime = "eager PyTorch (safetensors)"
    tools = ("safetensors",)

    def check(self, recipe, spec):
        from mobilellm_export.errors import UserError

        if not recipe.is_float:
            raise UserError(f"target {self.name} cannot honour recipe {recipe.name!r}: fp32 weights only")
        return ["weights stored as plain fp32 tensors"]

    def export(self, model, spec, out_dir, status=lambda msg: None):
        from safetensors.torch import save_file

        status("writing safetensors")
        sd = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        save_file(sd, str(Path(out_dir) / "weights.safetensors"))
        return Artifact(files=["weights.safetensors"], entry="weights.safetensors", manifest={"format": "safetensors"},
                        facts={"tensors": len(sd)})

    def runner(self, bundle_dir, manifest, threads=None):
        from safetensors.torch import load_file

        from mobilellm_export.config import ModelConfig
        from mobilellm_export.model import Transformer
        from mobilellm_export.runtimes.eager import EagerRunner

        cfg = ModelConfig(**{**manifest["config"], "rope_interleaved": False,  # exported after to_rotate_half
                             "rope_layers": tuple(manifest["config"]["rope_layers"] or ()) or None,
                             "eos_token_ids": tuple(manifest["config"]["eos_token_ids"])})
        sd = load_file(str(Path(bundle_dir) / manifest["target"]["entry"]))
        return EagerRunner(Transformer.from_weights(cfg, sd, manifest["generation"]["max_context"]), "artifact")


@pytest.fixture
def fake_target():
    backends.register(SafetensorsTarget.name, SafetensorsTarget)
    yield SafetensorsTarget.name
    backends._REGISTERED.pop(SafetensorsTarget.name)


def test_registered_target_exports_and_verifies_through_the_pipeline(fake_target, tmp_path, tiny_tokenizer):
    from mobilellm_export.pipeline import Checking, ExportRequest, VerifyRequest, export_command, verify_command

    assert fake_target in backends.names() and fake_target in list(backends.Names())
    path, rep = export_command(ExportRequest("tiny-llama", target=fake_target, quant="fp32", tokenizer=str(tiny_tokenizer),
                                             out=str(tmp_path), max_context=64, max_seq_len=16,
                                             checking=Checking(eval_tokens=128, latency=False, threads=1)),
                               Progress(quiet=True))
    assert path.name == "tiny-llama-reference-st-fp32"
    m = json.loads((path / "bundle.json").read_text())
    assert m["target"] == {"name": fake_target, "runtime": SafetensorsTarget.runtime, "entry": "weights.safetensors",
                           "format": "safetensors"}
    assert "weights.safetensors" in m["files"] and "safetensors" in m["tools"] and "executorch" not in m["tools"]
    from mobilellm_export.presets import PRESETS
    from mobilellm_export.model import expected_shapes

    assert rep["target_notes"] == ["weights stored as plain fp32 tensors"]
    assert rep["export"] == {"tensors": len(expected_shapes(PRESETS["tiny-llama"]))}
    # the artifact is the float model itself: parity is exact and greedy identical
    assert rep["parity"]["float_vs_artifact"]["max_abs_logit"] < 1e-4 and rep["passed"]
    assert rep["greedy"]["float_vs_artifact"]["common_prefix"] == 64 - 16  # what fits the 64-token context
    again = verify_command(VerifyRequest(str(path), checking=Checking(eval_tokens=64, latency=False, threads=1)),
                           Progress(quiet=True))
    assert again["passed"] and again["parity"]["quant_vs_artifact"]["max_abs_logit"] < 1e-4


def test_registered_target_rejects_a_recipe_it_cannot_honour(fake_target, tmp_path, tiny_tokenizer):
    from mobilellm_export.errors import UserError
    from mobilellm_export.pipeline import Checking, ExportRequest, export_command

    with pytest.raises(UserError, match="cannot honour recipe '4bit'"):
        export_command(ExportRequest("tiny-llama", target=fake_target, quant="4bit", tokenizer=str(tiny_tokenizer),
                                     out=str(tmp_path), max_context=64, max_seq_len=16,
                                     checking=Checking(eval_tokens=128, latency=False, threads=1)),
                       Progress(quiet=True))
    assert not any(tmp_path.iterdir())  # rejected before any work


def test_unknown_target_lists_the_registered_ones():
    from mobilellm_export.errors import UserError

    with pytest.raises(UserError, match="unknown target 'nope': choose one of android"):
        backends.get("nope")


def test_structural_copy_shares_weights_and_leaves_the_reference_alone():
    from mobilellm_export.presets import PRESETS
    from mobilellm_export.model import KVCacheAttention, Transformer, random_weights
    from mobilellm_export.backends.executorch.program import prepare

    cfg = PRESETS["tiny-r1"]
    ref = Transformer.from_weights(cfg, random_weights(cfg), max_context=32)
    prepared = prepare(ref)
    assert all(isinstance(c, KVCacheAttention) for c in ref.caches) and ref.full_logits
    assert prepared.layers[0].mlp.up_proj.weight is ref.layers[0].mlp.up_proj.weight
    tokens = torch.randint(0, cfg.vocab_size, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(tokens, torch.tensor([0]))[0, -1]
        got = prepared(tokens, torch.tensor([0]))[0, -1]
    assert (want - got).abs().max() <= 1e-5 * want.abs().max()
