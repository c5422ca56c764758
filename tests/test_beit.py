"""timm BEiT ``Attention`` (BEiT, BEiT-v2): heads and head dims pruned, with the relative position
bias table and the separate q/v biases cut alike."""
import pytest
import timm

import isoprune
from conftest import assert_equivalent, base_of, inputs_for, layernorm_free, lively, make
from isoprune import _arch


@pytest.mark.parametrize("ratios", [isoprune.Ratios(heads=0.5), isoprune.Ratios(head_dim=0.25), "layernorm-free"], ids=["heads", "head_dim", "all"])
def test_pruned_attention_computes_what_the_zeroed_one_does(ratios):
    model = lively(make("beit_micro"))
    plan = assert_equivalent(model, layernorm_free(model, 0.5) if ratios == "layernorm-free" else ratios, changes=0.1)
    assert any(len(g.keep) < g.channels for g in plan.groups if g.kind in ("heads", "head_dim"))
    for block in model.blocks:
        attn = block.attn
        assert type(attn) is _arch.PrunedBeitAttention
        width = attn.qkv.out_features // 3
        assert attn.relative_position_bias_table.shape[1] == attn.num_heads
        assert attn.q_bias.shape == attn.k_bias.shape == attn.v_bias.shape == (width,) == (attn.proj.in_features,)


def test_a_relative_position_bias_shared_by_all_blocks_keeps_heads_whole():
    model = timm.create_model("beit_base_patch16_224", **base_of("beit_micro")["kwargs"], use_rel_pos_bias=False, use_shared_rel_pos_bias=True).eval()
    fixed = {g.kind: g.fixed for iso in isoprune.isomorphic_groups(model) for g in iso.groups}
    assert "every block" in fixed["heads"] and fixed["head_dim"] is None
    isoprune.prune(model, isoprune.Ratios(heads=0.5, head_dim=0.25, mlp=0.5))
    assert model.blocks[0].attn.num_heads == 2 and model(inputs_for(model)).shape == (2, 10)
