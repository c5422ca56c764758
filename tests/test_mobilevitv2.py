"""MobileViTv2's separable self-attention projects its input to one query channel, keys and
values (``qkv_proj``: 1 + 2d outputs). The query scores the tokens; each key channel, pooled by
those scores, weighs its value channel. The tracer coupled the query to every key channel and the
walk diverged, leaving every attention whole. Traced with the scores detached
(``_zoo.linear_self_attention_trace``), a key channel is coupled to its value channel: the group's
units are those pairs, in two runs that start after the query channel (``Group.offset``), which
stays."""
import torch
from timm.models.mobilevit import LinearSelfAttention

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, assert_saved_and_applied_again, inputs_for, lively, make
from isoprune import _groups


def attention_groups(analysis):
    return [g for g in analysis.groups if g.root.endswith("attn.qkv_proj")]


def test_keys_and_values_are_cut_in_pairs_and_the_query_stays():
    model = make("mobilevitv2_micro")
    analysis = _groups.analyse(model)
    assert analysis.frozen == {}
    groups = attention_groups(analysis)
    attention = [model.get_submodule(g.root.removesuffix(".qkv_proj")) for g in groups]
    assert len(groups) == sum(isinstance(m, LinearSelfAttention) for m in model.modules()) == 9
    assert {(g.offset, g.blocks) for g in groups} == {(1, 2)}
    assert [g.channels for g in groups] == [m.embed_dim for m in attention]
    plan = isoprune.plan(model, isoprune.Ratios(overrides={groups[0].signature: 0.5}), scope="local")
    isoprune.apply_plan(model, plan)
    for m, g in zip(attention, groups):
        kept = len(plan.groups[g.id].keep)
        assert kept == g.channels // 2
        assert (m.embed_dim, m.qkv_proj.out_channels, m.out_proj.in_channels) == (kept, 1 + 2 * kept, kept)
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)


def test_pruned_attention_computes_what_the_zeroed_one_does():
    model = lively(make("mobilevitv2_micro"))  # the attention only: GroupNorms span the streams
    signature = attention_groups(_groups.analyse(model))[0].signature
    plan = assert_equivalent(model, isoprune.Ratios(overrides={signature: 0.5}), atol=1e-5, changes=0.01)
    assert plan.macs["after"] < plan.macs["before"]


def test_query_channel_scores_count_for_no_unit():
    """Scores are read from the runs after the offset: the query channel's score, however large,
    ranks no key or value."""
    model = make("mobilevitv2_micro")
    group = attention_groups(_groups.analyse(model))[0]
    qkv, d = model.get_submodule(group.root), group.channels
    with torch.no_grad():
        qkv.weight[0].mul_(1e6)  # the query
        qkv.weight[1 + 3].mul_(1e3)  # key 3 and value 5: their units should be the two kept
        qkv.weight[1 + d + 5].mul_(1e3)
    plan = isoprune.plan(model, isoprune.Ratios(overrides={group.signature: 1 - 2 / d}), scope="local")
    assert sorted(plan.groups[group.id].keep) == [3, 5]


def test_a_saved_model_and_plan_load_again(tmp_path):
    signature = attention_groups(_groups.analyse(make("mobilevitv2_micro")))[0].signature
    assert_saved_and_applied_again("mobilevitv2_micro", isoprune.Ratios(default=0.3, overrides={signature: 0.5}), tmp_path)


def test_macs_count_what_timm_runs():
    assert_counts_what_timm_runs(make("mobilevitv2_micro"), 0.3)
