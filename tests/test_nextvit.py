"""Next-ViT's attention (``EfficientAttention``): separate query, key and value layers, its keys
and values from tokens average-pooled ``sr_ratio``^2 at a time. It was not registered: its
layers were cut as any, which broke timm's reshape to its head dim, and every one was left whole.
Now its heads and head dims are cut. Its transformer blocks' MLP outputs, left whole before, are
cut too: that group runs through a concatenation into the next block's grouped convolution, which
holds it as a part of its channels (``_groups._root_runs``)."""
import torch
from timm.models import nextvit

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, inputs_for, lively, make
from isoprune import _groups, _zoo


def test_pruned_attention_computes_what_the_zeroed_one_does():
    model = lively(make("nextvit_micro"))
    assert _groups.analyse(model).frozen == {}
    plan = assert_equivalent(model, isoprune.Ratios(heads=0.5, head_dim=0.5), atol=1e-4, changes=0.01)
    owners = {g.owner for g in plan.groups if g.kind in ("heads", "head_dim") and len(g.keep) < g.channels}
    attention = {name: m for name, m in model.named_modules() if isinstance(m, nextvit.EfficientAttention)}
    assert owners == set(attention) and len(owners) == 3
    for attn in attention.values():
        assert type(attn) is _zoo.PrunedEfficientAttention
        assert attn.q.out_features == attn.k.out_features == attn.v.out_features == attn.num_heads * attn.head_dim == attn.proj.in_features
        assert attn.head_dim == 16 and attn.scale == 32**-0.5


def test_transformer_blocks_outputs_are_cut():
    model = lively(make("nextvit_micro"))
    plan = assert_equivalent(model, 0.5, atol=1e-4, changes=0.01)
    outputs = {g.root: len(g.keep) < g.channels for g in plan.groups if g.root.endswith("mlp.fc2")}
    blocks = {n for n, m in model.named_modules() if isinstance(m, nextvit.NextTransformerBlock)}
    assert {f"{n}.mlp.fc2" for n in blocks} <= set(outputs) and all(outputs.values())
    for conv in model.modules():
        if isinstance(conv, torch.nn.Conv2d) and conv.groups > 1:
            assert conv.in_channels % conv.groups == 0 == conv.out_channels % conv.groups


def test_macs_count_what_timm_runs():
    model = make("nextvit_micro")
    assert_counts_what_timm_runs(model, 0.3)
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)
