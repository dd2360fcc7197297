"""Quantization recipes and their application (eager, no export)."""

import copy
import dataclasses

import pytest
import torch

from conftest import calib

from mobilellm_export.presets import PRESETS
from mobilellm_export.errors import UserError
from mobilellm_export.model import Transformer, random_weights
from mobilellm_export.quant.quantize import TiedQuantEmbedding, effective_group, quantize
from mobilellm_export.quant.recipe import available, load_recipe, parse_recipe
from mobilellm_export.quant.size import estimate_bytes


@pytest.fixture(scope="module")
def tiny():
    torch.set_grad_enabled(False)
    cfg = PRESETS["tiny-llama"]
    m = Transformer(cfg, max_context=32).eval()
    m.load_weights(random_weights(cfg))
    return m


def test_shipped_recipes_parse():
    assert {"4bit", "4bit-fast", "8bit", "fp32"} <= set(available())
    r = load_recipe("4bit")
    assert (r.linear.bits, r.linear.group_size, r.linear.activations) == (4, 32, "int8_dynamic")
    assert (r.embedding.bits, r.head.bits) == (8, 8) and load_recipe("fp32").is_float


def test_tied_table_is_quantized_once_and_lookup_equals_head_rows(tiny):
    for name in ("4bit", "8bit", "4bit-fast"):
        q = copy.deepcopy(tiny)
        facts = quantize(q, load_recipe(name), calib(q))
        assert facts["tied_stored"] == "once" and isinstance(q.embed_tokens, TiedQuantEmbedding)
        tokens = torch.tensor([[0, 7, 511, 7]])
        assert torch.equal(q.embed_tokens(tokens), q.lm_head.weight.dequantize()[tokens])
        # the head really is quantized: its rows sit on the recipe's grid, not the float values
        assert not torch.equal(q.lm_head.weight.dequantize(), tiny.lm_head.weight)


def test_different_grids_for_lookup_and_head_store_two_tables(tiny):
    r = dataclasses.replace(load_recipe("4bit"), embedding=dataclasses.replace(load_recipe("4bit-fast").embedding))
    q = copy.deepcopy(tiny)
    assert quantize(q, r, calib(q))["tied_stored"] == "twice"
    assert not isinstance(q.embed_tokens, TiedQuantEmbedding)


def test_group_size_fallback_is_per_layer_and_reported():
    cfg = dataclasses.replace(PRESETS["tiny-llama"], hidden_dim=96)  # down_proj in_features 96: not / 64
    m = Transformer(cfg, max_context=16).eval()
    m.load_weights(random_weights(cfg))
    r = dataclasses.replace(load_recipe("4bit"), linear=dataclasses.replace(load_recipe("4bit").linear, group_size=64))
    facts = quantize(m, r, calib(m))
    fb = {f["layer"]: f["group_size"] for f in facts["fallbacks"]}
    assert fb == {"layers.0.mlp.down_proj": 32, "layers.1.mlp.down_proj": 32}
    assert m.layers[0].mlp.down_proj.weight.block_size[-1] == 32
    assert m.layers[0].mlp.up_proj.weight.block_size[-1] == 64
    assert effective_group(r.linear, 48) == 0  # nothing >= 32 divides 48: per channel


@pytest.mark.parametrize("text,needle", [
    ("[linear]\nbits = 4\ngroup_size = 7\n", "group_size = 7"),
    ("[embedding]\nactivations = 'int8_dynamic'\n", "embeddings take no activation"),
    ("[thresholds]\nkl = 1\n", "unknown key 'kl'"),
    ("[linear]\nscale_dtype = 'fp16'\n", "scale_dtype"),
])
def test_recipe_validation(text, needle):
    with pytest.raises(UserError, match=needle):
        parse_recipe(text, "bad")


def test_size_estimate_orders_recipes():
    cfg = PRESETS["r1-140m"]
    sizes = {n: estimate_bytes(cfg, load_recipe(n)) for n in ("fp32", "8bit", "4bit", "4bit-fast")}
    assert sizes["fp32"] > sizes["8bit"] > sizes["4bit"] > sizes["4bit-fast"]
    assert abs(sizes["fp32"] - cfg.param_count() * 4) < 1e6  # tied float table counted once


def test_recipe_round_trips_through_the_manifest_dict():
    from mobilellm_export.quant.recipe import Recipe

    for name in available():
        r = load_recipe(name)
        assert Recipe.from_dict(r.to_dict()) == r
