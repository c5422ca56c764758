"""SAM's ViT (``samvit_*``) and SAM 2's Hiera (``sam2_hiera_*``, ``hieradet_*``): attention on a
``[batch, height, width, channels]`` map, in windows and globally; SAM's with relative position
tables over head dims (or a rotary embedding, or neither), SAM 2's pooling its queries where a
stage begins. Neither attention was registered: SAM's qkv was cut as any layer's, which broke
timm's reshape to ``num_heads``, and the tracer did not follow SAM 2's reshapes on the map; every
block's heads were left whole. Now heads are cut, and head dims where no position table or
rotation holds them."""
import pytest
import torch
from timm.models import hieradet_sam2, vision_transformer_sam

from conftest import assert_counts_what_timm_runs, assert_equivalent, inputs_for, lively, make, without_norms
from isoprune import _groups, _zoo

KEPT = {"samvit_micro": 16, "samvit_abs_micro": None, "samvit_rope_micro": 16}  # head dims kept whole, of 16
HIERA = ["sam2_hiera_micro", "hieradet_micro"]


def _attention(model):
    return [m for m in model.modules() if isinstance(m, vision_transformer_sam.Attention)]


def _multiscale(model):
    return [m for m in model.modules() if isinstance(m, hieradet_sam2.MultiScaleAttention)]


@pytest.mark.parametrize("name", KEPT)
def test_pruned_attention_computes_what_the_zeroed_one_does(name):
    model = without_norms(lively(make(name)))
    assert not _groups.analyse(model).frozen
    plan = assert_equivalent(model, 0.5, changes=0.05)
    for attn in _attention(model):
        assert attn.num_heads == 1 and attn.qkv.out_features == 3 * attn.head_dim == 3 * attn.proj.in_features
    dims = {len(g.keep) for g in plan.groups if g.kind == "head_dim"}
    assert dims == {KEPT[name]} if KEPT[name] else max(dims) < 16
    if KEPT[name] is None:
        assert all(attn.scale == attn.head_dim**-0.5 for attn in _attention(model))  # the old scale is in the queries


@pytest.mark.parametrize("name", KEPT)
def test_trace_forward_keeps_the_output_shape(name):
    attn = _attention(make(name))[0]
    x = torch.randn(2, 4, 4, 32)
    with torch.no_grad():
        assert _zoo.map_attention_values_trace(attn, x).shape == attn(x).shape == x.shape


@pytest.mark.parametrize("name", HIERA)
def test_pruned_hiera_computes_what_the_zeroed_one_does(name):
    model = without_norms(lively(make(name)))
    attention = _multiscale(model)
    assert not _groups.analyse(model).frozen
    assert_equivalent(model, 0.5, changes=0.05)  # the blocks that pool their queries too
    assert any(attn.q_pool is not None for attn in attention)
    for attn in attention:
        head_dim = attn.qkv.out_features // (3 * attn.num_heads)
        assert attn.dim_out == attn.num_heads * head_dim == attn.proj.in_features and head_dim < 16
        assert attn.scale == head_dim**-0.5  # the old scale is in the queries


@pytest.mark.parametrize("name", HIERA)
def test_hiera_trace_forward_keeps_the_output_shape(name):
    for attn in _multiscale(make(name))[:2]:  # the second pools its queries
        x = torch.randn(2, 4, 4, attn.qkv.in_features)
        with torch.no_grad():
            assert _zoo.map_attention_values_trace(attn, x).shape == attn(x).shape


@pytest.mark.parametrize("name", ["samvit_micro", "sam2_hiera_micro"])
def test_macs_count_what_timm_runs(name):
    model = make(name)
    assert_counts_what_timm_runs(model, 0.3)
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)
