"""The server-rendered SVG charts (node/ui/charts.py): well-formed XML whatever the labels,
one polyline per series with a point per finite figure where the axes say, escaped text,
and a federation's rounds read as "the global model after round n - 1"."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from node.ui.charts import (
    OVERALL,
    Axis,
    Series,
    federation_series,
    line_chart,
    nice_ticks,
    tick_label,
)

NS = "{http://www.w3.org/2000/svg}"
X = Axis("global model after round", lower=0, integer=True)
ACCURACY = Axis("accuracy", lower=0.0, upper=1.0)
NUMERIC = ("x", "y", "x1", "y1", "x2", "y2", "cx", "cy", "r", "width", "height")


def _draw(series: list[Series], y: Axis = ACCURACY, **kw: object) -> tuple[str, ET.Element]:
    svg = line_chart(series, chart_id="c", title="Accuracy", x=X, y=y, **kw)  # type: ignore[arg-type]
    return svg, ET.fromstring(svg)


def _points(polyline: ET.Element) -> list[tuple[float, float]]:
    return [(float(a), float(b)) for a, b in (p.split(",") for p in polyline.get("points", "").split())]


def _texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{NS}text")]


def _all_numbers(root: ET.Element) -> list[float]:
    numbers = []
    for element in root.iter():
        for name in NUMERIC:
            if name in element.attrib:
                numbers.append(float(element.attrib[name]))
        if "points" in element.attrib:
            numbers += [c for point in _points(element) for c in point]
        if "viewBox" in element.attrib:
            numbers += [float(v) for v in element.attrib["viewBox"].split()]
    return numbers


def test_one_polyline_per_series_with_a_point_per_figure() -> None:
    series = [
        Series("overall", ((0, 0.1), (1, 0.5), (2, 0.8), (3, 0.9)), emphasis=True),
        Series("Acme", ((0, 0.2), (1, 0.6), (2, 0.7))),
        Series("Beta", ((1, 0.4), (3, 0.95))),
    ]
    _, root = _draw(series)
    polylines = root.findall(f".//{NS}polyline")
    assert sorted(len(_points(p)) for p in polylines) == [2, 3, 4]
    assert len(root.findall(f".//{NS}circle")) == 9  # a marker at every point
    assert root.get("role") == "img" and root.get("aria-labelledby") == "c-title c-desc"
    assert root.find(f"{NS}title").text == "Accuracy"  # type: ignore[union-attr]
    # the legend names every series, the emphasised one first
    legend = [t for t in _texts(root) if t in ("overall", "Acme", "Beta")]
    assert legend == ["overall", "Acme", "Beta"]
    # the emphasised line is drawn last (on top), thicker
    assert polylines[-1].get("stroke-width") == "3" and len(_points(polylines[-1])) == 4


def test_points_sit_where_the_axes_put_them() -> None:
    """Checked against the frame: x from 0 to 4 across the plot, y from 0 to 1 up it."""
    _, root = _draw([Series("a", ((0, 0.0), (2, 0.5), (4, 1.0)))])
    axis = root.find(f".//{NS}path")
    assert axis is not None
    left, top, bottom, right = (float(v) for v in re.findall(r"[\d.]+", axis.get("d", "")))
    assert _points(root.findall(f".//{NS}polyline")[0]) == [
        (left, bottom),
        ((left + right) / 2, (top + bottom) / 2),
        (right, top),
    ]
    labels = _texts(root)
    assert [t for t in labels if re.fullmatch(r"\d", t)] == ["0", "1", "2", "3", "4"]
    assert [t for t in labels if re.fullmatch(r"0\.\d|1\.0", t)] == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    assert "global model after round" in labels and "accuracy" in labels


def test_names_are_text_however_hostile() -> None:
    hostile = '<script>alert("x")</script>&amp;\x00\x1b\x7f\ud800"><g onload="1'
    svg, root = _draw([Series(hostile, ((0, 0.5), (1, 0.6)))], empty=hostile)
    assert "<script" not in svg and "onload=" not in svg.replace("onload=&quot;", "")
    clean = '<script>alert("x")</script>&amp;"><g onload="1'
    assert clean in _texts(root)  # the legend shows the name as it is, minus what XML cannot hold
    group_titles = [g.find(f"{NS}title") for g in root.iter(f"{NS}g")]
    assert [t.text for t in group_titles if t is not None] == [clean]
    # every element is the chart's own: nothing the name brought in
    assert {e.tag.removeprefix(NS) for e in root.iter()} <= {
        "svg",
        "title",
        "desc",
        "text",
        "line",
        "path",
        "g",
        "polyline",
        "circle",
    }
    # the chart id and title are escaped too
    other = line_chart([], chart_id='x" onload="y', title="<b>t</b>", x=X, y=ACCURACY)
    parsed = ET.fromstring(other)
    assert parsed.get("aria-labelledby") == 'x" onload="y-title x" onload="y-desc'
    assert "onload" not in parsed.attrib


def test_no_data_draws_axes_and_says_so() -> None:
    _, root = _draw([Series(OVERALL, (), emphasis=True)])
    assert root.findall(f".//{NS}polyline") == [] and root.findall(f".//{NS}circle") == []
    texts = _texts(root)
    assert "no figures yet" in texts and f"{OVERALL} (no figures)" in texts
    assert "no figures yet" in (root.find(f"{NS}desc").text or "")  # type: ignore[union-attr]
    _, bare = _draw([])
    assert "no figures yet" in _texts(bare)
    assert all(math.isfinite(v) for v in _all_numbers(bare))


def test_one_point_is_drawn_on_a_real_axis() -> None:
    _, root = _draw([Series("only", ((0, 0.42),))], y=Axis("loss", lower=0.0))
    (polyline,) = root.findall(f".//{NS}polyline")
    assert len(_points(polyline)) == 1 and len(root.findall(f".//{NS}circle")) == 1
    numbers = _all_numbers(root)
    assert numbers and all(math.isfinite(v) for v in numbers)
    labels = _texts(root)
    assert "0" in labels and "1" in labels  # x from 0 to 1, not a zero-width axis
    assert "0.5" in labels  # the open loss axis rounded up to a tick above 0.42


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_figures_that_are_not_finite_are_left_out(bad: float) -> None:
    svg, root = _draw(
        [Series("a", ((0, 0.1), (1, bad), (2, 0.3))), Series("b", ((bad, 0.5),))],
        y=Axis("loss", lower=0.0),
    )
    polylines = root.findall(f".//{NS}polyline")
    assert [len(_points(p)) for p in polylines] == [2]
    assert "b (no figures)" in _texts(root)
    assert all(math.isfinite(v) for v in _all_numbers(root))
    assert not re.search(r"nan|inf", svg.lower().replace("information", ""))


def test_figures_outside_fixed_bounds_stay_in_the_plot_with_their_value_in_the_tooltip() -> None:
    _, root = _draw([Series("liar", ((0, 7.0), (1, -3.0)))])
    axis = root.find(f".//{NS}path")
    assert axis is not None
    left, top, bottom, right = (float(v) for v in re.findall(r"[\d.]+", axis.get("d", "")))
    assert _points(root.findall(f".//{NS}polyline")[0]) == [(left, top), (right, bottom)]
    tips = [t.text for c in root.iter(f"{NS}circle") for t in c.iter(f"{NS}title")]
    assert tips == ["liar: 7 (global model after round 0)", "liar: -3 (global model after round 1)"]


def test_long_names_are_cut_in_the_legend_and_whole_in_the_tooltip() -> None:
    name = "A very long organisation name that a peer registered " * 3
    _, root = _draw([Series(name, ((0, 0.5),))])
    legend = [t for t in _texts(root) if t.startswith("A very")]
    assert len(legend) == 1 and legend[0].endswith("…") and len(legend[0]) < 80
    assert root.find(f".//{NS}g/{NS}title").text == name  # type: ignore[union-attr]


def test_many_lines_look_different() -> None:
    series = [Series(f"p{i}", ((0, i / 30),)) for i in range(24)]
    _, root = _draw(series)
    looks = {(p.get("stroke"), p.get("stroke-dasharray")) for p in root.findall(f".//{NS}polyline")}
    assert len(looks) == 24
    assert float(root.get("height", "0")) > 12 * 20  # the legend grew to hold them


def test_nice_ticks() -> None:
    assert nice_ticks(0, 1) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0, 20, integer=True) == [0, 5, 10, 15, 20]
    assert nice_ticks(0, 3, integer=True) == [0, 1, 2, 3]
    assert nice_ticks(0, 0.03) == [0.0, 0.01, 0.02, 0.03]
    assert nice_ticks(0, 2.3) == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert nice_ticks(1, 1) == [1]
    assert [tick_label(t, 0.002) for t in nice_ticks(0, 0.01)] == [
        "0.000",
        "0.002",
        "0.004",
        "0.006",
        "0.008",
        "0.010",
    ]
    assert tick_label(150.0, 50.0) == "150"


def test_a_federations_rounds_are_drawn_at_the_model_they_evaluated() -> None:
    acme, beta = "0x" + "a" * 40, "0x" + "b" * 40
    rounds: list[dict[str, Any]] = [
        {
            "round": 1,
            "metrics": {"accuracy": 0.1, "providers": {acme: {"accuracy": 0.1}, beta: {"accuracy": 0.2}}},
        },
        {"round": 2, "metrics": {}},  # open: no figures yet
        {
            "round": 3,
            "metrics": {"accuracy": 0.8, "providers": {acme: {"accuracy": "0.9"}, beta: {"accuracy": 0.7}}},
        },
        # the evaluate-only round after 3 training rounds: the final model
        {
            "round": 4,
            "metrics": {"accuracy": 0.9, "providers": {acme: {"accuracy": True}, beta: {"accuracy": 0.88}}},
        },
        {"round": 5, "metrics": "garbage"},
        {"round": "six", "metrics": {"accuracy": 0.5}},
    ]
    overall, *providers = federation_series(rounds, "accuracy", {beta: "Beta Analytics"})
    assert overall == Series(OVERALL, ((0, 0.1), (2, 0.8), (3, 0.9)), emphasis=True)
    assert providers == [
        Series(acme, ((0, 0.1),)),  # a string and a bool are not figures; no name: the address
        Series("Beta Analytics", ((0, 0.2), (2, 0.7), (3, 0.88))),
    ]
    assert federation_series([], "loss", {}) == [Series(OVERALL, (), emphasis=True)]
