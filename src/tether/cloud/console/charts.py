"""Small SVG charts drawn on the server: sparklines, time-series line charts and gauges.

Pure functions from numbers to SVG markup (no I/O, no JavaScript): the page shows them as
they are, under a Content-Security-Policy that allows no inline script or style. Colours come
from CSS classes (``series-0``…), so the stylesheet decides them, dark mode included. Every
chart carries a text alternative (``role="img"`` with ``aria-label``) that states the figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape

from markupsafe import Markup

__all__ = ["downsample", "gauge", "line_chart", "sparkline"]


def _fmt(value: float) -> str:
    if value == 0 or 0.01 <= abs(value) < 100_000:
        text = f"{value:.2f}".rstrip("0").rstrip(".")
        return text or "0"
    return f"{value:.3g}"


def downsample(points: Sequence[tuple[float, float]], at_most: int) -> list[tuple[float, float]]:
    """At most *at_most* points keeping each bucket's extremes, so spikes stay visible."""
    if len(points) <= at_most or at_most < 4:
        return list(points)
    buckets = at_most // 2
    size = len(points) / buckets
    out: list[tuple[float, float]] = []
    for i in range(buckets):
        chunk = points[int(i * size) : int((i + 1) * size)] or points[-1:]
        low = min(chunk, key=lambda p: p[1])
        high = max(chunk, key=lambda p: p[1])
        out.extend(sorted({low, high}))
    return out


def _path(coords: Sequence[tuple[float, float]], *, step: bool) -> str:
    parts: list[str] = []
    previous_y: float | None = None
    for i, (x, y) in enumerate(coords):
        if i == 0:
            parts.append(f"M{x:.1f} {y:.1f}")
        elif step and previous_y is not None:
            parts.append(f"H{x:.1f}V{y:.1f}")
        else:
            parts.append(f"L{x:.1f} {y:.1f}")
        previous_y = y
    return "".join(parts)


def sparkline(
    points: Sequence[tuple[float, float]],
    *,
    width: int = 120,
    height: int = 28,
    step: bool = False,
    label: str = "",
    unit: str = "",
) -> Markup:
    """A sparkline of (time, value) points, oldest first, with a dot on the latest value."""
    unit_text = f" {unit}" if unit else ""
    if len(points) < 2:
        return Markup(  # noqa: S704 (only numbers and escaped text)
            f'<svg class="spark spark-empty" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{escape(label)}: not enough values yet">'
            f'<line x1="2" y1="{height / 2}" x2="{width - 2}" y2="{height / 2}"/></svg>'
        )
    points = downsample(points, width)
    t0, t1 = points[0][0], points[-1][0]
    values = [v for _, v in points]
    low, high = min(values), max(values)
    pad = 3.0
    span_t = (t1 - t0) or 1.0
    span_v = (high - low) or 1.0
    flat = high == low

    def xy(t: float, v: float) -> tuple[float, float]:
        x = pad + (t - t0) / span_t * (width - 2 * pad)
        y = height / 2 if flat else pad + (high - v) / span_v * (height - 2 * pad)
        return x, y

    coords = [xy(t, v) for t, v in points]
    last_x, last_y = coords[-1]
    summary = (
        f"{escape(label)}: latest {_fmt(values[-1])}{escape(unit_text)}, "
        f"range {_fmt(low)} to {_fmt(high)}{escape(unit_text)} over {len(points)} values"
    )
    return Markup(  # noqa: S704 (only numbers and escaped text)
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{summary}"><title>{summary}</title>'
        f'<path d="{_path(coords, step=step)}"/>'
        f'<circle cx="{last_x:.1f}" cy="{last_y:.1f}" r="2.2"/></svg>'
    )


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for m in (1, 2, 2.5, 5, 10):
        candidate = m * 10**exponent
        if candidate >= value:
            return float(candidate)
    return float(10 ** (exponent + 1))


