"""Visformer: attention on the feature map (1x1 convolutions for its qkv and output projection),
which the tracer mapped through timm's reshape onto channels the projection does not have, so
every attention was left whole; its convolutional MLPs; batch norms throughout."""
import pytest
from timm.models import visformer

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, lively, make
from isoprune import _groups

RATIOS = isoprune.Ratios(emb=0.3, heads=0.5, head_dim=0.5, mlp=0.5, default=0.3)


@pytest.mark.parametrize("fused", [True, False])
def test_pruned_equals_zeroed_with_heads_and_head_dims_cut(fused):
    model = lively(make("visformer_micro"))
    attentions = [m for m in model.modules() if isinstance(m, visformer.Attention)]
    for a in attentions:
        a.fused_attn = fused  # timm's fused path scales by the head dim it reads
    built = [a.head_dim for a in attentions]
    assert _groups.analyse(model).frozen == {}
    plan = assert_equivalent(model, RATIOS, changes=0.05)
    assert {"emb", "heads", "head_dim", "mlp"} <= {g.kind for g in plan.groups if len(g.keep) < g.channels}
    assert any(a.head_dim < d for a, d in zip(attentions, built))
    for a in attentions:
        assert a.num_heads == 1 and a.scale == a.head_dim ** -0.5
        assert a.qkv.out_channels == 3 * a.head_dim and a.proj.in_channels == a.head_dim


def test_macs_count_what_timm_runs():
    assert_counts_what_timm_runs(make("visformer_micro"), RATIOS)
