"""Attention on the feature map in timm's BoTNet and HaloNet blocks (``BottleneckAttn``,
``HaloAttn``): a relative position embedding over head dims (which stay), values reshaped into
the output; halo attention's keys and values laid out a head at a time in their own layer. The
tracer could not follow their reshapes, and the attention's groups, with the embedding they read,
were left whole."""
import copy

import pytest
import timm
import torch
from timm.layers.bottleneck_attn import BottleneckAttn
from timm.layers.halo_attn import HaloAttn
from torch import nn

import isoprune
from conftest import around, assert_equivalent
from isoprune import _groups

RATIOS = isoprune.Ratios(emb=0.3, heads=0.5, head_dim=0.5, default=0.3)


def attention_model(attn: nn.Module) -> nn.Module:
    """The attention ``around`` convolutions; ``lively`` position embeddings too."""
    model = around(attn, 32, attn.dim_out_v)
    with torch.no_grad():
        attn.pos_embed.height_rel.normal_(0, 0.5)
        attn.pos_embed.width_rel.normal_(0, 0.5)
    return model


CASES = {
    "bottleneck": lambda: BottleneckAttn(32, feat_size=(8, 8), num_heads=4),
    "bottleneck-stride": lambda: BottleneckAttn(32, 48, feat_size=(8, 8), stride=2, num_heads=4),
    "halo": lambda: HaloAttn(32, feat_size=(8, 8), num_heads=4, block_size=4, halo_size=1),
    "halo-stride": lambda: HaloAttn(32, 48, feat_size=(8, 8), stride=2, num_heads=4, block_size=4, halo_size=1),
    "halo-avg-down": lambda: HaloAttn(32, feat_size=(8, 8), stride=2, num_heads=4, block_size=4, halo_size=1, avg_down=True),
}


@pytest.mark.parametrize("case", CASES)
def test_pruned_equals_zeroed_with_heads_cut(case):
    torch.manual_seed(0)
    attn = CASES[case]()
    model = attention_model(attn)
    x = torch.randn(2, 3, 8, 8)
    analysis = _groups.analyse(model, x)
    assert analysis.frozen == {}
    assert {g.kind: g.fixed for g in analysis.groups if g.owner} == {"heads": None, "head_dim": "its relative position embedding is over head dims"}
    plan = isoprune.plan(model, RATIOS, example_inputs=x)
    zeroed = isoprune.zero_out(copy.deepcopy(model), plan)
    with torch.no_grad():
        before = model(x)
    isoprune.apply_plan(model, plan)
    assert attn.num_heads == 2 and attn.dim_out_v == 2 * attn.dim_head_v == model[4].in_channels
    assert model[0].out_channels < 32  # the embedding the attention reads was cut too
    with torch.no_grad():
        got = model(x)
        torch.testing.assert_close(got, zeroed(x), atol=1e-5, rtol=0)
    assert (got - before).abs().max() > 0.05


def test_values_wider_than_queries_keep_their_heads():
    """With queries and keys narrower than the values (``qk_ratio``), a head is no equal run of
    each: heads and head dims stay, named; the embedding is still cut."""
    attn = HaloAttn(32, feat_size=(8, 8), num_heads=4, block_size=4, halo_size=1, qk_ratio=0.5)
    model = attention_model(attn)
    x = torch.randn(2, 3, 8, 8)
    analysis = _groups.analyse(model, x)
    assert {g.fixed for g in analysis.groups if g.owner} == {"its values' heads are not as wide as its queries'"}
    isoprune.prune(model, RATIOS, example_inputs=x)
    assert attn.num_heads == 4 and model[0].out_channels < 32
    with torch.no_grad():
        assert model(x).shape == (2, 10)


def test_bottleneck_values_wider_than_queries_lose_head_dims():
    """BoTNet's attention with values wider than its queries (``eca_botnext26ts_256``'s, 8 times):
    its heads and its queries' and keys' head dims stay, but a channel of every head's values is a
    unit of the qkv's group, after the queries and keys, coupled to nothing and kept whole. Runs
    were looked for from channel 0 first, and found: the queries and keys (2 x 16) are as wide
    as a head's values, so each unit took one of their channels, and the group was left whole."""
    attn = BottleneckAttn(32, feat_size=(8, 8), num_heads=2, qk_ratio=0.5)
    assert (attn.dim_head_qk, attn.dim_head_v) == (8, 16)
    model = attention_model(attn)
    x = torch.randn(2, 3, 8, 8)
    analysis = _groups.analyse(model, x)
    assert analysis.frozen == {}
    group = next(g for g in analysis.groups if g.root == "2.qkv")
    assert (group.channels, group.blocks, group.offset) == (16, 2, 32)
    assert_equivalent(model, 0.5, changes=0.05, inputs=x)
    assert attn.num_heads == 2 and attn.dim_out_qk == 16 and attn.dim_out_v == 2 * attn.dim_head_v == model[4].in_channels == 16


@pytest.mark.parametrize("name", ["botnet26t_256", "halonet26t", "eca_botnext26ts_256"])
def test_timm_models_are_cut_whole(name):
    model = timm.create_model(name, num_classes=10)
    assert _groups.analyse(model).frozen == {}
    isoprune.prune(model, 0.3)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 256, 256)).shape == (1, 10)
