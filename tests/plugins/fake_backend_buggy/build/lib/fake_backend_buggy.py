"""The fake backend with one seeded bug: it stores the last layer's attention output projection
0.2 % too large, the size of error a wrong scale dtype or a lossy weight format makes."""

from __future__ import annotations

from fake_backend import FakeEager


class FakeBuggy(FakeEager):
    name = "fake-buggy"

    def _weights(self, model):
        sd, tied = super()._weights(model)
        key = f"layers.{model.cfg.n_layers - 1}.self_attn.o_proj.weight"
        sd[key] = sd[key] * 1.002
        return sd, tied
