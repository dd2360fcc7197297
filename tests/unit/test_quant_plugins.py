"""Quantization plugins (quant/registry.py): a distribution adds a rounding method, a scale search or
a transform by entry point, and recipes, quantize(), export and verify take it with no edit here.

The plugin is tests/plugins/rounding_plugin, installed with `pip install --target` into a temporary
directory that goes on sys.path (or PYTHONPATH): importlib.metadata reads entry points from there,
and the venv is never touched.
"""

import copy
import dataclasses
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mobilellm_export.checkpoints import build_model, load
from mobilellm_export.errors import UserError
from mobilellm_export.quant.quantize import quantize
from mobilellm_export.quant.recipe import Recipe, load_recipe, parse_recipe
from mobilellm_export.quant.rounding import ROUNDING, SCALES, grid
from mobilellm_export.quant.transforms import TRANSFORMS

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "rounding_plugin"
REGISTRIES = (ROUNDING, SCALES, TRANSFORMS)

# 8da8w per channel: the default [thresholds] hold even with a rounding worse than nearest
FLOOR = """
name = "floor8"
description = "8da8w per-channel linears rounded toward -inf (a plugin's method), int8 embedding and head"

[linear]
bits = 8
group_size = 0
activations = "int8_dynamic"
scale_dtype = "fp32"
rounding = "floor"

[embedding]
bits = 8
group_size = 0

[head]
bits = 8
group_size = 0
activations = "int8_dynamic"
scale_dtype = "fp32"
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """The plugin installed into a directory of its own (built from a copy: a build writes into its source)."""
    tmp = tmp_path_factory.mktemp("plugin")
    src, site = tmp / "src", tmp / "site"
    shutil.copytree(PLUGIN, src)
    subprocess.run([sys.executable, "-m", "pip", "install", "--target", str(site), "--no-deps",
                    "--no-build-isolation", "-q", str(src)], check=True, capture_output=True, timeout=300)
    return site


@pytest.fixture
def plugin(plugin_site):
    sys.path.insert(0, str(plugin_site))
    importlib.invalidate_caches()
    try:
        yield plugin_site
    finally:
        sys.path.remove(str(plugin_site))
        sys.modules.pop("floor_plugin", None)
        importlib.invalidate_caches()
        for r in REGISTRIES:
            r.forget_plugins()


@pytest.fixture(scope="module")
def tiny():
    return build_model(load("tiny-llama"), 32).eval()


def _calibrate(names):  # never called by these recipes: none of their parts reads Hessians
    raise AssertionError(f"calibration asked for {sorted(names)}")


def test_builtins_are_registered_and_unknown_names_fail_in_one_line():
    assert {"nearest", "gptq"} <= set(ROUNDING.names()) and {"minmax", "mse", "hqq"} <= set(SCALES.names())
    assert {"rotate", "smooth"} <= set(TRANSFORMS.names())
    assert ROUNDING.get("gptq").needs_hessian and not ROUNDING.get("nearest").needs_hessian
    with pytest.raises(UserError) as e:
        parse_recipe(FLOOR, "floor8")
    msg = str(e.value)
    assert "\n" not in msg and "'floor'" in msg and "gptq, nearest" in msg and "mobilellm_export.rounding" in msg
    # a recipe read back from a bundle names its methods too: a missing plugin fails before any work
    d = dataclasses.replace(load_recipe("4bit-fast"), name="floor8").to_dict()
    d["linear"]["rounding"] = "floor"
    with pytest.raises(UserError, match=r"recipe floor8 linear\.rounding: unknown rounding method 'floor'"):
        Recipe.from_dict(d)
    with pytest.raises(UserError, match=r"\[\[transform\]\] #1: unknown transform 'census'"):
        parse_recipe(FLOOR.replace('rounding = "floor"', "") + '[[transform]]\nname = "census"\n', "r")


def test_the_old_transform_keys_go_through_the_registry_unchanged():
    r = load_recipe("8bit")
    assert r.transform_steps() == [("rotate", {}), ("smooth", {"alpha": 0.3})]
    assert "transforms" not in r.to_dict()  # bundle.json as earlier versions wrote it
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    with pytest.raises(UserError, match="top-level key"):
        parse_recipe(FLOOR.replace('rounding = "floor"', "") + '[[transform]]\nname = "smooth"\n', "r")


def test_plugin_parts_are_listed_parse_and_change_the_integers(plugin, tiny):
    assert "floor" in ROUNDING.names() and "absmax" in SCALES.names() and "census" in TRANSFORMS.names()
    r = parse_recipe(FLOOR, "floor8")  # recipe.py knows nothing of "floor"
    assert r.linear.rounding == "floor" and not r.needs_calibration
    with pytest.raises(UserError, match="act_order"):  # floor does not say it reads act_order
        parse_recipe(FLOOR.replace('rounding = "floor"', 'rounding = "floor"\nact_order = true'), "r")
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r

    nearest = dataclasses.replace(r, linear=dataclasses.replace(r.linear, rounding="nearest"))
    m_floor, m_near = copy.deepcopy(tiny), copy.deepcopy(tiny)
    w = tiny.layers[0].mlp.down_proj.weight.detach().clone()
    f_floor, f_near = quantize(m_floor, r, _calibrate), quantize(m_near, nearest, _calibrate)
    assert f_floor["weights_sha256"] != f_near["weights_sha256"]
    assert f_floor["rounding"] == ["minmax+floor", "minmax+nearest"]  # the head keeps its own nearest
    t = m_floor.layers[0].mlp.down_proj.weight  # the plugin's integers are the ones serialised
    s = t.scale.float().reshape(-1, 1)
    assert torch.equal(t.qdata.float(), torch.floor(w * grid.inv(s, "fp32")).clamp(-128, 127))

    # a plugin scale search and a plugin transform, named the same way
    r2 = parse_recipe(FLOOR.replace('rounding = "floor"', 'scales = "absmax"')
                      + '[[transform]]\nname = "census"\nnote = "hi"\n', "absmax")
    assert r2.transform_steps() == [("census", {"note": "hi"})] and r2.to_dict()["transforms"] == [
        {"name": "census", "note": "hi"}]
    assert Recipe.from_dict(json.loads(json.dumps(r2.to_dict()))) == r2
    f2 = quantize(copy.deepcopy(tiny), r2, _calibrate)
    assert f2["census"] == {"linears": 15, "note": "hi"}  # identity transform: it only reports
    assert f2["rounding"] == ["absmax+nearest", "minmax+nearest"]
    assert f2["weights_sha256"] not in (f_floor["weights_sha256"], f_near["weights_sha256"])


def _cli(*args, site=None, timeout=600):
    env = dict(os.environ)
    paths = [str(site)] if site else []
    paths += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(site)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return subprocess.run([sys.executable, "-m", "mobilellm_export.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


