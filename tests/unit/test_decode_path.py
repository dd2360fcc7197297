"""The decode path (verify/parity.py::decode_path): teacher-forced single-token decode of two runners
on the same tokens, against eager PyTorch; and the noise floor's runner on that path."""

import torch

from mobilellm_export.model import Transformer, random_weights
from mobilellm_export.presets import PRESETS
from mobilellm_export.runtimes.eager import EagerRunner
from mobilellm_export.verify import parity

PROMPT = [5, 17, 42, 7, 99, 3]


def _runner(seed=0):
    cfg = PRESETS["tiny-llama"]
    return EagerRunner(Transformer.from_weights(cfg, random_weights(cfg, seed), max_context=128))


def _greedy(r):
    return parity.greedy_tokens(r, PROMPT, 24)


class DecodeBug:
    """Prefill is right; each single-token decode attends as if one position later (a stale offset):
    what windowed parity (prefill calls only) cannot see."""

    def __init__(self, runner):
        self.r = runner

    def reset(self):
        self.r.reset()

    def prefill(self, tokens):
        return self.r.prefill(tokens)

    def score(self, tokens):
        return self.r.score(tokens)

    def decode(self, token):
        logits = self.r._forward([token], self.r.pos + 1)[-1]
        self.r.pos += 1
        return logits


def test_the_same_model_agrees_exactly_on_its_own_greedy_tokens():
    a, b = _runner(), _runner()
    toks = _greedy(a)
    d = parity.decode_path(a, b, PROMPT, toks)
    assert d["steps"] == 24 and d["kl_mean"] == 0 and d["top1"] == 1.0 and d["max_abs_logit_rel"] == 0


def test_step_i_is_the_logits_after_feeding_the_first_i_tokens():
    # against the reference's own full-sequence logits: position len(PROMPT)-1+i predicts toks[i]
    a = _runner()
    toks = _greedy(a)
    with torch.no_grad():
        full = a.score(PROMPT + toks)[len(PROMPT) - 1:-1]
    assert full.argmax(-1).tolist() == toks  # greedy = argmax of every step
    other = _runner(seed=1)
    d = parity.decode_path(a, other, PROMPT, toks)
    want = parity.PairStats()
    want.add(full, other.score(PROMPT + toks)[len(PROMPT) - 1:-1], [PROMPT[-1], *toks[:-1]])
    assert abs(d["kl_mean"] - want.result()["kl_mean"]) < 1e-4 and d["top1"] == want.result()["top1"]


def test_a_decode_only_bug_shows_on_the_decode_path_and_not_in_windowed_parity():
    ref, buggy = _runner(), DecodeBug(_runner())
    toks = _greedy(ref)
    window = PROMPT + toks
    windowed = parity.PairStats()
    windowed.add(ref.score(window), buggy.score(window), window)
    assert windowed.result()["kl_mean"] == 0  # the windows see nothing
    assert parity.decode_path(ref, buggy, PROMPT, toks)["kl_mean"] > 1e-3


def test_the_noise_floors_runner_decodes_one_ulp_away():
    ref, other = _runner(), _runner()
    noisy = parity.NoisyRunner(other, other.model.embed_tokens)
    toks = _greedy(ref)
    d = parity.decode_path(ref, noisy, PROMPT, toks)
    assert 0 < d["max_abs_logit_rel"] < 1e-4 and d["top1"] == 1.0
    assert parity.greedy_tokens(noisy, PROMPT, 24) == toks  # fp32 eager: one ulp flips no token here


def test_the_greedy_runs_recorded_logits_are_its_decode_path():
    # verify takes the reference's side of the decode path from its greedy run (no second pass)
    ref = _runner()
    rec = parity.Recorder(ref)
    toks = parity.greedy_tokens(rec, PROMPT, 24)
    assert len(rec.logits) == 25  # prefill, then a decode per token (the last one's is unused)
    rows = torch.stack(rec.logits[:24])
    assert torch.equal(rows, parity.decode_rows(_runner(), PROMPT, toks))
    other = _runner(seed=1)
    assert parity.decode_path(rows, other, PROMPT, toks) == parity.decode_path(_runner(), other, PROMPT, toks)
