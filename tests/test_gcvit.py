"""GC ViT: window attention with a relative position bias, alternating with blocks whose queries
are the stage's global context (its residual stream through the global block), shared by every
such block of the stage; those blocks compute keys, matched with the queries, and values."""
import pytest
import torch
from timm.models import gcvit

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, inputs_for, layernorm_free, lively, without_norms
from isoprune import _groups


def micro(seed: int = 0, norms: bool = True) -> gcvit.GlobalContextVit:
    """Two stages of a local and a global block, 16 and 4 windows of 4 x 4 an image. Without
    ``norms``, every LayerNorm is an identity: then removing embedding channels is the same as
    zeroing them, which checks how the global queries and the keys lose theirs."""
    torch.manual_seed(seed)
    model = gcvit.GlobalContextVit(img_size=64, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_ratio=(16, 16), mlp_ratio=2,
                                   num_classes=10)
    model.pretrained_cfg = {"input_size": (3, 64, 64)}
    if not norms:
        without_norms(model)
    return lively(model.eval())


def global_attention(model):
    return [blk.attn for stage in model.stages for blk in stage.blocks if blk.attn.use_global]


def test_local_attention_loses_heads_and_global_attention_keeps_its_values():
    model = micro()
    assert _groups.analyse(model).frozen == {}
    plan = assert_equivalent(model, layernorm_free(model, 0.5), changes=0.1)
    cut = {g.owner for g in plan.groups if g.kind == "heads" and len(g.keep) < g.channels}
    assert cut == {"stages.0.blocks.0.attn", "stages.1.blocks.0.attn"}  # the local ones
    local = model.stages[1].blocks[0].attn
    assert local.num_heads == 2 and local.rel_pos.relative_position_bias_table.shape[1] == 2
    for attn in global_attention(model):
        assert attn.qkv.out_features == 2 * attn.proj.in_features == 2 * attn.proj.out_features


def test_the_global_queries_and_the_keys_lose_the_same_channels_of_every_head():
    model = micro(norms=False)
    assert _groups.analyse(model).frozen == {}
    plan = assert_equivalent(model, 0.5, changes=0.1)
    emb = {g.root: g for g in plan.groups if g.kind == "emb"}
    assert sorted(g.blocks for g in emb.values()) == [2, 4]  # a run per head of each stage's global attention
    for stage, attn in zip(model.stages, global_attention(model)):
        width = attn.proj.out_features  # the stage's embedding
        assert width < stage.dim and width % attn.num_heads == 0
        assert attn.qkv.out_features == width + stage.dim  # keys as wide as the embedding, values whole


@pytest.mark.parametrize("ratios", [0.3, isoprune.Ratios(heads=0.5), isoprune.Ratios(emb=0.5)])
def test_macs_count_what_timm_runs(ratios):
    model = micro()
    assert_counts_what_timm_runs(model, ratios)
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)
