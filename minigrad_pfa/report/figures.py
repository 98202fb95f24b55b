"""Figures of the report's cross-protocol findings (sparse feedback across networks, decay
laws), drawn like :mod:`minigrad_pfa.plots` (matplotlib's Agg canvas, no pyplot)."""
from __future__ import annotations

from ..plots import _colors, _figure, _save, density_panel, style


def density_panels(panels: list, path: str) -> str:
    """Side-by-side density plots.

    Parameters
    ----------
    panels : list of (points, ylabel, title)
        ``points`` as in :func:`minigrad_pfa.plots.density_panel`.
    """
    fig, axes = _figure(ncols=len(panels), width=4.6)
    for ax, (points, ylabel, title) in zip(axes, panels):
        density_panel(ax, points, ylabel, title)
    return _save(fig, path)


def decay_panels(panels: list, path: str) -> str:
    """Measured mismatch decay per layer beside the law's prediction, one panel per rule.

    Parameters
    ----------
    panels : list of (title, layers, predicted)
        ``layers``: ``{layer: (epochs, measured ratios)}``; ``predicted``: ``(epochs,
        ratios)`` (the law does not depend on the layer). Log y.
    """
    fig, axes = _figure(ncols=max(1, len(panels)), width=4.6)
    for ax, (title, layers, predicted) in zip(axes, panels):
        for color, (name, (ep, val)) in zip(_colors(max(1, len(layers))), layers.items()):
            pts = [(e, v) for e, v in zip(ep, val) if v is not None and v > 0]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, lw=1,
                        alpha=0.7, label=name if len(layers) <= 6 else None)
        pts = [(e, v) for e, v in zip(*predicted) if v is not None and v > 0]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "k--", lw=2,
                    label="decay law (predicted)")
        style(ax, "epoch", "mismatch ||D_t|| / ||D_ref||", title, ylog=True, legend=7)
    return _save(fig, path)
