"""Next-ViT's attention (``EfficientAttention``): separate query, key and value layers, its keys
and values from tokens average-pooled ``sr_ratio``^2 at a time. It was not registered: its
layers were cut as any, which broke timm's reshape to its head dim, and every one was left whole.
Now its heads and head dims are cut. Its transformer blocks' MLP outputs stay whole, named: that
group runs into a grouped convolution through a concatenation, in runs it does not know."""
import torch
from timm.models import nextvit

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, inputs_for, lively, make
from isoprune import _groups, _zoo


def test_pruned_attention_computes_what_the_zeroed_one_does():
    model = lively(make("nextvit_micro"))
    frozen = _groups.analyse(model).frozen
    assert list(frozen) == ["stages.2.blocks.4.mlp.fc2"] and "Invalid channel dimensions" in frozen["stages.2.blocks.4.mlp.fc2"]
    plan = assert_equivalent(model, isoprune.Ratios(heads=0.5, head_dim=0.5), atol=1e-4, changes=0.01)
    owners = {g.owner for g in plan.groups if g.kind in ("heads", "head_dim") and len(g.keep) < g.channels}
    attention = {name: m for name, m in model.named_modules() if isinstance(m, nextvit.EfficientAttention)}
    assert owners == set(attention) and len(owners) == 3
    for attn in attention.values():
        assert type(attn) is _zoo.PrunedEfficientAttention
        assert attn.q.out_features == attn.k.out_features == attn.v.out_features == attn.num_heads * attn.head_dim == attn.proj.in_features
        assert attn.head_dim == 16 and attn.scale == 32**-0.5


def test_macs_count_what_timm_runs():
    model = make("nextvit_micro")
    assert_counts_what_timm_runs(model, 0.3)
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)
