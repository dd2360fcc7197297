"""Rounding methods (quant/rounding.py), calibration (quant/calibrate.py) and their use by quantize().

References are independent: round-to-nearest written out here, the layer's output error on the
calibration inputs, torchao's own eager 8da4w linear, and the inputs captured directly.
"""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from conftest import calib

from mobilellm_export.presets import PRESETS
from mobilellm_export.errors import UserError
from mobilellm_export.model import Transformer, random_weights
from mobilellm_export.quant import calibrate, rounding
from mobilellm_export.quant.quantize import quantize
from mobilellm_export.quant.recipe import load_recipe, parse_recipe
from mobilellm_export.text.corpus import SAMPLE


@pytest.fixture(scope="module")
def tiny():
    cfg = PRESETS["tiny-llama"]
    m = Transformer(cfg, max_context=32).eval()
    m.load_weights(random_weights(cfg))
    return m


def _w(n=48, k=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    # heavy-tailed rows, as trained weights are: plain max scaling wastes levels on them
    return torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g) * (1 + torch.randn(n, k, generator=g) ** 4 / 50)


def _x(m=512, k=128, seed=1):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k ** 0.5 + torch.eye(k)  # correlated channels
    energy = torch.rand(k, generator=g) * 4  # and unequal ones
    return (torch.randn(m, k, generator=g) @ mix) * energy


