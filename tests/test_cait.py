"""CaiT's attention: talking heads (``TalkingHeadAttn``, whose two head-mixing layers lose the
removed heads' rows and columns) and class attention (``ClassAttn``, separate q/k/v)."""
import pytest
import torch_pruning as tp

import isoprune
from conftest import assert_equivalent, inputs_for, layernorm_free, lively, make
from isoprune import _groups, _zoo


def attentions(model):
    return [block.attn for block in [*model.blocks, *model.blocks_token_only]]


def test_pruned_attention_computes_what_the_zeroed_one_does():
    model = lively(make("cait_micro"))
    assert _groups.analyse(model).frozen == {}
    plan = assert_equivalent(model, layernorm_free(model, 0.5), changes=0.1)
    owners = {g.owner for g in plan.groups if g.kind in ("heads", "head_dim") and len(g.keep) < g.channels}
    assert {"blocks.0.attn", "blocks_token_only.0.attn"} <= owners  # both kinds of attention cut
    for attn in attentions(model):
        heads = attn.num_heads
        if isinstance(attn, _zoo.PrunedTalkingHeadAttn):
            assert attn.qkv.out_features == 3 * attn.proj.in_features
            for layer in (attn.proj_l, attn.proj_w):
                assert layer.weight.shape == (heads, heads) and layer.bias.shape == (heads,) and layer.in_features == heads
        else:
            assert type(attn) is _zoo.PrunedClassAttn
            assert attn.q.out_features == attn.k.out_features == attn.v.out_features == attn.proj.in_features
        assert attn.proj.in_features % heads == 0


@pytest.mark.parametrize("ratios", [isoprune.Ratios(heads=0.5), isoprune.Ratios(head_dim=0.5), isoprune.Ratios(emb=0.5, mlp=0.5)],
                         ids=["heads", "head_dim", "embedding"])
def test_each_kind_alone_prunes_and_runs(ratios):
    model = make("cait_micro")
    isoprune.prune(model, ratios)
    assert model(inputs_for(model)).shape == (2, 10)
    assert isoprune.count(model)[0] < isoprune.count(make("cait_micro"))[0]


def test_macs_count_what_timm_runs():
    """The trace forwards run every layer on what timm runs it on: the talking-heads layers on
    the attention maps, the class attention's query on the class token alone."""
    model = make("cait_micro")
    assert isoprune.count(model)[0] == tp.utils.count_ops_and_params(model, inputs_for(model, 1))[0]
