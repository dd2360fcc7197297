"""Per-position parity plots for report.md: KL along the text, its histogram, top-1 agreement, old vs new.

Reads the report-positions.json contract ({"window", "positions", "pairs": {pair: {"kl", "top1"}}}).
matplotlib is imported inside the functions (importing this module stays cheap) and only through
Figure + FigureCanvasAgg: no pyplot, so no backend is ever resolved and CI never touches a GUI toolkit.
The PNGs carry no "Software" tag and Agg writes no timestamp, so the same data gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobilellm_export.verify.report.labels import SHORT

EPS = 1e-8  # KL is clamped at 0 by parity.py; a log axis needs zeros lifted to something visible
COLORS = {"float_vs_quant": "tab:blue", "quant_vs_artifact": "tab:orange", "float_vs_artifact": "tab:red",
          "quant_noise_floor": "tab:gray"}
ARTIFACT_PAIRS = ("float_vs_artifact", "quant_vs_artifact")
TITLES = {"report-kl.png": "KL per position", "report-kl-hist.png": "KL histogram",
          "report-top1.png": "Top-1 agreement", "report-baseline.png": "Baseline vs new (artifact KL)"}
SIZE, DPI = (8, 3.5), 100


def _series(positions: dict | None, key: str, field: str) -> np.ndarray | None:
    """One pair's per-position values as float64 (non-finite -> NaN), or None when absent or empty."""
    pair = ((positions or {}).get("pairs") or {}).get(key) or {}
    values = pair.get(field)
    if values is None or len(values) == 0:
        return None
    x = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(x), x, np.nan)


def _mean(x: np.ndarray) -> float:
    ok = np.isfinite(x)
    return float(x[ok].mean()) if ok.any() else float("nan")


def _rolling(x: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """NaN-aware mean over each run of w positions, x at the run's centre (a series shorter than w: one run)."""
    w = max(1, min(w, len(x)))
    ok = np.isfinite(x)
    s = np.concatenate([[0.0], np.cumsum(np.where(ok, x, 0.0))])
    c = np.concatenate([[0], np.cumsum(ok)])
    cnt = c[w:] - c[:-w]
    mean = np.divide(s[w:] - s[:-w], cnt, out=np.full(len(cnt), np.nan), where=cnt > 0)
    return np.arange(len(mean)) + (w - 1) / 2, mean


def _figure(ncols: int = 1, **kw):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False, **kw)[0]


def _save(fig, out_dir: Path, name: str, written: list[str]) -> None:
    fig.savefig(out_dir / name, dpi=DPI, metadata={"Software": None})
    written.append(name)


def _heading(report: dict | None, limit: int = 90) -> str:
    """'model · target · recipe' from a report dict, whatever subset of keys it has (long names cut)."""
    parts = [str(report[k]) for k in ("model", "target", "recipe") if isinstance(report, dict) and report.get(k)]
    text = " · ".join(parts)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _titled(title: str, report: dict | None) -> str:
    """One line while it fits the 8-inch figure at 10 pt (~95 characters), else the names go below."""
    head = _heading(report)
    if not head:
        return title
    return f"{title} — {head}" if len(title) + len(head) <= 92 else f"{title}\n{head}"


def _window_lines(ax, positions: dict, n: int) -> None:
    w = positions.get("window")
    if isinstance(w, (int, float)) and 0 < int(w) < n and n // int(w) <= 200:
        w = int(w)
        for b in range(w, n, w):
            ax.axvline(b, color="0.85", lw=0.6, zorder=0)


def _kl_plot(ax, positions: dict, keys, raw: bool = True) -> dict[str, float]:
    """Rolling-mean KL (64) per pair on a log axis, light raw points underneath; returns each pair's mean.

    Raw points below the floor (the 0.5th percentile of the positive values, exact zeros included) sit on
    the bottom edge: a 1e-8 axis floor would squash the curves into the top third."""
    series = {k: v for k in keys if (v := _series(positions, k, "kl")) is not None}
    n = max((len(v) for v in series.values()), default=0)
    pos = np.concatenate([v[v > 0] for v in series.values()]) if series else np.zeros(0)
    floor = 10 ** np.floor(np.percentile(np.log10(pos), 0.5)) if raw and pos.size else EPS
    means = {}
    for key, kl in series.items():
        if raw:  # faint on a full eval text (thousands of points), readable on a short one
            ax.scatter(np.arange(len(kl)), np.clip(kl, floor, None), s=1.5 if n > 256 else 8, color=COLORS[key],
                       alpha=float(np.clip(150 / n, 0.12, 0.6)), lw=0, rasterized=True)
        x, m = _rolling(kl, 64)
        ax.plot(x, np.clip(m, floor, None), color=COLORS[key], lw=1.4, label=SHORT[key])
        means[key] = _mean(kl)
    _window_lines(ax, positions, n)
    ax.set_yscale("log")
    if raw:
        ax.set_ylim(bottom=floor * 0.8)
        ax.set_ylabel(f"KL (nats; < {floor:.0e} at the bottom)")
    ax.set_xlim(-0.5, max(n - 0.5, 1))  # half a position of margin: edge points are not cut by the spines
    ax.set_xlabel("position in eval text")
    ax.grid(True, which="major", axis="y", color="0.92", lw=0.6)
    return means


def _legend(fig, handles=None, labels=None) -> None:
    """One row under the axes: inside, a legend hides whichever curve happens to run near it."""
    if handles is None:
        handles, labels = fig.axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)


