"""timm MaxViT, CoAtNet and MaxxViT attention (``AttentionCl``, ``Attention2d``): heads and head
dims pruned in either qkv layout, channels last or NCHW, with each kind of relative position
bias; and walks of the coupling graph that would not end are cut short."""
import pytest
import timm
import torch
from timm.layers.pos_embed_rel import RelPosBiasTf, RelPosMlp
from timm.models import maxxvit
from torch import nn

import isoprune
from conftest import assert_equivalent, inputs_for, layernorm_free, lively, make
from isoprune import _arch, _groups

MAXXVIT = ["maxvit_micro", "maxvit_tf_micro", "maxvit_nchw_micro", "maxxvit_rmlp_micro", "coatnet_micro"]


def attentions(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (maxxvit.AttentionCl, maxxvit.Attention2d))]


def heads_of_bias(rel: nn.Module) -> int:
    """How many heads the relative position bias holds parameters for."""
    if isinstance(rel, RelPosMlp):
        assert rel.mlp.fc2.out_features == rel.mlp.fc2.weight.shape[0]
        return rel.mlp.fc2.out_features
    return rel.relative_position_bias_table.shape[0 if isinstance(rel, RelPosBiasTf) else 1]


@pytest.mark.parametrize("name", MAXXVIT)
def test_pruned_attention_computes_what_the_zeroed_one_does(name):
    model = lively(make(name))
    assert _groups.analyse(model).frozen == {}
    widths = {id(a): (a.num_heads, a.dim_head) for a in attentions(model)}
    plan = assert_equivalent(model, layernorm_free(model, 0.5), changes=0.1)
    for kind in ("heads", "head_dim"):  # ranked across isomorphic blocks: not half of each
        kept = sum(len(g.keep) for g in plan.groups if g.kind == kind)
        assert kept == pytest.approx(sum(g.channels for g in plan.groups if g.kind == kind) / 2, abs=1)
    for attn in attentions(model):
        heads, dims = widths[id(attn)]
        assert attn.num_heads <= heads and attn.dim_head <= dims
        assert attn.proj.weight.shape[1] == attn.num_heads * attn.dim_head
        assert attn.qkv.weight.shape[0] == 3 * attn.num_heads * attn.dim_head
        assert heads_of_bias(attn.rel_pos) == attn.num_heads
        assert attn.num_heads in attn.rel_pos.bias_shape


def test_heads_first_layout_cuts_each_heads_query_key_and_value():
    """qkv rows ``[heads, (query, key, value), head_dim]``: the kept heads' kept dims of all
    three, the queries rescaled for the smaller head dim."""
    model = make("maxvit_micro")
    attn = attentions(model)[0]
    assert attn.head_first
    heads, dims = attn.num_heads, attn.dim_head
    qkv = attn.qkv.weight.detach().clone().view(heads, 3, dims, -1)
    isoprune.prune(model, isoprune.Ratios(heads=0.5, head_dim=0.5))
    plan = model.isoprune_plan
    owner = next(n for n, m in model.named_modules() if m is attn)
    keep = {g.kind: g.keep for g in plan.groups if g.owner == owner}
    expected = qkv[keep["heads"]][:, :, keep["head_dim"]]
    expected[:, 0] *= (len(keep["head_dim"]) / dims) ** 0.5
    torch.testing.assert_close(attn.qkv.weight, expected.reshape(-1, qkv.shape[-1]))


def test_macs_count_the_relative_position_mlp():
    import torch_pruning as tp

    model = make("maxxvit_rmlp_micro")
    assert isoprune.count(model)[0] == tp.utils.count_ops_and_params(model, inputs_for(model, 1))[0]


def test_a_walk_that_outgrows_the_model_is_left_whole(monkeypatch):
    """Unregistered, MaxViT's qkv ``view`` reads to the tracer as a flatten it maps through again
    and again (24 GB in 50 s on coatnet_pico); the walk stops, at a step onto more channels than
    any layer has or at a channel none has, and its group is left whole."""
    for cls in (maxxvit.AttentionCl, maxxvit.Attention2d):
        monkeypatch.delitem(_arch._ATTENTION, cls)
        monkeypatch.delitem(_arch._TRACE_FORWARD, cls)
    model = make("coatnet_micro")
    frozen = _groups.analyse(model).frozen
    stopped = {root for root, why in frozen.items() if "onto" in why or "without end" in why}
    assert stopped == {"stages.2.blocks.0.attn.qkv", "stages.3.blocks.0.attn.qkv"}
    isoprune.prune(model, 0.3)
    assert model(inputs_for(model)).shape == (2, 10)


def test_a_walk_that_never_ends_is_left_whole(monkeypatch):
    """Traced as timm writes it, FocalNet's modulation has its gates (one channel broadcast over
    many, reached through slices) send the walk round without end (9 GB in 78 s on
    focalnet_tiny_srf), to channels ever further out; it stops at the first that no layer or
    concatenation has, and the rest prunes."""
    from timm.models.focalnet import FocalModulation, FocalNet

    monkeypatch.delitem(_arch._TRACE_FORWARD, FocalModulation)
    monkeypatch.delitem(_arch._PRUNED, FocalModulation)
    torch.manual_seed(0)
    model = FocalNet(embed_dim=16, depths=(1, 1, 1, 1), num_classes=10).eval()
    model.pretrained_cfg = {"input_size": (3, 64, 64)}
    frozen = _groups.analyse(model).frozen
    assert "no layer or concatenation has more than" in frozen["layers.0.blocks.0.modulation.h"]
    macs = isoprune.count(model)[0]
    isoprune.prune(model, 0.3)
    assert model(inputs_for(model)).shape == (2, 10) and isoprune.count(model)[0] < 0.8 * macs


def test_image_size_the_model_keeps_is_its_input_size():
    model = timm.create_model("maxvit_pico_rw_256", img_size=128)
    assert isoprune._trace.input_size(model) == (3, 128, 128)
