"""4bit-auto (quant/auto.py) and the calibration CLI paths: plans fit their budget, spend it on the
blocks measured most sensitive, lower like any recipe, and verify rebuilds them without searching."""

import copy
import dataclasses
import json

import pytest
import torch

from conftest import calib

from mobilellm_export.presets import PRESETS
from mobilellm_export.errors import UserError
from mobilellm_export.model import Transformer, random_weights
from mobilellm_export.quant import auto, calibrate
from mobilellm_export.quant.quantize import quantize
from mobilellm_export.quant.recipe import Recipe, load_recipe
from mobilellm_export.quant.size import block_linears, estimate_bytes
from test_sources import assert_one_line_error, run_cli

CFG = dataclasses.replace(PRESETS["tiny-llama"], n_layers=3, hidden_dim=256)
WINS = [[(7 * i + 3 * j) % 500 + 3 for j in range(48)] for i in range(2)]


@pytest.fixture(scope="module")
def model():
    m = Transformer(CFG, max_context=64).eval()
    m.load_weights(random_weights(CFG, 0))
    names = {f"layers.{i}.{n}" for i in range(CFG.n_layers) for n in block_linears(CFG)} | {"lm_head"}
    H = calibrate.hessians(m, WINS, names)
    m.sens = auto.sensitivity(m, load_recipe("4bit-auto"), CFG, H, WINS)  # measured once for the module
    return m


def _search(model, budget_mb):
    r = dataclasses.replace(load_recipe("4bit-auto"), auto=dataclasses.replace(load_recipe("4bit-auto").auto,
                                                                               size_mb=budget_mb))
    return auto.plan(r, CFG, model.sens, budget_mb * 1e6)


def _block_bytes(opt):
    base = load_recipe("4bit-auto").linear
    return sum(auto.weight_bytes(n, k, auto.option_quant(base, opt)) for n, k in block_linears(CFG).values())


def test_plans_fit_the_budget_and_more_budget_buys_less_kl(model):
    plain = estimate_bytes(CFG, load_recipe("4bit"))
    prev = None
    for extra in (0.0, _block_bytes("8:0") - _block_bytes("4:32"), 1e6):
        r, facts = _search(model, (plain + extra) / 1e6)
        assert facts["weights_mb"] * 1e6 <= plain + extra + 1
        assert abs(estimate_bytes(CFG, r) / 1e6 - facts["weights_mb"]) < 1e-3  # the recipe says what was planned
        if prev is not None:
            assert facts["predicted_kl_sum"] <= prev + 1e-9
        prev = facts["predicted_kl_sum"]
    # an ample budget: every block and the head at their best format
    assert facts["kept_8bit"] == ["layers.0", "layers.1", "layers.2", "lm_head"] and facts["head"] == "8:0"


def test_one_8bit_block_goes_to_the_most_sensitive_block(model):
    # Room for exactly one block at 8 bits beside two at 4-bit g32 (or more blocks at g128).
    room = estimate_bytes(CFG, load_recipe("4bit")) + _block_bytes("8:0") - _block_bytes("4:32")
    r, facts = _search(model, room / 1e6)
    gain = {b["item"]: b["kl_alone"]["4:32"] - b["kl_alone"]["8:0"] for b in facts["plan"] if b["item"] != "lm_head"}
    best = max(gain, key=gain.get)  # blocks cost the same: the budget goes where 8 bits gain most
    assert best in facts["kept_8bit"] and len(facts["kept_8bit"]) <= CFG.n_layers
    assert any(o["match"] == f"{best}.*" and o["bits"] == 8 for o in r.overrides)


def test_resolved_plan_round_trips_and_quantizes_block_by_block(model):
    r, facts = _search(model, (estimate_bytes(CFG, load_recipe("4bit")) + _block_bytes("8:0")) / 1e6)
    back = Recipe.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back.auto.resolved and back.overrides == r.overrides
    m = copy.deepcopy(model)
    quantize(m, back, calib(m))
    for i in range(CFG.n_layers):
        w = m.get_submodule(f"layers.{i}.mlp.up_proj").weight
        eight = f"layers.{i}" in facts["kept_8bit"]
        assert (w.target_dtype == torch.int8) == eight  # 8 bits exactly where the plan said so


def test_a_budget_below_the_smallest_plan_is_one_error(model):
    with pytest.raises(UserError, match="smallest plan"):
        _search(model, 0.01)


@pytest.mark.parametrize("args,needle", [
    (["--quant", "4bit", "--size-mb", "90"], "has no [auto] table"),
    (["--quant", "4bit-auto"], "give --size-mb"),
    (["--quant", "4bit-fast", "--calib-text", "README.md"], "uses no calibration"),
])
def test_calibration_and_budget_flags_fail_in_one_line(tiny_tokenizer, tmp_path, args, needle):
    r = run_cli("--model", "tiny-llama", "--tokenizer", str(tiny_tokenizer), "--out", str(tmp_path), *args)
    assert_one_line_error(r, needle)
    assert not any(tmp_path.iterdir())


@pytest.mark.extra  # ~2 min: moved out of CI's budget (make test-all runs it)
def test_auto_export_with_user_calibration_text_verifies_and_rebuilds_the_same_integers(tiny_tokenizer, tmp_path):
    """One tiny export covers: --calib-text pinned by sha256, a 4bit-auto plan lowered with mixed
    formats, verify re-applying the recorded plan to the very same integers, and a changed text."""
    text = tmp_path / "calib.txt"
    text.write_text(calibrate.read_text(None)[0][:20000], encoding="utf-8")
    out = tmp_path / "out"
    r = run_cli("--model", "tiny-llama", "--tokenizer", str(tiny_tokenizer), "--quant", "4bit-auto", "--size-mb", "1",
                "--out", str(out), "--calib-text", str(text), "--max-context", "64", "--max-seq-len", "16",
                "--eval-tokens", "128", "--no-latency", "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    d = out / "tiny-llama-android-4bit-auto"
    recipe = json.loads((d / "bundle.json").read_text())["recipe"]
    assert recipe["calibration"]["text"] == str(text.resolve()) and len(recipe["calibration"]["text_sha256"]) == 64
    assert rep["quantization"]["calibration"]["text"] == str(text)
    # 1 MB is ample for this model: every block at 8 bits, recorded as overrides
    assert recipe["auto"]["resolved"] and {o["match"] for o in recipe["overrides"] if o["bits"] == 8} == {
        "layers.0.*", "layers.1.*"}
    checks = {c["name"]: c for c in rep["gate"]["checks"]}
    assert checks["artifact MB within --size-mb"]["status"] == "pass"
    assert "4bit-auto plan" in (d / "report.md").read_text()
    v = run_cli("verify", str(d), "--eval-tokens", "128", "--no-latency", "--json", "--quiet")
    assert v.returncode == 0, v.stderr
    checks = {c["name"]: c for c in json.loads(v.stdout)["gate"]["checks"]}
    assert checks["reference integers"]["status"] == "pass"  # seeded calibration, recorded plan: same integers
    text.write_text("a different text " * 2000, encoding="utf-8")
    assert_one_line_error(run_cli("verify", str(d), "--eval-tokens", "128", "--no-latency", "--quiet"),
                          "sha256 differs")