def write_plots(positions: dict, out_dir: Path, *, report: dict | None = None,
                baseline_positions: dict | None = None, baseline_report: dict | None = None) -> list[str]:
    """Write report-kl.png, report-kl-hist.png, report-top1.png (and report-baseline.png with a baseline)
    into out_dir; returns the file names written, in that order. Absent or empty pairs are skipped."""
    keys = [k for k in SHORT if _series(positions, k, "kl") is not None]
    if not keys:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    from matplotlib.lines import Line2D  # legend proxies for line styles

    # 1. KL along the text: where in the text the model drifts (window starts show as KV-cache resets).
    fig, (ax,) = _figure()
    _kl_plot(ax, positions, keys)
    ax.set_title(_titled("KL per position (rolling mean over 64, raw points faint)", report), fontsize=10)
    _legend(fig)
    _save(fig, out_dir, "report-kl.png", written)

    # 2. Histogram on log bins: KL spans ~1e-6..10, so linear bins would put everything in the first one.
    fig, (ax,) = _figure()
    kls = {k: np.clip(_series(positions, k, "kl"), EPS, None) for k in keys}
    finite = np.concatenate([v[np.isfinite(v)] for v in kls.values()])
    lo, hi = (np.floor(np.log10(finite.min())), np.ceil(np.log10(finite.max()))) if finite.size else (-8, 1)
    bins = np.logspace(lo, max(hi, lo + 1), 60)
    for k, v in kls.items():
        ax.hist(v[np.isfinite(v)], bins=bins, histtype="step", lw=1.4, color=COLORS[k], label=SHORT[k])
    floor = _mean(_series(positions, "quant_noise_floor", "kl")) if "quant_noise_floor" in kls else np.nan
    if np.isfinite(floor):
        ax.axvline(max(floor, EPS), color="k", ls="--", lw=1, label="noise floor mean")
    ax.set_xscale("log")
    ax.set_xlabel(f"KL per position (nats; zeros clipped to {EPS:g})")
    ax.set_ylabel("positions")
    ax.set_title(_titled("Distribution of per-position KL", report), fontsize=10)
    _legend(fig)
    _save(fig, out_dir, "report-kl-hist.png", written)

    # 3. Top-1 agreement: running (cumulative) value converges to the reported top-1; rolling 256 shows dips.
    tops = {k: t for k in SHORT if (t := _series(positions, k, "top1")) is not None}
    if tops:
        fig, (ax,) = _figure()
        n = max(len(t) for t in tops.values())
        for k, t in tops.items():
            ok = np.isfinite(t)
            run = np.cumsum(np.where(ok, t, 0)) / np.maximum(np.cumsum(ok), 1)
            ax.plot(np.arange(len(t)), run, color=COLORS[k], lw=1.6, label=SHORT[k])
            x, m = _rolling(t, 256)
            ax.plot(x, m, color=COLORS[k], lw=0.8, ls=":", alpha=0.9)
        _window_lines(ax, positions, n)
        handles, labels = ax.get_legend_handles_labels()
        handles += [Line2D([], [], color="k", lw=1.6), Line2D([], [], color="k", lw=0.8, ls=":")]
        _legend(fig, handles, labels + ["cumulative", "rolling 256"])
        ax.set_xlim(0, max(n - 1, 1))
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("position in eval text")
        ax.set_ylabel("top-1 agreement")
        ax.grid(True, axis="y", color="0.92", lw=0.6)
        ax.set_title(_titled("Top-1 agreement (cumulative, and rolling over 256)", report), fontsize=10)
        _save(fig, out_dir, "report-top1.png", written)

    # 4. Old vs new: the artifact pairs are what a regression in lowering or the runtime moves.
    sides = [(baseline_positions, baseline_report, "baseline"), (positions, report, "new")]
    if baseline_positions is not None and any(_series(p, k, "kl") is not None for p, _, _ in sides
                                              for k in ARTIFACT_PAIRS):
        fig, axes = _figure(2, sharey=True)
        for ax, (pos, rep, name) in zip(axes, sides):
            means = _kl_plot(ax, pos or {}, ARTIFACT_PAIRS, raw=False)
            for k, v in means.items():  # the mean as a faint level line: old vs new reads across panels
                if np.isfinite(v):
                    ax.axhline(max(v, EPS), color=COLORS[k], ls="--", lw=0.8, alpha=0.6)
            head = _heading(rep, 48)  # half the figure at 8.5 pt
            if not means:
                ax.text(0.5, 0.5, "no artifact pairs", transform=ax.transAxes, ha="center", color="0.5")
                ax.set_xticks([])
            stats = [f"mean KL {SHORT[k]} {v:.3g}" for k, v in means.items()] or ["no artifact pairs"]
            ax.set_title("\n".join([f"{name}{': ' + head if head else ''}"] + stats), fontsize=8.5)
        axes[0].set_ylabel("KL (nats), rolling mean over 64")
        handles = {lab: h for ax in axes for h, lab in zip(*ax.get_legend_handles_labels())}
        handles["mean (dashed)"] = Line2D([], [], color="0.4", ls="--", lw=0.8)
        _legend(fig, list(handles.values()), list(handles))
        _save(fig, out_dir, "report-baseline.png", written)
    return written


def markdown_links(files: list[str]) -> str:
    """The '## Plots' section for report.md (empty when nothing was written)."""
    if not files:
        return ""
    lines = ["## Plots", ""] + [f"![{TITLES.get(f, Path(f).stem)}]({f})" for f in files]
    return "\n".join(lines) + "\n"
