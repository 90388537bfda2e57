"""Line charts drawn on the server as SVG text: the web UI carries no charting script.

The UI's Content-Security-Policy allows no inline script or style, so a chart is an inline
``<svg>`` whose colours and fonts are presentation attributes (which the policy does not
govern), and which reads the same when saved as a file. Every text in it is escaped here and
stripped of the characters XML 1.0 cannot hold, because some of it is other organisations'
choice (a provider's name is what its node registered). A figure that is not a finite number
is left out rather than drawn, so no ``NaN`` reaches a coordinate, and a point outside fixed
bounds (an accuracy above 1 that a peer reported) is drawn at the edge of the plot, its real
value kept in the point's tooltip.

:func:`line_chart` draws any series; :func:`federation_series` picks a federation's series
from its rounds (see there for which round's figures describe which model).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

# colours a reader with a colour vision deficiency can tell apart (Okabe and Ito's palette,
# without its yellow, too pale on white); after them the lines differ by their dashes too
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9")
DASHES = ("", "6 3", "2 3", "8 3 2 3")
EMPHASIS = "#1d2530"
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff\ud800-\udfff]")
CHAR_WIDTH = 6.6  # px of a 12 px system-ui character, on average: how long a legend label may be


@dataclass(frozen=True)
class Series:
    """One line: its label (shown in the legend) and its (x, y) points."""

    label: str
    points: tuple[tuple[float, float], ...]
    emphasis: bool = False  # drawn thicker and darker, first in the legend


@dataclass(frozen=True)
class Axis:
    """An axis: its label, fixed bounds where the quantity has them (accuracy: 0 to 1;
    ``None`` takes the bound from the data) and whether its ticks are whole numbers."""

    label: str
    lower: float | None = None
    upper: float | None = None
    integer: bool = False


def text(value: object, limit: int | None = None) -> str:
    """``value`` as text safe in SVG/HTML content and attributes, cut to ``limit`` characters."""
    clean = _NOT_XML.sub("", str(value))
    if limit is not None and len(clean) > limit:
        clean = clean[: max(1, limit - 1)] + "…"
    return escape(clean, quote=True)


def finite(value: object) -> float | None:
    """A JSON figure as a float when it is a finite number (not a bool, a string or NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def nice_ticks(lower: float, upper: float, *, count: int = 6, integer: bool = False) -> list[float]:
    """Ticks at 1, 2 or 5 times a power of ten, about ``count`` of them from ``lower`` to ``upper``."""
    span = upper - lower
    if not span > 0:
        return [lower]
    step = nice_step(span / max(1, count - 1))
    if integer:
        step = max(1.0, math.ceil(step))
    first = math.ceil(lower / step - 1e-9) * step
    ticks = []
    k = 0
    while first + k * step <= upper + step * 1e-9:
        ticks.append(round(first + k * step, 12))
        k += 1
    return ticks


def nice_step(raw: float) -> float:
    """The smallest of 1, 2, 5 times 10 to a power, at least ``raw``."""
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 5.0, 10.0):
        if raw <= factor * power * (1 + 1e-9):
            return factor * power
    return 10.0 * power


def tick_label(value: float, step: float) -> str:
    """A tick's number with as many decimals as its step needs (0.2 → one, 5 → none)."""
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    return f"{value:.{decimals}f}"


def _bounds(axis: Axis, values: list[float], *, integer: bool) -> tuple[float, float, list[float]]:
    """The axis' range and its ticks: fixed bounds kept, open ones rounded out to a tick."""
    lower = axis.lower if axis.lower is not None else (min(values) if values else 0.0)
    upper = axis.upper if axis.upper is not None else (max(values) if values else 1.0)
    if upper <= lower:
        upper = lower + 1.0
    ticks = nice_ticks(lower, upper, integer=integer)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    if axis.lower is None:
        lower = math.floor(lower / step + 1e-9) * step
    if axis.upper is None:
        upper = math.ceil(upper / step - 1e-9) * step
    return lower, upper, nice_ticks(lower, upper, integer=integer)


@dataclass(frozen=True)
class _Frame:
    """Where the plot sits in the picture and how figures map onto it."""

    left: float
    top: float
    width: float
    height: float
    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float

    @property
    def bottom(self) -> float:
        return self.top + self.height

    def sx(self, value: float) -> float:
        """A figure's x position; figures outside the axis sit on its edge."""
        return (
            self.left
            + (min(max(value, self.x_lo), self.x_hi) - self.x_lo) / (self.x_hi - self.x_lo) * self.width
        )

    def sy(self, value: float) -> float:
        return (
            self.bottom
            - (min(max(value, self.y_lo), self.y_hi) - self.y_lo) / (self.y_hi - self.y_lo) * self.height
        )


