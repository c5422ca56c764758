"""MViTv2's attention: queries, keys and values pooled (a depthwise convolution shared by every
head, then a norm, over head dims) before they attend, a relative position table over head dims,
and as many output tokens as the pooled queries. The tracer mapped channels through timm's
reshapes onto ones the pooling lacks, and left every attention whole; now heads are cut
(``_zoo.multiscale_vit_attention_trace``) and head dims, which the pooling shares, stay."""
import pytest
import torch
from timm.models import mvitv2

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, lively, without_norms
from isoprune import _groups

RATIOS = isoprune.Ratios(emb=0.3, heads=0.5, head_dim=0.5, mlp=0.3)


def micro(**cfg) -> mvitv2.MultiScaleVit:
    """Four stages of 2, 4, 8 and 16 heads of 8 dims on a 16x16 map, its queries pooled to 8x8, 4x4
    and 2x2, its keys and values to 4x4 through 2x2 (``cfg``: with a class token, or the stage
    widths grown in the MLPs rather than the attention)."""
    torch.manual_seed(0)
    model = mvitv2.MultiScaleVit(mvitv2.MultiScaleVitCfg(depths=(1, 1, 2, 1), embed_dim=16, num_heads=2, **cfg), img_size=(64, 64), num_classes=10)
    model.pretrained_cfg = {"input_size": (3, 64, 64)}
    return model.eval()


@pytest.mark.parametrize("cfg", [{}, dict(use_cls_token=True, expand_attn=False)])
def test_heads_are_cut(cfg):
    model = without_norms(lively(micro(**cfg)))  # removing channels under a LayerNorm is not zeroing them
    attentions = [m for m in model.modules() if isinstance(m, mvitv2.MultiScaleAttention)]
    built = [(a.num_heads, a.pool_q.weight.shape) for a in attentions]
    assert _groups.analyse(model).frozen == {}
    plan = assert_equivalent(model, RATIOS, changes=0.05)
    assert {g.kind for g in plan.groups if len(g.keep) < g.channels} >= {"heads"}
    for a, (heads, pool) in zip(attentions, built):
        assert a.head_dim == 8 and a.pool_q.weight.shape == pool and a.rel_pos_h.shape[1] == 8  # shared by every head: they stay
        assert a.qkv.out_features == 3 * a.num_heads * 8 and a.dim_out == a.proj.in_features == a.num_heads * 8
        assert a.num_heads == max(1, heads // 2)


@pytest.mark.parametrize("cfg", [{}, dict(use_cls_token=True, expand_attn=False)])
def test_macs_count_what_timm_runs(cfg):
    assert_counts_what_timm_runs(micro(**cfg), RATIOS)
