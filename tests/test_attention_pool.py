"""timm's attention pooling (``AttentionPoolLatent``), the MAP head of SigLIP, PE and NaFlexViT: a
learnt latent query attends to the tokens with its own heads. timm reshapes the attention's
output to its input's width, so cutting the embedding broke it, and SigLIP's embedding was left
whole; the pool's heads and head dims are now cut as an attention's."""
import torch
from timm.layers import AttentionPoolLatent

from conftest import assert_counts_what_timm_runs, assert_equivalent, inputs_for, lively, make, without_norms
from isoprune import _groups, _zoo


def test_pruned_pool_computes_what_the_zeroed_one_does():
    model = without_norms(lively(make("siglip_micro")))
    pool = model.attn_pool
    assert isinstance(pool, AttentionPoolLatent) and not _groups.analyse(model).frozen
    plan = assert_equivalent(model, 0.5, changes=0.05)
    cut = {g.kind for g in plan.groups if g.owner == "attn_pool" and len(g.keep) < g.channels}
    assert cut == {"heads", "head_dim"}
    assert any(g.kind == "emb" and len(g.keep) < g.channels for g in plan.groups)
    assert type(pool) is _zoo.PrunedAttentionPoolLatent and pool.num_heads == 2
    assert pool.q.out_features == pool.kv.out_features // 2 == pool.num_heads * pool.head_dim == pool.proj.in_features
    assert pool.kv.in_features == model.patch_embed.proj.out_channels < 32


def test_pool_forward_computes_what_timm_does():
    pool = lively(make("siglip_micro")).attn_pool
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(_zoo.latent_attention_pool_forward(pool, x), pool(x), atol=1e-5, rtol=1e-5)


def test_macs_count_what_timm_runs():
    model = make("siglip_micro")
    assert_counts_what_timm_runs(model, 0.3)
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)
