"""iFormer's single-head modulation attention (``SHMA``): one head on the feature map, its query
and key 1x1 convolutions (each with a BN) narrower than its values, which a gate as wide
multiplies (values and gate are the halves of one layer's sigmoid). The tracer mapped channels
through timm's flatten onto tokens, and left every attention whole. Now each query and key
channel is cut with a value channel, the other values on their own, each with its gate
(``_zoo.single_head_modulation_trace``), and the scale folds into the query's BN."""

import pytest
import torch
from timm.models import iformer

import isoprune
from conftest import around, assert_counts_what_timm_runs, assert_equivalent, lively, make
from isoprune import _groups


def _attentions(model):
    return [m for m in model.modules() if isinstance(m, iformer.SHMA)]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("reduction", [(0, 0, 2, 4), (0, 0, 1, 1)])  # the queries half and a quarter as wide as the values, or as wide (iformer_h)
def test_pruned_equals_zeroed(reduction, fused):
    model = lively(make("iformer_micro", attn_head_dim_reduction=reduction))
    for a in _attentions(model):
        a.fused_attn = fused
    built = [(a.q.c.out_channels, a.v_gate.c.out_channels) for a in _attentions(model)]
    assert _groups.analyse(model).frozen == {}
    assert_equivalent(model, 0.5, atol=1e-4, changes=0.01)
    for a, (query, values) in zip(_attentions(model), built):
        width = a.v_gate.c.out_channels // 2  # the values', and the gate's
        assert a.k.c.out_channels == a.q.c.out_channels <= min(query, width) and a.scale == a.q.c.out_channels**-0.5
        assert a.proj.c.in_channels == width < values // 2
    if reduction == (0, 0, 1, 1):  # every value is paired with a query channel
        assert all(a.q.c.out_channels == a.v_gate.c.out_channels // 2 < query for a, (query, _) in zip(_attentions(model), built))


def test_windows_are_padded_as_timm_pads_them():
    attn = iformer.SHMA(32, window_size=3)  # windows of 3 on an 8x8 map
    model = lively(around(attn, 32, 32))
    x = torch.randn(2, 3, 8, 8)
    assert _groups.analyse(model, x).frozen == {}
    assert_equivalent(model, 0.5, atol=1e-4, changes=0.01, inputs=x)
    assert attn.v_gate.c.out_channels < 64


@pytest.mark.parametrize("window", [0, 3])
def test_macs_count_what_timm_runs(window):
    model = make("iformer_micro")
    for a in _attentions(model):
        a.window_size = window  # 4x4 and 2x2 maps: padded to 6x6 and 3x3
    assert_counts_what_timm_runs(model, 0.3)


def test_queries_wider_than_values_stay_whole():
    attn = iformer.SHMA(32, ratio=0.25, head_dim_reduction_ratio=1)  # values 8 wide, queries 32
    model = around(attn, 32, 32)
    x = torch.randn(2, 3, 8, 8)
    assert set(_groups.analyse(model, x).frozen) >= {"2.q.c", "2.k.c"}
    isoprune.prune(model, 0.5, example_inputs=x)
    assert attn.q.c.out_channels == 32 and model[0].out_channels < 32  # the stream is still cut
    with torch.no_grad():
        assert model(x).shape == (2, 10)
