"""The report plots: files, valid non-blank PNGs, baseline only with a baseline, Agg only, reproducible bytes."""

import os
import subprocess
import sys

import numpy as np
import pytest

from mobilellm_export.verify.report.plots import markdown_links, write_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAIN = ["report-kl.png", "report-kl-hist.png", "report-top1.png"]


def positions(seed=0, n=1024, window=512, pairs=("float_vs_quant", "quant_vs_artifact", "float_vs_artifact",
                                                  "quant_noise_floor")):
    """Log-normal KL around a per-pair median (noise floor with some exact zeros), top-1 as Bernoulli."""
    g = np.random.default_rng(seed)
    median = {"float_vs_quant": 3e-2, "quant_vs_artifact": 2e-3, "float_vs_artifact": 3.2e-2,
              "quant_noise_floor": 5e-4}
    out = {}
    for k in pairs:
        kl = np.exp(g.normal(np.log(median[k]), 1.5, n))
        if k == "quant_noise_floor":
            kl[g.random(n) < 0.05] = 0.0
        out[k] = {"kl": kl.tolist(), "top1": (g.random(n) < 0.9).astype(int).tolist()}
    return {"window": window, "positions": n, "pairs": out}


def check_png(path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC
    img = imread(path)
    assert img.shape[:2] == (350, 800)  # 8 x 3.5 in at 100 dpi
    assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 50  # curves, text: not a blank canvas


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    d = tmp_path_factory.mktemp("plots")
    rep = {"model": "smollm2-135m", "target": "xnnpack", "recipe": "8da4w"}
    base = write_plots(positions(0), d / "base", report=rep, baseline_positions=positions(1),
                       baseline_report={"model": "smollm2-135m"})
    plain = write_plots(positions(0), d / "plain", report=rep)
    return d, base, plain


def test_files_written_in_order_and_valid(rendered):
    d, base, plain = rendered
    assert plain == MAIN
    assert base == MAIN + ["report-baseline.png"]
    assert sorted(p.name for p in (d / "plain").iterdir()) == sorted(MAIN)  # no baseline plot without one
    for name in base:
        check_png(d / "base" / name)


def test_same_data_same_bytes(rendered, tmp_path):
    d, _, plain = rendered
    assert write_plots(positions(0), tmp_path, report={"model": "smollm2-135m", "target": "xnnpack",
                                                       "recipe": "8da4w"}) == plain
    for name in plain:
        assert (tmp_path / name).read_bytes() == (d / "plain" / name).read_bytes(), name
    # ...and different data gives different pictures (the equality above is not vacuous).
    write_plots(positions(2), tmp_path / "other")
    assert (tmp_path / "other" / "report-kl.png").read_bytes() != (d / "plain" / "report-kl.png").read_bytes()


def test_missing_and_empty_pairs(tmp_path):
    assert write_plots({}, tmp_path / "a") == []
    assert write_plots({"window": 512, "positions": 0, "pairs": {}}, tmp_path / "b") == []
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    empty = {"window": 512, "positions": 0, "pairs": {"float_vs_quant": {"kl": [], "top1": []}}}
    assert write_plots(empty, tmp_path / "c") == []
    # Runtime not runnable here: only the quantized-reference pairs. The baseline plot still compares
    # the baseline's artifact pairs against an empty "new" panel rather than failing.
    quant_only = positions(0, pairs=("float_vs_quant", "quant_noise_floor"))
    assert write_plots(quant_only, tmp_path / "d") == MAIN
    check_png(tmp_path / "d" / "report-kl.png")
    assert write_plots(quant_only, tmp_path / "e", baseline_positions=positions(1))[-1] == "report-baseline.png"
    # Neither side has an artifact pair: nothing to compare, no baseline plot.
    assert write_plots(quant_only, tmp_path / "f", baseline_positions=quant_only) == MAIN


def test_degenerate_values(tmp_path):
    """All-zero KL (identical runners), short text, a NaN: still plots, never a log-axis error."""
    p = {"window": 512, "positions": 5, "pairs": {
        "quant_noise_floor": {"kl": [0.0] * 5, "top1": [1] * 5},
        "quant_vs_artifact": {"kl": [0.1, float("nan"), 0.0, 2.0, 1e-7], "top1": [1, 0, 1, 1, 0]}}}
    names = write_plots(p, tmp_path, baseline_positions=p, report={"recipe": "x"})
    assert names == MAIN + ["report-baseline.png"]
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC


def test_no_gui_backend_and_lazy_import(tmp_path):
    """Even with a GUI backend requested, plotting loads neither pyplot nor a toolkit; importing the
    module loads no matplotlib at all."""
    code = f"""
import sys
import mobilellm_export.verify.report.plots as plots
assert "matplotlib" not in sys.modules, "matplotlib imported at module import"
sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r})
from test_plots import positions
assert plots.write_plots(positions(0, n=64), __import__("pathlib").Path({str(tmp_path)!r}))
bad = [m for m in sys.modules if m == "matplotlib.pyplot" or m.split(".")[0] in
       ("tkinter", "_tkinter", "PyQt5", "PyQt6", "PySide2", "PySide6", "gi", "wx")
       or m.startswith(("matplotlib.backends.backend_tk", "matplotlib.backends.backend_qt",
                        "matplotlib.backends.backend_gtk", "matplotlib.backends.backend_wx",
                        "matplotlib.backends.backend_macosx"))]
assert not bad, bad
assert "matplotlib.backends.backend_agg" in sys.modules
"""
    env = {**os.environ, "MPLBACKEND": "TkAgg"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_markdown_links():
    md = markdown_links(MAIN + ["report-baseline.png"])
    lines = md.strip().splitlines()
    assert lines[0] == "## Plots"
    assert [line.rsplit("(", 1)[1].rstrip(")") for line in lines[2:]] == MAIN + ["report-baseline.png"]
    assert all(line.startswith("![") and "](" in line for line in lines[2:])
    assert markdown_links([]) == ""
