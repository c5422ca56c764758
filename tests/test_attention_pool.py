"""timm's attention pooling: ``AttentionPoolLatent``, the MAP head of SigLIP, PE and NaFlexViT (a
learnt latent query attends to the tokens with its own heads), and ``AttentionPool2d``, the head
of CLIP's ResNets (the map's positions and their mean attend to each other). timm reshapes the
attention to the widths it was built with, so cutting the embedding broke the first (SigLIP's
embedding was left whole) and cutting the pool broke the second; their heads and head dims are now
cut as an attention's."""
import pytest
import torch
from timm.layers import AttentionPool2d, AttentionPoolLatent

import isoprune
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


def _clip_resnet(fused: bool = False):
    model = lively(make("resnet_clip_micro"))
    if fused:  # timm builds CLIP's with separate query, key and value layers; the fused qkv is the default
        pool = model.head
        model.head = lively(AttentionPool2d(pool.in_features, feat_size=pool.feat_size, out_features=10, pool_type="token"))
    return model


@pytest.mark.parametrize("fused", [False, True])
def test_pruned_2d_pool_computes_what_the_zeroed_one_does(fused):
    model = _clip_resnet(fused)
    pool = model.head
    assert not _groups.analyse(model).frozen
    plan = assert_equivalent(model, 0.5, changes=0.05)
    cut = {g.kind for g in plan.groups if g.owner == "head" and len(g.keep) < g.channels}
    assert cut == {"heads", "head_dim"}
    assert type(pool) is _zoo.PrunedAttentionPool2d and (pool.num_heads, pool.head_dim, pool.embed_dim) == (2, 32, 64)
    assert pool.scale == 64**-0.5  # as built: the pruned forward applies it
    projections = [pool.qkv] if fused else [pool.q, pool.k, pool.v]
    assert sum(p.out_features for p in projections) == 3 * pool.proj.in_features == 3 * 64
    features = projections[0].in_features
    assert features < 256 and model.num_features == pool.in_features == features
    assert model.head_hidden_size == 64


def test_pruned_clip_resnet_takes_a_new_classifier():
    model = _clip_resnet()
    isoprune.prune(model, 0.5)
    model.reset_classifier(3)
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 3)
    assert model.head.proj.in_features == 64


def test_2d_pool_forward_computes_what_timm_does():
    for pool in (_clip_resnet().head, _clip_resnet(fused=True).head):
        x = torch.randn(2, 256, 3, 3)  # another size than the pool was built for: the position embedding is resampled
        with torch.no_grad():
            torch.testing.assert_close(_zoo.attention_pool_2d_forward(pool, x), pool(x), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(_zoo.attention_pool_2d_forward(pool, x, pre_logits=True), pool(x, pre_logits=True), atol=1e-5, rtol=1e-5)


def test_clip_resnet_macs_count_what_timm_runs():
    assert_counts_what_timm_runs(_clip_resnet(), 0.3)
