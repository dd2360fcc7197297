"""Report writers (markdown, terminal table) on a report with every section filled."""

from rich.console import Console

from mobilellm_export.quant.recipe import Thresholds
from mobilellm_export.verify import report as r

P = dict(kl_mean=0.02, kl_p99=0.1, top1=0.9, ppl_ref=30.0, ppl_test=31.0, ppl_delta=0.033, max_abs_logit=1.5)
G = dict(tokens=64, common_prefix=12, match=0.5)


def full_report(**over):
    rep = {"model": "m", "target": "android", "recipe": "4bit",
           "eval": {"positions": 4096, "text": "botchan.txt", "window": 512},
           "parity": {k: dict(P) for k in r.PAIRS}, "greedy": {k: dict(G) for k in r.PAIRS},
           "latency": {"model.pte": dict(prefill_tok_s=900.0, decode_tok_s=150.0, ttft_ms=140.0, peak_rss_mb=600.0,
                                         file_mb=80.0)},
           "quantization": {"fallbacks": [{"layer": "layers.0.mlp.down_proj", "in_features": 96, "group_size": 32}]}}
    rep.update(over)
    rep["checks"] = r.checks(rep["parity"], Thresholds(kl_mean=0.42, top1_min=0.6, ppl_delta_max=0.35))
    rep["passed"] = all(c["ok"] for c in rep["checks"])
    return rep


def test_markdown_has_every_section():
    md = r.markdown(full_report())
    assert "| quantized eager -> artifact (lowering error) | 0.0200 |" in md and "12/64, 0.50" in md
    assert "| model.pte | 900.0 | 150.0 |" in md and "layers.0.mlp.down_proj (in 96: g32)" in md
    assert "Result: **PASS**" in md


def test_failed_threshold_is_reported():
    rep = full_report(parity={k: dict(P, top1=0.5) for k in r.PAIRS})
    assert not rep["passed"] and "Result: **FAIL**" in r.markdown(rep)
    assert [c["name"] for c in rep["checks"] if not c["ok"]] == ["float->artifact top1", "quant->artifact top1"]


def test_terminal_summary_renders():
    console = Console(width=100, record=True)
    r.print_summary(full_report(), console)
    out = console.export_text()
    assert "quant→artifact" in out and "12/64" in out and "pass float->artifact kl_mean" in out
