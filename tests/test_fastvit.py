"""FastViT's attention (the last stage of its SA/MA models, and MobileCLIP's MCi image towers): a
ViT attention run on the feature map, flattened to tokens and reshaped back to its input's width,
which the tracer could not follow (every such attention, and the stage's embedding, was left
whole); its convolutional MLPs' hidden units count as MLP units."""
from timm.models import fastvit

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, lively, make
from isoprune import _groups, _zoo

RATIOS = isoprune.Ratios(emb=0.3, heads=0.5, head_dim=0.25, mlp=0.5, default=0.3)


def test_pruned_attention_equals_zeroed():
    model = lively(make("fastvit_sa_micro"))
    attentions = [m for m in model.modules() if isinstance(m, fastvit.Attention)]
    assert len(attentions) == 2 and _groups.analyse(model).frozen == {}
    plan = assert_equivalent(model, RATIOS, changes=0.05)
    assert {"emb", "heads", "head_dim", "mlp"} <= {g.kind for g in plan.groups if len(g.keep) < g.channels}
    for a in attentions:
        assert type(a) is _zoo.PrunedFastVitAttention and a.num_heads == 1 and a.head_dim < 32
        assert a.qkv.out_features == 3 * a.head_dim and a.proj.out_features < 64


def test_macs_count_what_timm_runs():
    assert_counts_what_timm_runs(make("fastvit_sa_micro"), RATIOS)
