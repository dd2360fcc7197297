"""Checkpoint sources (HF directory, hub, presets) and the one-line errors a user can cause."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from mobilellm_export.checkpoints.hf_config import from_hf_config
from mobilellm_export.presets import PRESETS
from mobilellm_export.errors import UserError
from mobilellm_export.model import Transformer, random_weights
from mobilellm_export.checkpoints import load

SHARED = __import__("pathlib").Path(__file__).resolve().parents[3] / "shared"


def r1_config(generation: int, n_layers=2, vocab=512) -> dict:
    """A MobileLLM-R1-layout config.json (tiny dims) as transformers 4.x or 5.x writes it."""
    d = {
        "architectures": ["Llama4ForCausalLM"], "model_type": "llama4_text", "vocab_size": vocab,
        "hidden_size": 64, "intermediate_size": 96, "intermediate_size_mlp": 128, "num_hidden_layers": n_layers,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5,
        "hidden_act": "silu", "attention_bias": False, "use_qk_norm": True, "no_rope_layers": [1] * n_layers,
        "num_local_experts": 0, "moe_layers": [], "tie_word_embeddings": True, "max_position_embeddings": 4096,
        "bos_token_id": 1, "eos_token_id": [2, 3], "torch_dtype": "float32", "attention_chunk_size": 32768,
    }
    if generation == 4:
        d.update(rope_theta=8e6, rope_scaling=None)
    else:
        d.update(rope_parameters={"rope_theta": 8e6, "rope_type": "default"},
                 layer_types=["chunked_attention"] * n_layers)
    return d


def r1_tensors(cfg) -> dict:
    """Random weights under the exact R1 tensor names of MODEL_FACTS (feed_forward, no lm_head)."""
    sd = random_weights(cfg, seed=7)
    out = {}
    for k, v in sd.items():
        k = k.replace(".mlp.", ".feed_forward.")
        out[k if k.startswith("lm_head") else "model." + k] = v.contiguous()
    return out


def write_r1_dir(path, generation=5, shards=1, config=None):
    raw = config or r1_config(generation)
    cfg = from_hf_config(raw)
    tensors = r1_tensors(cfg)
    assert "lm_head.weight" not in tensors and "model.layers.0.feed_forward.gate_proj.weight" in tensors
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(raw))
    if shards == 1:
        save_file(tensors, str(path / "model.safetensors"))
    else:
        names = sorted(tensors)
        parts = [names[i::shards] for i in range(shards)]
        wm = {}
        for i, part in enumerate(parts):
            fn = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({n: tensors[n] for n in part}, str(path / fn))
            wm.update({n: fn for n in part})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": wm}
        (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return tensors


@pytest.mark.parametrize("generation,shards", [(4, 1), (5, 1), (5, 3)])
def test_r1_hf_directory_matches_transformers(tmp_path, generation, shards):
    from transformers import Llama4ForCausalLM

    write_r1_dir(tmp_path, generation, shards)
    ck = load(str(tmp_path))
    assert ck.kind == "hf" and ck.config.qk_norm and ck.config.rope_interleaved and ck.config.rope_theta == 8e6
    ours = Transformer(ck.config, max_context=64).eval()
    ours.load_weights(ck.state_dict)
    hf = Llama4ForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    tokens = torch.randint(0, 512, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (hf(tokens).logits - ours(tokens, torch.tensor([0]))).abs().max().item()
    assert diff <= 1e-4


def test_bin_weights_load_only_as_tensors(tmp_path):
    raw = r1_config(5)
    tensors = r1_tensors(from_hf_config(raw))
    (tmp_path / "config.json").write_text(json.dumps(raw))
    torch.save(tensors, tmp_path / "pytorch_model.bin")
    ck = load(str(tmp_path))
    assert torch.equal(ck.state_dict["layers.1.mlp.down_proj.weight"],
                       tensors["model.layers.1.feed_forward.down_proj.weight"])


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_malicious_pickle_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(r1_config(5)))
    torch.save({"x": _Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match="weights-only"):
        load(str(tmp_path))


def test_hub_download_uses_snapshot_download_with_allow_patterns(tmp_path, monkeypatch):
    import huggingface_hub

    write_r1_dir(tmp_path / "snap")
    seen = {}

    def fake_snapshot_download(repo_id, revision=None, cache_dir=None, allow_patterns=None):
        seen.update(repo_id=repo_id, allow=allow_patterns)
        return str(tmp_path / "snap")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    ck = load("facebook/MobileLLM-R1-140M")
    assert ck.kind == "hub" and seen["repo_id"] == "facebook/MobileLLM-R1-140M"
    assert "*.safetensors" in seen["allow"] and not any(p.endswith((".py", ".bin")) for p in seen["allow"])
    assert ck.config.qk_norm


def test_hub_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import importlib

    import huggingface_hub.constants

    importlib.reload(huggingface_hub.constants)
    try:
        with pytest.raises(UserError, match="no network"):
            load("facebook/MobileLLM-R1-140M")
    finally:
        monkeypatch.undo()
        importlib.reload(huggingface_hub.constants)


def test_preset_parameter_counts_match_model_facts():
    assert PRESETS["r1-140m"].param_count() == 140_248_512
    assert PRESETS["r1-360m"].param_count() == 359_431_168
    assert PRESETS["r1-950m"].param_count() == 949_685_760
    # MobileLLM v1 model card counts (rounded)
    assert round(PRESETS["mobilellm-125m"].param_count() / 1e6, 1) == 124.6
    assert round(PRESETS["mobilellm-1.5b"].param_count() / 1e9, 2) == 1.51
    # and the config count equals the real module's parameter count
    cfg = PRESETS["tiny-r1"]
    m = Transformer(cfg, max_context=8)
    assert sum(p.numel() for p in m.parameters()) == cfg.param_count()


# ---- CLI errors: one line, exit code 2, no traceback ----------------------------------------------

def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "mobilellm_export.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(r, needle):
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]  # library noise is captured: nothing else may show
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr


def _bad_dir(tmp_path, mutate):
    raw = r1_config(5)
    tensors = r1_tensors(from_hf_config(raw))
    mutate(raw, tensors)  # after the tensors were made: config and weights now disagree
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    save_file(tensors, str(tmp_path / "model.safetensors"))
    return str(tmp_path)


def _moe(raw, t):
    raw.update(num_local_experts=16, moe_layers=[0, 1])


def _unknown(raw, t):
    raw.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")


def _missing(raw, t):
    del t["model.layers.1.self_attn.k_proj.weight"]


def _extra(raw, t):
    t["model.layers.0.self_attn.q_norm.weight"] = torch.ones(16)


def _shape(raw, t):
    raw["intermediate_size_mlp"] = 256


@pytest.mark.parametrize("mutate,needle", [
    (_moe, "mixture-of-experts"), (_unknown, "unsupported architecture"), (_missing, "missing 1 tensor"),
    (_extra, "unexpected tensor"), (_shape, "has shape"),
])
def test_bad_checkpoints_fail_in_one_line(tmp_path, mutate, needle):
    d = _bad_dir(tmp_path / "m", mutate)
    assert_one_line_error(run_cli("inspect", d), needle)


def test_nonexistent_path_fails_in_one_line(tmp_path):
    assert_one_line_error(run_cli("inspect", str(tmp_path / "nope")), "no such file or directory")


def test_truncated_safetensors_fails_in_one_line(tmp_path):
    d = tmp_path / "m"
    write_r1_dir(d)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert_one_line_error(run_cli("inspect", str(d)), "truncated")
