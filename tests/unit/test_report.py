"""Report writers (markdown, terminal summary) on a report with every section filled."""

from rich.console import Console

from mobilellm_export.quant.recipe import Thresholds
from mobilellm_export.verify import report as r

P = dict(kl_mean=0.02, kl_p99=0.1, top1=0.9, ppl_ref=30.0, ppl_test=31.0, ppl_delta=0.033, max_abs_logit=1.5)
G = dict(tokens=64, common_prefix=12, match=0.5)
LAT = dict(rounds=5, prompt_tokens=128, decode_tokens=64, prefill_tok_s=900.0, prefill_tok_s_iqr=[880.0, 910.0],
           decode_tok_s=150.0, decode_tok_s_iqr=[149.0, 152.5], ttft_ms=140.0, ttft_ms_iqr=[139.0, 141.0],
           peak_rss_mb=600.0, file_mb=80.0)


def full_report(**over):
    rep = {"model": "m", "target": "android", "recipe": "4bit", "threads": 2,
           "eval": {"positions": 4096, "text": "botchan.txt", "window": 512},
           "parity": {k: dict(P) for k in r.PAIRS}, "greedy": {k: dict(G) for k in r.PAIRS},
           "latency": {"float eager": dict(LAT, decode_tok_s=17.0), "model.pte app loop": dict(LAT),
                       "model.pte Python loop": dict(LAT, decode_tok_s=120.0),
                       "app_vs_python_loop": {"prefill_tok_s": 1.0, "decode_tok_s": 1.25}},
           "quantization": {"fallbacks": [{"layer": "layers.0.mlp.down_proj", "in_features": 96, "group_size": 32}]},
           "steps": [{"step": "lower to android", "detail": "XNNPACK", "seconds": 300.0, "tree_peak_mb": 1800.0}]}
    rep.update(over)
    rep["checks"] = r.checks(rep["parity"], Thresholds(kl_mean=0.42, top1_min=0.6, ppl_delta_max=0.35))
    rep["passed"] = all(c["ok"] for c in rep["checks"])
    return rep


def test_markdown_has_every_section():
    md = r.markdown(full_report())
    assert "| quantized eager -> artifact (lowering error) | 0.0200 |" in md and "12/64, 0.50" in md
    assert "| model.pte app loop | 900.0 [880.0–910.0] | 150.0 [149.0–152.5] | 140.0 [139.0–141.0] | 600 | 80.0 |" in md
    assert "decode 1.25×" in md and "layers.0.mlp.down_proj (in 96: g32)" in md
    assert "| lower to android (XNNPACK) | 300.0 | 1800 |" in md
    assert "Result: **PASS**" in md


def test_failed_threshold_is_reported():
    rep = full_report(parity={k: dict(P, top1=0.5) for k in r.PAIRS})
    assert not rep["passed"] and "Result: **FAIL**" in r.markdown(rep)
    assert [c["name"] for c in rep["checks"] if not c["ok"]] == ["float->artifact top1", "quant->artifact top1"]


def test_unverified_export_says_so():
    rep = {"model": "m", "target": "android", "recipe": "4bit", "passed": None}
    assert "Result: **not verified" in r.markdown(rep)


def test_terminal_summary_reads_fully_in_80_columns():
    """A CI log is not a terminal: rich then renders 80 columns and cuts what does not fit with '…'.
    Random-weight perplexities (1e8) are the widest values the table sees."""
    rep = full_report(parity={k: dict(P, ppl_ref=326593450.9, ppl_test=270311342.0, kl_p99=1.1279)
                              for k in r.PAIRS})
    console = Console(width=80, record=True, force_terminal=False)
    r.print_summary(rep, console)
    out = console.export_text()
    assert "…" not in out, out
    assert max(map(len, out.splitlines())) <= 80
    assert "quant→artifact" in out and "12/64" in out and "pass float->artifact kl_mean" in out
    assert "model.pte Python loop" in out and "3.3e+08→2.7e+08" in out


def test_check_lines_wrap_between_clauses_only():
    """A check message too long for 80 columns breaks after a clause, never inside an expression."""
    rep = full_report()
    long = dict(rep["checks"][0])
    long["message"] = ("quant->artifact kl_mean = 0.01541, within <= 0.01500 x 1.03 (noise floor 0.01455, "
                       "measured in this run); lowering KL ratio 1.059, floor-relative; 2/515 tokens differ")
    rep["checks"] = [long]
    console = Console(width=80, record=True, force_terminal=False)
    r.print_summary(rep, console)
    out = console.export_text()
    assert max(map(len, out.splitlines())) <= 80, out
    body = " ".join(ln.strip() for ln in out.splitlines() if ln.strip().startswith(("pass", "quant", "within",
                                                                                     "lowering", "measured")))
    for clause in ("quant->artifact kl_mean = 0.01541,", "within <= 0.01500 x 1.03 (noise floor 0.01455,",
                   "measured in this run);", "lowering KL ratio 1.059,", "2/515 tokens differ"):
        assert any(clause in ln for ln in out.splitlines()), (clause, out)
    assert "pass quant->artifact" in body


def test_wrap_clauses():
    assert r.wrap_clauses("a = 1, b = 2; c = 3", 80, 4) == ["a = 1, b = 2; c = 3"]
    assert r.wrap_clauses("a = 1, b = 2; c = 3", 13, 4) == ["a = 1, b = 2;", "    c = 3"]
    assert r.wrap_clauses("a = 1, b = 2; c = 3", 12, 4) == ["a = 1,", "    b = 2;", "    c = 3"]
    assert r.wrap_clauses("  aaaa = 1, bb = 2", 10, 4) == ["  aaaa = 1,", "    bb = 2"]
    assert r.wrap_clauses("x" * 30, 10, 2) == ["x" * 30]  # a clause longer than a line stays whole


def test_next_steps_name_the_bundle_report_chat_and_app(tmp_path):
    from mobilellm_export import backends

    b = tmp_path / "smollm2-135m-android-4bit"
    lines = r.next_steps(b, backends.get("android").app)
    text = "\n".join(lines)
    assert f"report  {b}/report.md" in text and f"mobilellm-export run {b}" in text
    assert f"adb push {b} /data/local/tmp/mobilellm/" in text and "android_demo/README.md" in text
    for target in backends.names():
        assert backends.get(target).app, f"target {target} says nothing of how an app loads its bundle"
