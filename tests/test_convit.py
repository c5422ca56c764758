"""ConViT's attention: gated positional self-attention (``GPSA``: queries and keys fused in one
``qk``, values apart, a positional score and a gate per head) and plain self-attention (``MHSA``)."""
import torch
import torch_pruning as tp

import isoprune
from conftest import assert_equivalent, inputs_for, layernorm_free, lively, make
from isoprune import _groups, _zoo


def test_pruned_attention_computes_what_the_zeroed_one_does():
    model = lively(make("convit_micro"))
    with torch.no_grad():
        for block in model.blocks[:2]:  # gates that mix both scores, not the init's 1 for all heads
            block.attn.gating_param.normal_(0, 1)
    assert _groups.analyse(model).frozen == {}
    plan = assert_equivalent(model, layernorm_free(model, 0.5), changes=0.1)
    owners = {g.owner for g in plan.groups if g.kind in ("heads", "head_dim") and len(g.keep) < g.channels}
    assert {"blocks.0.attn", "blocks.2.attn"} <= owners  # both kinds of attention cut
    for block in model.blocks:
        attn = block.attn
        if isinstance(attn, _zoo.PrunedGPSA):
            assert attn.qk.out_features == 2 * attn.v.out_features == 2 * attn.proj.in_features
            assert attn.pos_proj.weight.shape[0] == attn.pos_proj.out_features == attn.gating_param.shape[0] == attn.num_heads
            assert attn.get_attention_map(torch.randn(2, 16, attn.qk.in_features)).shape == (attn.num_heads,)  # 16 patches
        else:
            assert type(attn) is _zoo.PrunedMHSA and attn.qkv.out_features == 3 * attn.proj.in_features
        assert attn.proj.in_features % attn.num_heads == 0


def test_macs_count_what_timm_runs():
    """The positional projection runs on every pair of tokens, as in timm's forward."""
    model = make("convit_micro")
    assert isoprune.count(model)[0] == tp.utils.count_ops_and_params(model, inputs_for(model, 1))[0]
    isoprune.prune(model, 0.5)
    assert isoprune.count(model)[0] == tp.utils.count_ops_and_params(model, inputs_for(model, 1))[0]
