"""verify --quick's pieces: the top-k KL estimator against the full KL, and the reference-logits file
read as untrusted input (every malformed file is one line, never a crash or a pass)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from mobilellm_export.errors import UserError
from mobilellm_export.metrics import PairStats, TopK, TopKPairStats, kl_top
from mobilellm_export.verify import quick

V, N = 300, 40


def _logits(seed: int, scale: float = 4.0) -> torch.Tensor:
    return torch.randn(N, V, generator=torch.Generator().manual_seed(seed)) * scale


def _full_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    la, lb = a.log_softmax(-1), b.log_softmax(-1)
    return (la.exp() * (la - lb)).sum(-1)


TOKENS = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(9)).tolist()


def test_kl_top_is_the_full_kl_when_k_is_the_vocabulary():
    a, b = _logits(0), _logits(1)
    assert torch.allclose(kl_top(TopK.of(a, TOKENS, V), b), _full_kl(a, b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("k", [1, 4, 32, 128])
def test_kl_top_is_a_lower_bound_that_tightens_with_k(k):
    a, b = _logits(0), _logits(1) * 0.5 + _logits(0) * 0.8  # related, as a quantized model is
    full = _full_kl(a, b)
    est = kl_top(TopK.of(a, TOKENS, k), b)
    assert (est <= full + 1e-5).all() and (est >= 0).all()
    if k < V:
        assert float(kl_top(TopK.of(a, TOKENS, min(2 * k, V)), b).mean()) >= float(est.mean()) - 1e-6


def test_topk_pair_stats_match_the_full_ones_where_they_must():
    """Top-1, both perplexities and the logit differences on the stored tokens equal PairStats'
    on full logits (the reference's perplexity comes from its stored next-token log-probabilities)."""
    a, b = _logits(2), _logits(2) + 0.3 * _logits(3)
    full, top = PairStats(), TopKPairStats()
    full.add(a, b, TOKENS)
    top.add(TopK.of(a, TOKENS, 16), b, TOKENS)
    f, t = full.result(), top.result()
    assert t["top1"] == f["top1"]
    assert t["ppl_ref"] == pytest.approx(f["ppl_ref"], rel=1e-5)
    assert t["ppl_test"] == pytest.approx(f["ppl_test"], rel=1e-5)
    assert t["kl_mean"] <= f["kl_mean"] and t["max_abs_logit"] <= f["max_abs_logit"] + 1e-6


def _bundle(tmp_path, tensors=None, **entry):
    logits = {"float": _logits(0), "reference": _logits(0) + 0.1 * _logits(1),
              "noise": _logits(0) + 0.1 * _logits(1) + 1e-3 * _logits(5), "artifact": _logits(0) + 0.1 * _logits(4)}
    t = quick.capture(logits, TOKENS, k=8) if tensors is None else tensors
    e = quick.write(tmp_path, t)
    m = {"quick_check": {**e, **entry}, "config": {"vocab_size": V}, "generation": {"max_context": 64}}
    return m, t


def test_capture_and_read_round_trip(tmp_path):
    m, t = _bundle(tmp_path)
    assert m["quick_check"] == {"file": quick.FILE, "format": quick.FORMAT, "positions": N, "top_k": 8}
    ids, tops, rec = quick.read(tmp_path, m)
    assert ids == TOKENS and torch.equal(tops["float"].idx, t["float.idx"])
    assert rec["floor_kl"] == pytest.approx(float(t["floor"][0])) and rec["floor_kl"] > 0
    assert set(rec["export_kl"]) == {"float_vs_artifact", "quant_vs_artifact"}


def _broken(t: dict, key: str, value) -> dict:
    t = dict(t)
    if value is None:
        del t[key]
    else:
        t[key] = value
    return t


@pytest.mark.parametrize("case, change, message", [
    ("missing tensor", lambda t: _broken(t, "float.lse", None), "missing"),
    ("extra tensor", lambda t: _broken(t, "code", torch.zeros(1)), "unexpected"),
    ("wrong dtype", lambda t: _broken(t, "tokens", t["tokens"].long()), "expected torch.int32"),
    ("wrong shape", lambda t: _broken(t, "float.logit", t["float.logit"][:, :4].contiguous()), "expected"),
    ("id past the vocabulary", lambda t: _broken(t, "reference.idx", t["reference.idx"] + V), "outside the vocabulary"),
    ("negative token", lambda t: _broken(t, "tokens", t["tokens"] - 10_000), "outside the vocabulary"),
    ("NaN logit", lambda t: _broken(t, "float.logit", t["float.logit"] * float("nan")), "not a model's"),
    ("unsorted top-k", lambda t: _broken(t, "float.logit", t["float.logit"].flip(-1).contiguous()), "not a model's"),
    ("lse below the max", lambda t: _broken(t, "float.lse", t["float.lse"] - 50), "not a model's"),
    ("floor not a share", lambda t: _broken(t, "floor", torch.tensor([0.1, 3.0])), "noise floor"),
])
def test_a_malformed_file_is_one_line(tmp_path, case, change, message):
    m, t = _bundle(tmp_path)
    save_file(change(t), str(tmp_path / quick.FILE))
    with pytest.raises(UserError, match=message):
        quick.read(tmp_path, m)


def test_not_safetensors_positions_out_of_range_and_no_entry(tmp_path):
    m, _ = _bundle(tmp_path)
    (tmp_path / quick.FILE).write_bytes(b"\x80\x04pickle? no" * 10)
    with pytest.raises(UserError, match="not a readable safetensors"):
        quick.read(tmp_path, m)
    m2, _ = _bundle(tmp_path, positions=10_000)
    with pytest.raises(UserError, match="out of range"):
        quick.read(tmp_path, m2)
    with pytest.raises(UserError, match="holds no reference logits"):
        quick.read(tmp_path, {**m, "quick_check": None})
    with pytest.raises(UserError, match="format"):
        quick.read(tmp_path, {**m, "quick_check": {**m["quick_check"], "format": 99}})
