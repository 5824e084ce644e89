"""Line plots written as PNG: matplotlib (Agg) when installed, otherwise a small Pillow renderer.

Only what `covseg evaluate` needs: one or more (x, y) series on [0, 1]² axes with labels.
"""
from __future__ import annotations

import io
import logging
from typing import Sequence

from .atomic import atomic_write

log = logging.getLogger(__name__)

__all__ = ["line_plot_png"]

_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def _matplotlib_png(series, title, xlabel, ylabel) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4.2), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for label, xs, ys in series:
        ax.plot(xs, ys, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1 or series[0][0]:
        ax.legend(loc="best", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _pillow_png(series, title, xlabel, ylabel) -> bytes:
    from PIL import Image, ImageDraw

    w, h, left, right, top, bottom = 520, 440, 60, 20, 36, 50
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    pw, ph = w - left - right, h - top - bottom

    def to_px(x: float, y: float) -> tuple[float, float]:
        return left + x * pw, top + (1 - min(max(y, 0.0), 1.0)) * ph

    for i in range(11):  # grid and ticks every 0.1
        t = i / 10
        x, _ = to_px(t, 0)
        _, y = to_px(0, t)
        d.line([(x, top), (x, top + ph)], fill=(230, 230, 230))
        d.line([(left, y), (left + pw, y)], fill=(230, 230, 230))
        if i % 2 == 0:
            d.text((x - 8, top + ph + 4), f"{t:.1f}", fill="black")
            d.text((left - 28, y - 6), f"{t:.1f}", fill="black")
    d.rectangle([left, top, left + pw, top + ph], outline="black")
    for j, (label, xs, ys) in enumerate(series):
        colour = _COLOURS[j % len(_COLOURS)]
        pts = [to_px(float(x), float(y)) for x, y in zip(xs, ys)]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        if label:
            d.text((left + pw - 150, top + 8 + 14 * j), label, fill=colour)
    d.text((left, 10), title, fill="black")
    d.text((left + pw // 2 - 30, h - 20), xlabel, fill="black")
    d.text((4, top - 20), ylabel, fill="black")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def line_plot_png(path: str, series: Sequence[tuple[str, Sequence[float], Sequence[float]]], title: str = "",
                  xlabel: str = "", ylabel: str = "") -> str:
    """Write a line plot of ``series`` = [(label, xs, ys), …] (values in [0, 1]) to ``path`` atomically.

    Returns "matplotlib" or "pillow", the renderer used. Raises ValueError on an empty series list.
    """
    if not series:
        raise ValueError("line_plot_png: nothing to plot")
    try:
        data, renderer = _matplotlib_png(series, title, xlabel, ylabel), "matplotlib"
    except ImportError:
        log.debug("matplotlib not installed: plotting with Pillow")
        data, renderer = _pillow_png(series, title, xlabel, ylabel), "pillow"
    with atomic_write(path) as fh:
        fh.write(data)
    return renderer