def _rtn(w, s, bits, group):
    """Round-to-nearest on given bf16 scales, as torchao's quantize_affine does it (written independently)."""
    lo, hi = rounding.QRANGE[bits]
    n, k = w.shape
    inv = (1.0 / s.to(torch.bfloat16)).float()
    return (w.reshape(n, k // group, group) * inv[..., None]).round().clamp(lo, hi).reshape(n, k)


def _deq(q, s, group):
    n, k = q.shape
    return (q.float().reshape(n, k // group, group) * s[..., None]).reshape(n, k)


@pytest.mark.parametrize("bits,group", [(4, 32), (8, 128)])
def test_integers_sit_on_the_grid_and_scales_are_stored_exactly(bits, group):
    w = _w()
    for method in rounding.SCALE_METHODS:
        q, s = rounding.round_weight(w, bits, group, "bf16", method)
        lo, hi = rounding.QRANGE[bits]
        assert q.dtype == torch.int8 and int(q.min()) >= lo and int(q.max()) <= hi
        assert torch.equal(s, s.to(torch.bfloat16).float()) and bool((s > 0).all())
        assert torch.equal(q.float(), _rtn(w, s, bits, group))  # nearest rounding on the returned scales


def test_mse_scales_never_lose_to_minmax_per_group():
    w, x = _w(), _x()
    h = (x * x).mean(0)
    qm, sm = rounding.round_weight(w, 4, 32, "bf16", "minmax")
    qe, se = rounding.round_weight(w, 4, 32, "bf16", "mse", h)

    def err(q, s):  # E[x^2]-weighted squared error per group
        return ((w - _deq(q, s, 32)) ** 2 * h).reshape(48, 4, 32).sum(-1)

    assert bool((err(qe, se) <= err(qm, sm) + 1e-6).all())
    assert float(err(qe, se).sum()) < 0.8 * float(err(qm, sm).sum())  # and clearly better overall


def test_gptq_lowers_the_layer_output_error_on_its_calibration_inputs():
    w, x = _w(), _x()
    H = x.T @ x / x.shape[0]
    out = x @ w.T

    def out_err(q, s):
        return float(((x @ _deq(q, s, 32).T - out) ** 2).mean())

    rtn = out_err(*rounding.round_weight(w, 4, 32, "bf16", "mse", torch.diag(H)))
    for act_order in (False, True):
        q, s = rounding.gptq(w, H, 4, 32, "bf16", "mse", act_order=act_order)
        assert q.dtype == torch.int8 and int(q.min()) >= -8 and int(q.max()) <= 7
        assert out_err(q, s) < 0.7 * rtn


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_with_uncorrelated_inputs_is_round_to_nearest(act_order):
    """With a diagonal Hessian there is nowhere to push an error: GPTQ must equal RTN exactly."""
    w = _w()
    h = torch.rand(128, generator=torch.Generator().manual_seed(3)) + 0.5
    q, s = rounding.gptq(w, torch.diag(h), 4, 32, "bf16", "mse", act_order=act_order)
    q2, s2 = rounding.round_weight(w, 4, 32, "bf16", "mse", h)
    assert torch.equal(s, s2) and torch.equal(q, q2)
    assert torch.equal(q.float(), _rtn(w, s, 4, 32))


def test_quantize_serialises_our_integers_into_torchao_tensors(tiny):
    """The eager torchao 8da4w linear computes with the integers rounding.py chose (not its own)."""
    m = copy.deepcopy(tiny)
    w = m.layers[0].self_attn.q_proj.weight.detach().clone()
    x = torch.randn(5, w.shape[1])
    H = {}
    cb = calib(m)

    def spy(names):
        h, facts = cb(names)
        H.update(h)
        return h, facts

    # without smoothing, which rescales w before any rounding (an exact rewrite tested on its own)
    facts = quantize(m, dataclasses.replace(load_recipe("4bit"), smooth=0.0), spy)
    assert facts["calibration"]["windows"] == 2 and "mse+gptq+act_order" in facts["rounding"]
    q, s = rounding.gptq(w, H["layers.0.self_attn.q_proj"], 4, 32, "bf16", "mse", act_order=True)
    t = m.layers[0].self_attn.q_proj.weight
    assert torch.equal(t.qdata, q) and torch.equal(t.scale.float(), s)
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
        _apply_int8_act_asym_per_token_quant_dequant as act_qdq)

    with torch.no_grad():
        got = m.layers[0].self_attn.q_proj(x)
    assert torch.allclose(got, F.linear(act_qdq(x), _deq(q, s, 32)), atol=1e-5)
    assert not torch.equal(q.float(), _rtn(w, s, 4, 32))  # GPTQ moved some integers off nearest


def test_recipes_that_round_with_calibration_require_it(tiny):
    with pytest.raises(UserError, match="no calibration text"):
        quantize(copy.deepcopy(tiny), load_recipe("4bit"))
    quantize(copy.deepcopy(tiny), load_recipe("4bit-fast"))  # plain rounding: none needed


def test_hessians_match_inputs_captured_directly_and_are_shared(tiny):
    m = copy.deepcopy(tiny).eval()
    wins = [[1, 5, 9, 33, 2], [7, 7, 100, 3]]
    seen = []
    hook = m.layers[1].mlp.gate_proj.register_forward_pre_hook(lambda mod, a: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    names = {"layers.1.mlp.gate_proj", "layers.1.mlp.up_proj", "layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj"}
    H = calibrate.hessians(m, wins, names)
    hook.remove()
    x = torch.cat(seen)
    assert torch.allclose(H["layers.1.mlp.gate_proj"], x.T @ x / x.shape[0], atol=1e-5)
    assert torch.equal(H["layers.1.mlp.up_proj"], H["layers.1.mlp.gate_proj"])  # one input, counted once
    assert torch.equal(H["layers.0.self_attn.k_proj"], H["layers.0.self_attn.q_proj"])


def test_calibration_windows_are_seeded():
    ids = list(range(5000))
    spec = calibrate.CalibSpec(tokens=1024, window=256, seed=0)
    a, b = calibrate.calib_windows(ids, spec, None), calibrate.calib_windows(ids, spec, None)
    c = calibrate.calib_windows(ids, dataclasses.replace(spec, seed=1), None)
    assert a == b and a != c and len(a) == 4 and all(len(w) == 256 for w in a)
    assert all(w[0] == 1 and len(w) == 256 for w in calibrate.calib_windows(ids, spec, 1))  # BOS leads
    with pytest.raises(UserError, match="too short"):
        calibrate.calib_windows(ids[:100], spec, None)


def test_builtin_calibration_text_shares_nothing_with_the_evaluation_text():
    cal, _ = calibrate.read_text(None)
    assert not calibrate.overlap(cal, SAMPLE.read_text(encoding="utf-8"))
    assert calibrate.overlap(cal, "prefix " + cal[5000:5600] + " suffix")  # and a 600-character passage is found


def test_recipe_rounding_keys_are_validated():
    base = '[linear]\nbits = 4\ngroup_size = 32\n'
    for bad, msg in [('scales = "best"', "scales"), ('rounding = "awq"', "rounding"),
                     ('act_order = true', "act_order")]:
        with pytest.raises(UserError, match=msg):
            parse_recipe(base + bad + "\n", "r")
    with pytest.raises(UserError, match="embeddings are rounded to nearest"):
        parse_recipe(base + '[embedding]\nbits = 8\nscales = "mse"\n', "r")
    with pytest.raises(UserError, match="calibration.*unknown key"):
        parse_recipe(base + '[calibration]\nsamples = 3\n', "r")
    with pytest.raises(UserError, match="--calib-text"):
        parse_recipe(base + '[calibration]\ntext = "x.txt"\n', "r")
    r = parse_recipe(base + 'rounding = "gptq"\n[calibration]\ntokens = 4096\n', "r")
    assert r.needs_calibration and r.calibration.tokens == 4096 and not load_recipe("4bit-fast").needs_calibration


@pytest.mark.parametrize("recipe", ["4bit", "4bit-fast", "8bit"])
def test_simulated_arithmetic_equals_torchao_eager(tiny, recipe):
    """simulate.py (what 4bit-auto and benchmarks/quant_methods.py score) computes what the torchao
    quantized reference computes, for plain and GPTQ integers alike."""
    from mobilellm_export.quant import simulate
    from mobilellm_export.quant.quantize import effective_group

    # the formats' arithmetic: rotation and smoothing (8bit) reshape the float model before it,
    # exactly (tests/test_rotate.py, test_smoothing_keeps_the_function...), and are left out here
    r = dataclasses.replace(load_recipe(recipe), rotate=False, smooth=0.0)
    real, sim = copy.deepcopy(tiny), copy.deepcopy(tiny)
    cb = calib(real)
    H = cb({n for n, m in real.named_modules() if isinstance(m, torch.nn.Linear)})[0]
    quantize(real, r, lambda names: ({n: H[n] for n in names}, {}))
    linears = {n: m for n, m in sim.named_modules() if isinstance(m, torch.nn.Linear)}
    chosen = {}
    for n, m in linears.items():
        wq = r.weight_for(n)
        g = effective_group(wq, m.in_features)
        chosen[n] = (*simulate.choose(m.weight.detach(), wq, g, H.get(n) if wq.calibrated else None), wq)
    tokens = torch.tensor([[3, 17, 99, 4, 250, 8]])
    with torch.no_grad(), simulate.simulated(linears, chosen):
        got = sim(tokens, torch.tensor([0]))
    with torch.no_grad():
        want = real(tokens, torch.tensor([0]))
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), float((got - want).abs().max())


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3", "tiny-olmo2"])  # pre, sandwich (1 + w), post norms
def test_smoothing_keeps_the_function_and_rescales_the_hessians(name):
    """SmoothQuant folding is exact: same logits; the rescaled H equals H measured on the new model."""
    from mobilellm_export.quant.transforms import smooth

    cfg = PRESETS[name]
    m = Transformer.from_weights(cfg, random_weights(cfg), max_context=32)
    wins = [[1, 5, 9, 33, 2, 40], [7, 7, 100, 3]]
    names = {c for _, _, cs in smooth.groups(m) for c in cs}
    H = calibrate.hessians(m, wins, names)
    x = torch.tensor([wins[0]])
    with torch.no_grad():
        before = m(x, torch.tensor([0]))
        facts = smooth.smooth(m, H, 0.5)
        after = m(x, torch.tensor([0]))
    assert facts["groups"] == (1 if cfg.norm_layout == "post" else 3) * cfg.n_layers and facts["max_ratio"] > 1
    assert torch.allclose(before, after, atol=1e-4, rtol=1e-4)
    again = calibrate.hessians(m, wins, names)
    for n in names:
        assert torch.allclose(H[n], again[n], rtol=1e-3, atol=1e-5), n


def test_smooth_recipe_key_is_validated_and_applied_by_quantize(tiny):
    base = '[linear]\nbits = 8\ngroup_size = 0\nscale_dtype = "fp32"\n'
    for bad, msg in [("smooth = 1.5\n", "smooth"), ("smooth = true\n", "smooth")]:
        with pytest.raises(UserError, match=msg):
            parse_recipe(bad + base, "r")
    with pytest.raises(UserError, match="int8 dynamic"):
        parse_recipe('smooth = 0.5\n[linear]\nbits = 8\nactivations = "none"\n', "r")
    # with [auto]: the search scores blocks of the unsmoothed model, then quantization smooths
    assert parse_recipe('smooth = 0.5\n' + base + '[auto]\nsize_mb = 1.0\n', "r").smooth == 0.5
    r = parse_recipe("smooth = 0.5\n" + base, "r")
    assert r.needs_calibration
    m = copy.deepcopy(tiny)
    facts = quantize(m, r, calib(m))
    assert facts["smooth"]["groups"] == 3 * m.cfg.n_layers
    assert not torch.equal(m.layers[0].input_layernorm.weight, tiny.layers[0].input_layernorm.weight)
