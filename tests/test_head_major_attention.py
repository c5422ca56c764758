"""Attention laid out a head at a time in its fused qkv (each head's query, key and values side
by side), with an attention bias per head and token pair: EfficientFormer's (values four times as
wide as keys, as LeViT's) and TinyViT's (pre-normed inside, window attention). The tracer mapped
qkv channels straight into the output projection through timm's view and split, onto channels
the projection does not have, so every such attention was left whole. EfficientFormer-V2's, on
the feature map, has separate query, key and value layers, talking heads and a depthwise
convolution of its values; its downsampling attention (queries strided) has no talking heads."""
import pytest
from timm.models import efficientformer, efficientformer_v2, tiny_vit
from torch import nn

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, lively, make, with_attention_biases, without_norms
from isoprune import _groups

ATTENTION = (efficientformer.Attention, tiny_vit.Attention, efficientformer_v2.Attention2d, efficientformer_v2.Attention2dDownsample)


def lively_model(name: str) -> nn.Module:
    """``lively`` weights without LayerNorms (``with_attention_biases``)."""
    return without_norms(with_attention_biases(lively(make(name)), ATTENTION))


@pytest.mark.parametrize("name, ratio", [("efficientformer_micro", 4), ("tiny_vit_micro", 1)])
def test_pruned_equals_zeroed_with_heads_and_head_dims_cut(name, ratio):
    model = lively_model(name)
    attentions = [m for m in model.modules() if isinstance(m, ATTENTION)]
    built = [(a.num_heads, a.key_dim) for a in attentions]
    assert _groups.analyse(model).frozen == {}
    plan = assert_equivalent(model, isoprune.Ratios(emb=0.3, heads=0.5, head_dim=0.5, mlp=0.3, default=0.3), changes=0.1)
    assert {"heads", "head_dim", "mlp"} <= {g.kind for g in plan.groups if len(g.keep) < g.channels}
    after = [(a.num_heads, a.key_dim) for a in attentions]
    assert any(h < h0 for (h, _), (h0, _) in zip(after, built)) and any(d < d0 for (_, d), (_, d0) in zip(after, built))
    for a in attentions:
        heads, dk, dv = a.num_heads, a.key_dim, a.val_dim
        assert dv == ratio * dk and a.attention_biases.shape[0] == heads
        assert a.qkv.weight.shape[0] == heads * (2 * dk + dv) and a.proj.weight.shape[1] == heads * dv


@pytest.mark.parametrize("fused", [True, False])
def test_tiny_vit_keeps_its_scale_whichever_path_it_takes(fused):
    """timm's fused path scales TinyViT's attention by the head dim it reads, the other by
    ``scale``: with head dims cut, ``scale`` follows the new head dim and the ratio to the built
    one is folded into the queries (``rescale_queries``), so both compute what the zeroed model does."""
    model = lively_model("tiny_vit_micro")
    attentions = [m for m in model.modules() if isinstance(m, tiny_vit.Attention)]
    for a in attentions:
        a.fused_attn = fused
    assert_equivalent(model, isoprune.Ratios(heads=0.0, head_dim=0.5, emb=0.0, mlp=0.0, default=0.0), changes=0.01)
    for a in attentions:
        assert a.key_dim == a.val_dim < 16 and a.scale == a.key_dim ** -0.5


@pytest.mark.parametrize("name", ["efficientformer_micro", "tiny_vit_micro"])
def test_macs_count_what_timm_runs(name):
    assert_counts_what_timm_runs(make(name), isoprune.Ratios(emb=0.3, heads=0.5, head_dim=0.25, mlp=0.3, default=0.3))


def test_efficientformerv2_attention_on_the_map():
    """Every attention loses heads and head dims, with its talking heads and biases; so does the
    last stage's downsampling attention (its queries strided), left whole before."""
    model = lively_model("efficientformerv2_micro")
    attentions = [m for m in model.modules() if type(m) is efficientformer_v2.Attention2d]
    downsample = model.stages[3].downsample.attn
    assert type(downsample) is efficientformer_v2.Attention2dDownsample and _groups.analyse(model).frozen == {}
    plan = assert_equivalent(model, isoprune.Ratios(emb=0.3, heads=0.5, head_dim=0.5, mlp=0.3, default=0.3), changes=0.05)
    assert {"heads", "head_dim", "mlp"} <= {g.kind for g in plan.groups if len(g.keep) < g.channels}
    for a in attentions:
        assert a.num_heads < 8 and a.d == 4 * a.key_dim and a.dh == a.num_heads * a.d == a.proj.conv.in_channels
        assert a.q.conv.out_channels == a.num_heads * a.key_dim and a.talking_head1.weight.shape[:2] == (a.num_heads, a.num_heads)
        assert a.attention_biases.shape[0] == a.num_heads
    a = downsample
    assert a.num_heads < 8 and a.d == 4 * a.key_dim and a.dh == a.num_heads * a.d == a.proj.conv.in_channels == a.v_local.conv.out_channels
    assert a.q.proj.conv.out_channels == a.k.conv.out_channels == a.num_heads * a.key_dim == a.attention_biases.shape[0] * a.key_dim
    assert_counts_what_timm_runs(make("efficientformerv2_micro"), 0.3)
