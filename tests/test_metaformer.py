"""MetaFormer (PoolFormer, ConvFormer, CAFormer): token mixers between per-channel scales that view
their parameter at the width they were built with (``Scale``), and CAFormer's attention of
32-channel heads, which reshapes its output to the input's width."""
import pytest
import torch
from timm.models import metaformer
from torch import nn

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, inputs_for, lively, without_norms
from isoprune import _groups, _zoo


def micro(kind: str, norms: bool = True) -> metaformer.MetaFormer:
    """PoolFormer (pooling, a layer scale per channel) or CAFormer (separable convolutions, then
    attention; a residual scale per channel), four stages at 64 px. Without ``norms`` every norm
    is an identity: removing a channel is then the same as zeroing it."""
    torch.manual_seed(0)
    if kind == "poolformer":
        model = metaformer.MetaFormer(
            depths=(1, 1, 2, 1), dims=(16, 32, 48, 64), downsample_norm=None, mlp_act=nn.GELU, mlp_bias=True,
            norm_layers=metaformer.GroupNorm1, layer_scale_init_values=1e-5, res_scale_init_values=None, use_mlp_head=False,
            num_classes=10,
        )
    else:
        model = metaformer.MetaFormer(
            depths=(1, 1, 2, 1), dims=(16, 32, 64, 96), token_mixers=[metaformer.SepConv] * 2 + [metaformer.Attention] * 2,
            norm_layers=[metaformer.LayerNorm2dNoBias] * 2 + [metaformer.LayerNormNoBias] * 2, num_classes=10,
        )
    model.pretrained_cfg = {"input_size": (3, 64, 64)}
    if not norms:
        without_norms(model, (nn.LayerNorm, nn.GroupNorm))
    return lively(model.eval())


def scales(model):
    return [m for m in model.modules() if isinstance(m, metaformer.Scale)]


@pytest.mark.parametrize("kind", ["poolformer", "caformer"])
def test_pruned_equals_zeroed_with_every_scale_and_attention_at_its_new_width(kind):
    model = micro(kind, norms=False)
    built = [m.scale.numel() for m in scales(model)]
    assert _groups.analyse(model).frozen == {}
    plan = assert_equivalent(model, 0.5, changes=0.02)  # outputs of about 0.1
    assert all(m.shape[0] == m.scale.numel() for m in scales(model))
    assert all(m.scale.numel() < width for m, width in zip(scales(model), built))  # every stage's embedding was cut
    if kind == "caformer":
        attention = [b.token_mixer for b in model.stages[2].blocks] + [b.token_mixer for b in model.stages[3].blocks]
        assert all(type(a) is _zoo.PrunedMetaFormerAttention for a in attention)
        assert {g.owner for g in plan.groups if g.kind == "heads" and len(g.keep) < g.channels} == {
            "stages.2.blocks.0.token_mixer", "stages.2.blocks.1.token_mixer", "stages.3.blocks.0.token_mixer"}
        for a in attention:
            assert a.qkv.out_features == 3 * a.proj.in_features == 3 * a.attention_dim == 3 * a.num_heads * a.head_dim


@pytest.mark.parametrize(
    "kind,ratios", [("poolformer", 0.3), ("caformer", 0.3), ("caformer", isoprune.Ratios(heads=0.5, head_dim=0.25))],
    ids=["poolformer", "caformer", "caformer-attention"],
)
def test_macs_count_what_timm_runs(kind, ratios):
    model = micro(kind)
    assert_counts_what_timm_runs(model, ratios)
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)
