"""The frontier chart's layout: one legend naming every curve, and the budget's label clear of
every marker (checked on the Vega-Lite spec; rendered once with vl-convert to confirm)."""

from __future__ import annotations

import math

from mixviz.report import charts


def _points(*xy):
    return [{"avg_bits": x, "avg_bits_no_scale": x, "predicted_loss": y} for x, y in xy]


FRONT = {
    "optimal": _points((4.25, 0.2), (4.45, 0.035), (6.0, 0.003), (8.25, 0.0003)),
    "head": _points((4.45, 0.3), (6.25, 0.01)),  # the highest point, right at the budget
    "tail": _points((4.45, 0.28)),
    "uniform": _points((4.25, 0.3), (8.25, 0.0003)),
    "llamacpp": _points((4.6, 0.05)),
    "refined (measured rounds)": _points((4.45, 0.03)),
}


def _layers(spec):
    return {layer["mark"]["type"]: layer for layer in spec["layer"]}


def test_one_legend_names_every_curve_optimal_included():
    spec = charts.frontier_chart(FRONT, 4.45)
    layers = _layers(spec)
    colour = layers["line"]["encoding"]["color"]
    shape = layers["point"]["encoding"]["shape"]
    # same field, same domain: Vega-Lite merges the two into one legend of every curve
    assert colour["field"] == shape["field"] == "strategy"
    assert colour["scale"]["domain"] == shape["scale"]["domain"] == list(FRONT)
    shapes = dict(zip(shape["scale"]["domain"], shape["scale"]["range"], strict=True))
    assert shapes["optimal"] == shapes["refined (measured rounds)"] == "circle"  # lines
    baselines = [shapes[s] for s in ("head", "tail", "uniform", "llamacpp")]
    assert len(set(baselines)) == 4 and "circle" not in baselines


def test_budget_label_is_drawn_above_the_plot_where_no_marker_is():
    spec = charts.frontier_chart(FRONT, 4.45)
    text = _layers(spec)["text"]["mark"]
    point_radius = math.sqrt(_layers(spec)["point"]["mark"]["size"]) / 2
    # y is in pixels from the plot's top edge; every marker's centre lies at y >= 0
    assert text["baseline"] == "bottom" and text["y"] <= -(point_radius + 1)
    font = text.get("fontSize", 11)
    assert spec["title"]["offset"] >= font - text["y"]  # and under the title, not over it
    assert spec["datasets"]["marker"] == [{"bits": 4.45, "label": "4.45 bits"}]
