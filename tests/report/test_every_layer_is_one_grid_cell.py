"""Every layer is one cell of the block × module grid, fused projections included (issue 13.9)."""

from __future__ import annotations

import torch

from mixviz.allocation.problem import Allocation
from mixviz.models.inventory import grid_columns, inventory
from mixviz.report import charts


def _phi3_layers():
    from transformers import Phi3Config, Phi3ForCausalLM

    cfg = Phi3Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
        pad_token_id=0,
    )
    with torch.device("meta"):
        model = Phi3ForCausalLM(cfg)
    return inventory(model)


def _allocation(layers):
    choice = {x.name: ("MXFP4" if i % 2 else "MXFP8") for i, x in enumerate(layers)}
    return Allocation("optimal", 6.0, 6.0, 6.0, 0.0, choice, 0.0)


def test_fused_projections_each_get_a_cell():
    layers = [x for x in _phi3_layers() if x.block is not None]
    names = {x.name.rsplit(".", 1)[-1] for x in layers}
    assert {"qkv_proj", "gate_up_proj"} <= names  # Phi-3 fuses them: both of kind "other"
    columns = grid_columns(layers)
    assert len({(x.block, columns[x.name]) for x in layers}) == len(layers)

    alloc = _allocation(layers)
    styler, blocks, kinds, cells = charts.allocation_grid(layers, alloc, ["MXFP4", "MXFP8"])
    assert {x.name for x in cells.values()} == {x.name for x in layers}
    frame = styler.data
    for (b, k), x in cells.items():
        assert frame.loc[b, k] == alloc.layers[x.name]

    fig = charts.allocation_heatmap(layers, alloc, ["MXFP4", "MXFP8"], selectable=True)
    cell_trace = next(t for t in fig.data if t.name == "cells")
    assert sorted(c[0] for c in cell_trace.customdata) == sorted(x.name for x in layers)
    # each marker sits on its own (column, block)
    assert len(set(zip(cell_trace.x, cell_trace.y, strict=True))) == len(layers)


def test_plain_llama_columns_are_kinds(tiny_layers):
    columns = grid_columns(tiny_layers)
    assert set(columns.values()) == {"q", "k", "v", "o", "gate", "up", "down"}
