"""SwinV2-CR's attention: cosine similarity within windows, a logit scale per head and a position
bias MLP with an output per head, cut with the heads; head dims stay whole (the cosine
normalises over them)."""
import torch
import torch_pruning as tp
from torch import nn

import isoprune
from conftest import assert_equivalent, inputs_for, layernorm_free, lively, make
from isoprune import _groups, _zoo


def attentions(model):
    return [block.attn for stage in model.stages for block in stage.blocks]


def test_pruned_attention_computes_what_the_zeroed_one_does():
    model = lively(make("swinv2_cr_micro"))
    with torch.no_grad():  # timm starts the post-norms at zero: every block the identity
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.normal_(1, 0.2)
    analysis = _groups.analyse(model)
    assert analysis.frozen == {}
    assert all("cosine" in g.fixed for g in analysis.groups if g.kind == "head_dim")
    dims = [attn.qkv.out_features // (3 * attn.num_heads) for attn in attentions(model)]
    plan = assert_equivalent(model, layernorm_free(model, 0.5), changes=0.1)
    assert any(len(g.keep) < g.channels for g in plan.groups if g.kind == "heads")
    for attn, dim in zip(attentions(model), dims):
        assert type(attn) is _zoo.PrunedWindowMultiHeadAttention
        heads = attn.num_heads
        assert attn.qkv.out_features == 3 * heads * dim and attn.proj.in_features == heads * dim
        assert attn.logit_scale.shape == (heads,) and attn.meta_mlp.fc2.weight.shape[0] == attn.meta_mlp.fc2.out_features == heads


def test_every_kind_prunes_and_macs_count_what_timm_runs():
    model = make("swinv2_cr_micro")
    x = inputs_for(model, 1)
    assert isoprune.count(model)[0] == tp.utils.count_ops_and_params(model, x)[0]
    isoprune.prune(model, 0.5)
    assert model(x).shape == (1, 10)
    assert model.stages[1].blocks[0].attn.num_heads == 1 and model.stages[1].blocks[0].attn.proj.out_features == 16
    assert isoprune.count(model)[0] == tp.utils.count_ops_and_params(model, x)[0]
