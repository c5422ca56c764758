"""LeViT: attention whose values are wider than its queries and keys (twice, four times in the
downsampling blocks), each head laid out whole, a bias per head and token pair, and queries of
subsampled tokens in the downsampling blocks; tokens as a sequence (``levit``) or a map
(``levit_conv``). LeViT has no LayerNorm: removing a channel is the same as zeroing it."""
import pytest
import torch
from timm.models import levit
from torch import nn

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, inputs_for, lively, make, with_attention_biases
from isoprune import _groups


def lively_levit(name: str) -> nn.Module:
    return with_attention_biases(lively(make(name)), (levit.Attention, levit.AttentionDownsample))


def attentions(model):
    return [m for m in model.modules() if isinstance(m, (levit.Attention, levit.AttentionDownsample))]


@pytest.mark.parametrize("name", ["levit_micro", "levit_conv_micro"])
def test_pruned_equals_zeroed_with_heads_and_head_dims_cut(name):
    model = lively_levit(name)
    built = [(a.num_heads, a.key_dim) for a in attentions(model)]
    assert _groups.analyse(model).frozen == {}
    plan = assert_equivalent(model, isoprune.Ratios(emb=0.3, heads=0.5, head_dim=0.5, mlp=0.3, default=0.3), changes=0.1)
    after = [(a.num_heads, a.key_dim) for a in attentions(model)]
    assert any(h < h0 for (h, _), (h0, _) in zip(after, built)) and any(d < d0 for (_, d), (_, d0) in zip(after, built))
    assert {g.owner for g in plan.groups if g.kind == "heads"} == {n for n, m in model.named_modules() if m in attentions(model)}
    for a in attentions(model):
        heads, dk, dv = a.num_heads, a.key_dim, a.val_dim
        assert dv in (2 * dk, 4 * dk) and a.attention_biases.shape[0] == heads
        assert a.proj.ln.linear.weight.shape[1] == heads * dv == a.val_attn_dim
        if isinstance(a, levit.Attention):
            assert a.qkv.linear.weight.shape[0] == heads * (2 * dk + dv)
        else:
            assert a.kv.linear.weight.shape[0] == heads * (dk + dv) and a.q.ln.linear.weight.shape[0] == heads * dk == a.key_attn_dim
    assert model.stem.conv4.linear.weight.shape[0] < 16  # the first stage's embedding was cut


def test_downsampling_queries_keep_the_embedding_they_read():
    """The queries' tokens are subsampled with a strided slice of the token map, which the
    tracer read as a slice of channels: every other embedding channel fell out of their group."""
    model = make("levit_micro")
    isoprune.prune(model, 0.5)
    for stage in model.stages[1:]:
        down = stage.downsample.attn_downsample
        assert down.q.ln.linear.in_features == down.kv.linear.in_features < 24
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)


@pytest.mark.parametrize("name", ["levit_micro", "levit_conv_micro"])
def test_macs_count_what_timm_runs(name):
    assert_counts_what_timm_runs(make(name), isoprune.Ratios(emb=0.3, heads=0.5, head_dim=0.25, mlp=0.3, default=0.3))