def line_chart(
    series: Sequence[Series],
    *,
    chart_id: str,
    title: str,
    x: Axis,
    y: Axis,
    width: int = 520,
    plot_height: int = 220,
    empty: str = "no figures yet",
) -> str:
    """An SVG line chart: axes with ticks, one ``<polyline>`` per series with points (and a
    marker with a tooltip at each point, so a one-point series shows), and a legend under it.
    A series without finite points draws no line; its legend entry says so."""
    lines = [
        Series(s.label, tuple(sorted(p for p in s.points if _finite_point(p))), s.emphasis) for s in series
    ]
    xs = [px for s in lines for px, _ in s.points]
    ys = [py for s in lines for _, py in s.points]
    x_lo, x_hi, x_ticks = _bounds(x, xs, integer=x.integer)
    y_lo, y_hi, y_ticks = _bounds(y, ys, integer=y.integer)
    frame = _Frame(64, 34, width - 64 - 16, plot_height, x_lo, x_hi, y_lo, y_hi)
    longest = max((len(s.label) + (0 if s.points else 13) for s in lines), default=0)  # " (no figures)"
    columns = 2 if len(lines) > 1 and longest * CHAR_WIDTH + 40 <= frame.width / 2 else 1
    legend_top = frame.bottom + 52
    height = legend_top + math.ceil(len(lines) / columns) * 20 + 8
    cid = text(chart_id)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height:.0f}" '
        f'width="{width}" height="{height:.0f}" role="img" aria-labelledby="{cid}-title {cid}-desc" '
        'font-family="system-ui, sans-serif" font-size="12" fill="#1d2530">',
        f'<title id="{cid}-title">{text(title)}</title>',
        f'<desc id="{cid}-desc">{_description(lines, x, y)}</desc>',
        f'<text x="{frame.left:.0f}" y="20" font-size="14" font-weight="600">{text(title)}</text>',
        *_axes(frame, x, y, x_ticks, y_ticks),
    ]
    if not xs:
        out.append(
            f'<text x="{frame.left + frame.width / 2:.1f}" y="{frame.top + frame.height / 2:.1f}" '
            f'text-anchor="middle" fill="#5b6675">{text(empty)}</text>'
        )
    for index in sorted(range(len(lines)), key=lambda i: lines[i].emphasis):  # emphasis on top
        out.extend(_line(frame, lines[index], _look(lines, index), x.label))
    column_w = frame.width / columns
    for index, line in enumerate(lines):
        colour, dash, stroke = _look(lines, index)
        lx = frame.left + (index % columns) * column_w
        ly = legend_top + (index // columns) * 20
        entry = line.label if line.points else f"{line.label} (no figures)"
        room = int((column_w - 40) / CHAR_WIDTH)
        out.append(
            f'<line x1="{lx:.1f}" y1="{ly:.1f}" x2="{lx + 26:.1f}" y2="{ly:.1f}" stroke="{colour}" '
            f'stroke-width="{stroke}"{_dashes(dash)}/>'
            f'<text x="{lx + 32:.1f}" y="{ly + 4:.1f}">{text(entry, room)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _axes(frame: _Frame, x: Axis, y: Axis, x_ticks: list[float], y_ticks: list[float]) -> list[str]:
    """Grid lines and labels at the y ticks, marks and labels at the x ticks, both axis labels."""
    out = []
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
    right = frame.left + frame.width
    for tick in y_ticks:
        py = frame.sy(tick)
        out.append(
            f'<line x1="{frame.left:.0f}" y1="{py:.1f}" x2="{right:.0f}" y2="{py:.1f}" stroke="#d9dee5"/>'
            f'<text x="{frame.left - 6:.0f}" y="{py + 4:.1f}" text-anchor="end">'
            f"{tick_label(tick, y_step)}</text>"
        )
    for tick in x_ticks:
        px = frame.sx(tick)
        out.append(
            f'<line x1="{px:.1f}" y1="{frame.bottom:.0f}" x2="{px:.1f}" y2="{frame.bottom + 5:.0f}" '
            f'stroke="#5b6675"/><text x="{px:.1f}" y="{frame.bottom + 18:.0f}" text-anchor="middle">'
            f"{tick_label(tick, x_step)}</text>"
        )
    middle = frame.top + frame.height / 2
    out.append(
        f'<path d="M{frame.left:.0f} {frame.top:.0f}V{frame.bottom:.0f}H{right:.0f}" fill="none" '
        f'stroke="#5b6675"/><text x="{frame.left + frame.width / 2:.1f}" y="{frame.bottom + 38:.0f}" '
        f'text-anchor="middle">{text(x.label)}</text><text x="14" y="{middle:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {middle:.1f})">{text(y.label)}</text>'
    )
    return out


def _line(frame: _Frame, line: Series, look: tuple[str, str, int], x_label: str) -> list[str]:
    """A series' polyline and a marker per point whose tooltip gives the figure."""
    if not line.points:
        return []
    colour, dash, stroke = look
    label = text(line.label)
    points = " ".join(f"{frame.sx(px):.1f},{frame.sy(py):.1f}" for px, py in line.points)
    out = [
        f"<g><title>{label}</title>"
        f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="{stroke}" '
        f'stroke-linejoin="round"{_dashes(dash)}/>'
    ]
    for px, py in line.points:
        out.append(
            f'<circle cx="{frame.sx(px):.1f}" cy="{frame.sy(py):.1f}" r="{stroke + 1}" fill="{colour}">'
            f"<title>{label}: {_number(py)} ({text(x_label)} {_number(px)})</title></circle>"
        )
    out.append("</g>")
    return out


def _dashes(dash: str) -> str:
    return f' stroke-dasharray="{dash}"' if dash else ""


def _finite_point(point: tuple[float, float]) -> bool:
    return finite(point[0]) is not None and finite(point[1]) is not None


def _look(lines: Sequence[Series], index: int) -> tuple[str, str, int]:
    """(colour, dash pattern, stroke width) of a line: the emphasised one dark and thick, the
    others through the palette, then through the dash patterns."""
    if lines[index].emphasis:
        return EMPHASIS, "", 3
    plain = sum(1 for s in lines[:index] if not s.emphasis)
    return PALETTE[plain % len(PALETTE)], DASHES[(plain // len(PALETTE)) % len(DASHES)], 2


def _number(value: float) -> str:
    return f"{value:.4g}"


def _description(lines: Sequence[Series], x: Axis, y: Axis) -> str:
    """The chart in a sentence for a screen reader: each line's last figure."""
    drawn = [s for s in lines if s.points]
    if not drawn:
        return text(f"{y.label} by {x.label}: no figures yet.")
    parts = [f"{s.label} {_number(s.points[-1][1])} at {_number(s.points[-1][0])}" for s in drawn]
    return text(f"{y.label} by {x.label}; the last figure of each line: " + "; ".join(parts) + ".")


# -- a federation's charts ------------------------------------------------------------------

OVERALL = "all providers (example-weighted)"


def federation_series(
    rounds: Sequence[Mapping[str, Any]], metric: str, names: Mapping[str, str]
) -> list[Series]:
    """The overall line and one line per provider of ``metric`` (``accuracy`` or ``loss``).

    A round's ``metrics`` are the providers' evaluation of the global weights the round
    *started from*, so round n's figures are drawn at x = n - 1, "the global model after
    round n - 1" (x = 0 is the initial model); the closing evaluate-only round, numbered one
    past the last training round, thereby lands on the final model. Providers are named by
    ``names`` (address → label), their address when it has none, and sorted by that name.
    """
    overall: list[tuple[float, float]] = []
    per: dict[str, list[tuple[float, float]]] = {}
    for rnd in rounds:
        number = finite(rnd.get("round"))
        metrics = rnd.get("metrics")
        if number is None or not isinstance(metrics, Mapping):
            continue
        at = number - 1
        value = finite(metrics.get(metric))
        if value is not None:
            overall.append((at, value))
        providers = metrics.get("providers")
        for address, figures in providers.items() if isinstance(providers, Mapping) else ():
            value = finite(figures.get(metric)) if isinstance(figures, Mapping) else None
            if value is not None:
                per.setdefault(str(address), []).append((at, value))
    lines = [Series(names.get(a, a), tuple(points)) for a, points in per.items()]
    return [Series(OVERALL, tuple(overall), emphasis=True), *sorted(lines, key=lambda s: s.label.lower())]
