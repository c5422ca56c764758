"""VOLO: outlook attention (each position's neighbourhood of values weighted by ``k^4`` attention
weights a head, computed from the position alone) on a ``[batch, height, width, channels]`` map,
then self-attention on the map, then class attention."""
import pytest
import torch
from timm.models import volo

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, inputs_for, layernorm_free, lively
from isoprune import _groups

ATTENTION = (volo.OutlookAttention, volo.Attention, volo.ClassAttention)


def micro(seed: int = 0) -> volo.VOLO:
    torch.manual_seed(seed)
    model = volo.VOLO(layers=(1, 1, 1, 1), img_size=64, stem_hidden_dim=16, embed_dims=(32, 48, 48, 48), num_heads=(2, 4, 4, 4), num_classes=10)
    model.pretrained_cfg = {"input_size": (3, 64, 64)}  # VOLO keeps no image size; timm's configs carry it
    return lively(model.eval())


def attentions(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, ATTENTION)}


def test_pruned_attention_computes_what_the_zeroed_one_does():
    model = micro()
    assert _groups.analyse(model).frozen == {}
    modules = attentions(model)
    plan = assert_equivalent(model, layernorm_free(model, 0.5), changes=0.1)
    assert {"heads", "head_dim", "mlp", "emb"} <= {g.kind for g in plan.groups}
    cut = {g.owner for g in plan.groups if g.kind == "heads" and len(g.keep) < g.channels}
    assert {type(modules[owner]).__mro__[1] for owner in cut} == set(ATTENTION)  # every kind lost heads
    for attn in modules.values():
        width = attn.proj.in_features
        assert width % attn.num_heads == 0 and width < attn.proj.out_features
        if isinstance(attn, volo.OutlookAttention):
            assert attn.v.out_features == width and attn.attn.out_features == attn.kernel_size**4 * attn.num_heads
        elif isinstance(attn, volo.ClassAttention):
            assert attn.q.out_features == width and attn.kv.out_features == 2 * width
        else:
            assert attn.qkv.out_features == 3 * width


def test_the_embedding_is_cut_everywhere_it_goes():
    model = micro()
    isoprune.prune(model, isoprune.Ratios(emb=0.5))
    outlook = model.network[0][0].attn
    assert outlook.v.in_features == outlook.attn.in_features == model.patch_embed.proj.out_channels == 16
    assert model.cls_token.shape[-1] == model.norm.normalized_shape[0] == model.head.in_features == 24
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)


@pytest.mark.parametrize("ratios", [0.3, isoprune.Ratios(heads=0.5), isoprune.Ratios(head_dim=0.5)])
def test_macs_count_what_timm_runs(ratios):
    assert_counts_what_timm_runs(micro(), ratios)