def _clock(ts: float, span: float) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%d %b %H:%M" if span > 86400 else "%H:%M")


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    unit: str = "",
    y_max: float | None = None,
    width: int = 480,
    height: int = 170,
) -> Markup:
    """A time-series chart: one line per named series, a value axis, start and end times."""
    drawn = {name: list(pts) for name, pts in series.items() if len(pts) >= 2}
    if not drawn:
        return Markup(  # noqa: S704
            f'<p class="empty">{escape(title)}: not enough reports yet for a chart.</p>'
        )
    left, right, top, bottom = 44, 8, 10, 24
    t0 = min(p[0] for pts in drawn.values() for p in pts)
    t1 = max(p[0] for pts in drawn.values() for p in pts)
    peak = max(p[1] for pts in drawn.values() for p in pts)
    top_value = y_max if y_max is not None else _nice_max(peak)
    if y_max is None and all(float(p[1]).is_integer() for pts in drawn.values() for p in pts):
        for _ in range(8):  # counts: whole numbers on every grid line
            if top_value >= 4 and top_value % 4 == 0:
                break
            top_value *= 2
    span_t = (t1 - t0) or 1.0
    plot_w, plot_h = width - left - right, height - top - bottom

    def xy(t: float, v: float) -> tuple[float, float]:
        return (
            left + (t - t0) / span_t * plot_w,
            top + (1 - min(max(v, 0.0), top_value) / top_value) * plot_h,
        )

    unit_text = f" {unit}" if unit else ""
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="{_ident(title)}-t">'
    ]
    latest = ", ".join(
        f"{escape(name)} {_fmt(pts[-1][1])}{escape(unit_text)}" for name, pts in drawn.items()
    )
    parts.append(f'<title id="{_ident(title)}-t">{escape(title)}: latest {latest}</title>')
    for i in range(5):
        value = top_value * i / 4
        _, y = xy(t0, value)
        parts.append(
            f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}"/>'
        )
        parts.append(
            f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_fmt(value)}</text>"
        )
    parts.append(
        f'<text class="axis" x="{left}" y="{height - 6}">{_clock(t0, span_t)}</text>'
        f'<text class="axis" x="{width - right}" y="{height - 6}" text-anchor="end">'
        f"{_clock(t1, span_t)}</text>"
    )
    for index, (name, pts) in enumerate(drawn.items()):
        coords = [xy(t, v) for t, v in downsample(pts, plot_w)]
        parts.append(
            f'<path class="line series-{index % 6}" d="{_path(coords, step=False)}">'
            f"<title>{escape(name)}</title></path>"
        )
    parts.append("</svg>")
    legend = "".join(
        f'<li><span class="key series-{i % 6}"></span>{escape(name)} '
        f"<b>{_fmt(pts[-1][1])}{escape(unit_text)}</b></li>"
        for i, (name, pts) in enumerate(drawn.items())
    )
    return Markup(  # noqa: S704 (only numbers and escaped text)
        f'<figure class="chart-box"><figcaption>{escape(title)}</figcaption>{"".join(parts)}'
        f'<ul class="legend">{legend}</ul></figure>'
    )


def gauge(value: float | None, *, label: str, maximum: float = 100.0, unit: str = "%") -> Markup:
    """A horizontal bar for a share (0..maximum), coloured by how full it is."""
    if value is None:
        return Markup(  # noqa: S704
            f'<div class="gauge"><span class="gauge-label">{escape(label)}</span>'
            f'<span class="gauge-value">\u2013</span></div>'
        )
    share = min(max(value / maximum, 0.0), 1.0) if maximum else 0.0
    level = "high" if share >= 0.9 else "mid" if share >= 0.7 else "ok"
    text = f"{_fmt(value)}{' ' + unit if unit and unit != '%' else unit}"
    return Markup(  # noqa: S704 (only numbers and escaped text)
        f'<div class="gauge"><span class="gauge-label">{escape(label)}</span>'
        f'<svg class="gauge-bar {level}" viewBox="0 0 100 8" preserveAspectRatio="none" '
        f'role="img" aria-label="{escape(label)} {escape(text)}">'
        f'<rect class="track" width="100" height="8" rx="2"/>'
        f'<rect class="fill" width="{share * 100:.1f}" height="8" rx="2"/></svg>'
        f'<span class="gauge-value">{escape(text)}</span></div>'
    )


def _ident(text: str) -> str:
    return "c-" + "".join(ch if ch.isalnum() else "-" for ch in text.lower())[:40]
