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
    """One block's linears in format `opt` ("bits:group"), by hand from the shapes: integers at
    bits/8 bytes, plus a bf16 scale per group or an fp32 one per row (group 0). Rows here are 64 or
    256 wide (powers of two): a group wider than its row is the row (g128 on 64 columns is g64)."""
    bits, group = (int(x) for x in opt.split(":"))
    return sum(n * k * bits / 8 + (n * (k // min(group, k)) * 2 if group else n * 4)
               for n, k in block_linears(CFG).values())


# A hand-worked plan: three blocks and the head, (KL alone, kB) per format. Each item's points are
# convex, so the Lagrangian's prices switch them in a known order (KL saved per kB): layers.0 4:128
# -> 4:32 at 10/kB, head 4:32 -> 8:0 at 2.5, layers.0 4:32 -> 8:0 at 2.11, layers.2 4:128 -> 4:32 at
# 2, layers.1 at 1, layers.2 4:32 -> 8:0 at 0.67, layers.1 at 0.11 (x 1e-3): plans of 600, 610, 810,
# 900, 910, 920, 1010 and 1100 kB, each the least KL at its own size (checked by enumeration below).
HAND = {"layers.0": {"4:128": (0.30, 100), "4:32": (0.20, 110), "8:0": (0.01, 200)},
        "layers.1": {"4:128": (0.05, 100), "4:32": (0.04, 110), "8:0": (0.03, 200)},
        "layers.2": {"4:128": (0.10, 100), "4:32": (0.08, 110), "8:0": (0.02, 200)},
        "lm_head": {"8:0": (0.0, 500), "4:32": (0.5, 300)}}


def _hand_sens():
    return {"items": [{"item": it, "options": {o: {"kl": kl, "bytes": kb * 1000} for o, (kl, kb) in opts.items()}}
                      for it, opts in HAND.items()], "trial_tokens": 96, "seconds": 0.0}


def _best_by_enumeration(budget_kb):
    import itertools

    plans = [(sum(HAND[it][o][0] for it, o in zip(HAND, ch)), ch) for ch in itertools.product(*HAND.values())
             if sum(HAND[it][o][1] for it, o in zip(HAND, ch)) <= budget_kb]
    return min(plans)


@pytest.mark.parametrize("budget_kb,formats,kl", [
    (600, ["4:128", "4:128", "4:128", "4:32"], 0.95),  # the smallest plan: the head at 4 bits too
    (810, ["4:32", "4:128", "4:128", "8:0"], 0.35),  # the head's 8 bits first, then layers.0's g32
    (900, ["8:0", "4:128", "4:128", "8:0"], 0.16),  # layers.0 gains most from 8 bits
    (1010, ["8:0", "4:32", "8:0", "8:0"], 0.07),
    (1100, ["8:0", "8:0", "8:0", "8:0"], 0.06),  # ample: every item at its best
])
def test_hand_worked_plan(budget_kb, formats, kl):
    """plan() on a sensitivity table worked by hand (not measured): the formats, the bytes, the
    predicted KL and the recipe it resolves to are the hand answers, and the least KL any plan
    within the budget has (enumerating all 54)."""
    recipe = load_recipe("4bit-auto")
    assert (recipe.linear.bits, recipe.linear.group_size) == (4, 32)  # the base format the overrides leave
    r, facts = auto.plan(recipe, CFG, _hand_sens(), budget_kb * 1000)
    assert [b["format"] for b in facts["plan"]] == formats
    best_kl, best_formats = _best_by_enumeration(budget_kb)
    assert best_formats == tuple(formats) and best_kl == pytest.approx(kl)
    assert facts["predicted_kl_sum"] == pytest.approx(kl)
    assert facts["predicted_kl_sum_base"] == pytest.approx(0.20 + 0.04 + 0.08 + 0.0)  # 4:32 blocks, 8-bit head
    assert facts["weights_mb"] == pytest.approx(budget_kb / 1000)  # each budget is its plan's exact size
    assert facts["kept_8bit"] == [it for it, f in zip(HAND, formats) if f == "8:0"] and facts["head"] == formats[-1]
    want = [{"match": f"layers.{i}.*", "bits": int(f[0]), "group_size": int(f.split(":")[1]),
             "scale_dtype": "fp32" if f == "8:0" else "bf16"} for i, f in enumerate(formats[:3]) if f != "4:32"]
    assert list(r.overrides) == want and r.auto.resolved
    head_bits, head_group = (int(x) for x in formats[-1].split(":"))
    assert (r.head.bits, r.head.group_size) == (head_bits, head_group)
    assert (r.embedding.bits, r.embedding.group_size) == (head_bits, head_group)  # the tied lookup follows


def test_hand_worked_plan_below_the_smallest_is_one_error():
    with pytest.raises(UserError, match=r"smallest plan of recipe 4bit-auto needs 0\.6 MB"):
        auto.plan(load_recipe("4bit-auto"), CFG, _hand_sens(), 599_999)


def test_measured_sensitivities_cost_what_the_byte_model_says(model):
    """The bytes each trial records are the hand-computed sizes of its format (blocks alike)."""
    assert [it["item"] for it in model.sens["items"]] == ["layers.0", "layers.1", "layers.2", "lm_head"]
    for it in model.sens["items"][:-1]:
        got = {o: v["bytes"] for o, v in it["options"].items()}
        assert got == {o: _block_bytes(o) for o in ("4:128", "4:32", "8:0")}, it["item"]


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
    # from the measured table the plan is made from (its input), not from the plan
    gain = {it["item"]: it["options"]["4:32"]["kl"] - it["options"]["8:0"]["kl"]
            for it in model.sens["items"] if it["item"] != "lm_head"}
    best = max(gain, key=gain.get)  # blocks cost the same: the budget goes where 8 bits gain most
    assert best in facts["kept_8bit"]
    assert any(o["match"] == f"{best}.*" and o["bits"] == 8 for o in r.overrides)
    assert estimate_bytes(CFG, r) <= room


def test_resolved_plan_round_trips_and_quantizes_block_by_block(model):
    r, facts = _search(model, (estimate_bytes(CFG, load_recipe("4bit")) + _block_bytes("8:0")) / 1e6)
    back = Recipe.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back.auto.resolved and back.overrides == r.overrides
    # the blocks the recipe's overrides put at 8 bits (what quantize() is given), read from the dicts
    eight = {o["match"].removesuffix(".*") for o in back.overrides if o["bits"] == 8}
    assert 0 < len(eight) < CFG.n_layers, back.overrides  # both formats present: the check below can tell
    m = copy.deepcopy(model)
    quantize(m, back, calib(m))
    for i in range(CFG.n_layers):
        for name in block_linears(CFG):
            w = m.get_submodule(f"layers.{i}.{name}").weight
            assert (w.target_dtype == torch.int8) == (f"layers.{i}" in eight), (i, name)  # 8 bits exactly there


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
    # verify never opens the text path a bundle names (docs/threat-model.md): it is given again
    v = run_cli("verify", str(d), "--calib-text", str(text), "--eval-tokens", "128", "--no-latency", "--json",
                "--quiet")
    assert v.returncode == 0, v.stderr
    checks = {c["name"]: c for c in json.loads(v.stdout)["gate"]["checks"]}
    assert checks["reference integers"]["status"] == "pass"  # seeded calibration, recorded plan: same integers
    text.write_text("a different text " * 2000, encoding="utf-8")
    assert_one_line_error(run_cli("verify", str(d), "--calib-text", str(text), "--eval-tokens", "128",
                                  "--no-latency", "--quiet"), "sha256 differs")
