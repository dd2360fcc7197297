"""SmolLM2-135M `8bit` on Android, on Botchan (a third 135M lowering, ~10 min: `make test-all`)."""

import pytest

from conftest import BOTCHAN
from test_real_size_android import export


@pytest.mark.extra  # a third 135M lowering (~10 min): `make test-all`, not the CI budget
def test_smollm2_8bit(tmp_path):
    rep = export(tmp_path, "--model", "smollm2-135m", "--quant", "8bit", "--eval-text", str(BOTCHAN),
                 "--eval-tokens", "4096")
    low, e2e = rep["parity"]["quant_vs_artifact"], rep["parity"]["float_vs_artifact"]
    # issue 10's target, llama.cpp Q8_0's loss: KL <= 0.005 at <= 140 MB (measured 0.00473, 138.2 MB;
    # plain 8da8w was 0.0217)
    assert e2e["kl_mean"] <= 0.005 and e2e["top1"] >= 0.95, e2e
    assert sum(v for k, v in rep["size_mb"].items() if k.startswith("model.")) <= 140, rep["size_mb"]
    # Lowering: as close to eager as eager is to itself under 1-ulp noise (measured 0.00403 against
    # a floor of 0.00389; the floor was 0.021 before rotation)
    floor = rep["parity"]["quant_noise_floor"]
    assert low["kl_mean"] <= 0.03 and low["top1"] >= 0.87, low
    assert low["kl_mean"] <= 1.5 * floor["kl_mean"], (low, floor)
