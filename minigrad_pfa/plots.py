"""PNG figures of the report (:mod:`minigrad_pfa.report`), drawn with matplotlib's Agg canvas.

The figures are built with ``matplotlib.figure.Figure`` and ``FigureCanvasAgg`` directly,
never through ``pyplot``: no global backend is selected and no window can open, so the
report runs on headless machines and inside other programs unchanged.

Inputs are plain per-epoch series (already averaged over seeds by the report):
``{label: {"epoch": [...], "mean": [...], "std": [...]}}``; values ``None`` (undefined) are
left out of a line.
"""
from __future__ import annotations

import math


def _legend(ax, fontsize: int) -> None:
    """A legend only where something is labelled (matplotlib warns otherwise)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize)


def _figure(ncols: int = 1, width: float = 6.4, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height))
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig, path: str) -> str:
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        if ax.get_xlabel() == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _clean(xs, ys, ss=None):
    """Points whose value is a finite number (None / NaN: undefined, not plotted)."""
    out = [(x, y, (ss[i] if ss else None)) for i, (x, y) in enumerate(zip(xs, ys))
           if y is not None and math.isfinite(y)]
    return ([p[0] for p in out], [p[1] for p in out], [p[2] for p in out])


def _line(ax, xs, ys, ss=None, band=True, **kw):
    xs, ys, ss = _clean(xs, ys, ss)
    if not xs:
        return None
    (line,) = ax.plot(xs, ys, **kw)
    if band and ss and all(s is not None for s in ss) and any(s > 0 for s in ss):
        ax.fill_between(xs, [y - s for y, s in zip(ys, ss)], [y + s for y, s in zip(ys, ss)],
                        color=line.get_color(), alpha=0.15, linewidth=0)
    return line


def _colors(n: int):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "viridis"]
    return [cmap(i if n <= 10 else i / max(n - 1, 1)) for i in range(n)]


def accuracy_curves(curves: dict, path: str, title: str, eval_label: str) -> str:
    """Accuracy per epoch, one colour per rule: training (dashed) and evaluation (solid).

    Parameters
    ----------
    curves : dict
        ``{rule label: {"train": series, "eval": series}}`` with series as in the module
        docstring (epochs 0-based; plotted 1-based).
    eval_label : str
        What the solid lines are ("validation", "test (unselected curve)").
    """
    fig, (ax,) = _figure()
    for color, (label, c) in zip(_colors(len(curves)), curves.items()):
        for key, style in (("eval", "-"), ("train", "--")):
            s = c.get(key)
            if s:
                _line(ax, [e + 1 for e in s["epoch"]], s["mean"], s["std"], color=color,
                      linestyle=style, label=label if key == "eval" else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{title}\nsolid: {eval_label}, dashed: training (mean ± std over seeds)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    if curves:
        _legend(ax, 8)
    return _save(fig, path)


def layer_alignment(series: dict, path: str, title: str, unused=()) -> str:
    """Per-layer path angle (left) and norm ratio (right) per epoch for one rule.

    Parameters
    ----------
    series : dict
        ``{layer: {"angle": series, "ratio": series}}`` in forward order.
    unused : collection of str
        Layers whose feedback is never used (the first one): drawn dotted and labelled.
    """
    fig, (a1, a2) = _figure(ncols=2, width=5.4)
    for color, (layer, s) in zip(_colors(len(series)), series.items()):
        style = ":" if layer in unused else "-"
        name = f"{layer} (unused)" if layer in unused else layer
        _line(a1, [e + 1 for e in s["angle"]["epoch"]], s["angle"]["mean"],
              s["angle"]["std"], color=color, linestyle=style, label=name)
        _line(a2, [e + 1 for e in s["ratio"]["epoch"]], s["ratio"]["mean"],
              s["ratio"]["std"], color=color, linestyle=style, label=name)
    a1.set_ylabel("path angle between M and W (deg)")
    a2.set_ylabel("norm ratio ||M|| / ||W||")
    a2.axhline(1.0, color="grey", linewidth=0.8)
    for ax in (a1, a2):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    a1.set_title(title, fontsize=9)
    if len(series) <= 12:
        _legend(a1, 7)
    else:  # deep networks: a colour bar of depth instead of 20 legend entries
        a1.text(0.98, 0.98, f"{len(series)} layers, colour = depth (viridis: first -> last)",
                transform=a1.transAxes, ha="right", va="top", fontsize=7)
    return _save(fig, path)


def accuracy_vs_density(points: dict, path: str, title: str, bands=()) -> str:
    """Accuracy against feedback density (log x), one line per rule.

    Parameters
    ----------
    points : dict
        ``{rule: [(density, mean, std or None), ...]}``.
    bands : sequence of (low, high, label)
        Horizontal reference bands (e.g. BP's).
    """
    fig, (ax,) = _figure()
    for low, high, label in bands:
        ax.axhspan(low, high, color="grey", alpha=0.2, label=label)
    density_panel(ax, points, "accuracy (%)", title)
    return _save(fig, path)


def density_panel(ax, points: dict, ylabel: str, title: str) -> None:
    """One line per rule against feedback density (log x) on ``ax``:
    ``points = {rule: [(density, value, std or None), ...]}`` (undefined values left out)."""
    for color, (rule, pts) in zip(_colors(max(1, len(points))), points.items()):
        pts = sorted(p for p in pts if p[1] is not None)
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                        yerr=[p[2] or 0.0 for p in pts], color=color, marker="o", capsize=3,
                        label=rule)
    style(ax, "feedback density rho", ylabel, title, xlog=True)


def style(ax, xlabel: str, ylabel: str, title: str, xlog=False, ylog=False,
          legend: int = 8) -> None:
    """Labels, log axes, a light grid (major and minor) and a legend where one is due."""
    if xlog:
        ax.set_xscale("log")
    if ylog:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    _legend(ax, legend)


def expansion_ratio(rows: list, published: list, path: str) -> str:
    """E5: angle and norm ratio of PFA's converged path ``B B.T W`` against ``r``.

    Parameters
    ----------
    rows : list of dict
        :func:`minigrad_pfa.analysis.expansion_ratio_analysis` rows (variant "pfa").
    published : list of (r, angle, norm ratio)
        The published points (Li & Benna 2024, Figure 3).
    """
    fig, (a1, a2) = _figure(ncols=2, width=5.4)
    rows = [x for x in rows if x["variant"] == "pfa"]
    r = [x["r"] for x in rows]
    a1.errorbar(r, [x["angle_mean"] for x in rows], yerr=[x["angle_std"] for x in rows],
                marker="o", capsize=3, label=f"measured ({rows[0]['reps']} draws)"
                if rows else "measured")
    a1.plot(r, [x["angle_approx"] for x in rows], "--", color="grey",
            label="arctan(r^-1/2) (moments)")
    a2.errorbar(r, [x["norm_ratio_mean"] for x in rows],
                yerr=[x["norm_ratio_std"] for x in rows], marker="o", capsize=3,
                label="measured")
    a2.plot(r, [x["norm_ratio_approx"] for x in rows], "--", color="grey",
            label="sqrt(1 + 1/r)")
    if published:
        a1.plot([p[0] for p in published], [p[1] for p in published], "s", color="red",
                fillstyle="none", markersize=9, label="published")
        a2.plot([p[0] for p in published], [p[2] for p in published], "s", color="red",
                fillstyle="none", markersize=9, label="published")
    a1.set_ylabel("angle(W, B B^T W) (deg)")
    a2.set_ylabel("||B B^T W|| / ||W||")
    for ax in (a1, a2):
        ax.set_xscale("log")
        ax.set_xlabel("expansion ratio r = mid / out")
        ax.grid(alpha=0.3, which="both")
        _legend(ax, 8)
    a1.set_title("E5: PFA path alignment at R = B^T W (out 100, in 256)", fontsize=9)
    return _save(fig, path)
