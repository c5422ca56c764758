"""timm ViT variants: RMS norms (``norm_layer='rmsnorm'``, ``test_vit4``), qk-norm in timm's own
attention, differential attention (``attn_layer='diff'``: ``vit_dwee``, ``vit_dlittle``), and
Qwen3-VL's encoder with its projector, which merges 2x2 tokens into one."""
import pytest
import timm
import torch
from timm.layers import RmsNorm, RmsNormFp32, SimpleNorm
from timm.layers.diff_attention import DiffAttention
from torch import nn

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, inputs_for, lively, make, without_norms
from isoprune import _groups, _zoo

RATIOS = isoprune.Ratios(emb=0.5, heads=0.5, head_dim=0.25, mlp=0.5, default=0.5)


@pytest.mark.parametrize("norm", [RmsNorm, SimpleNorm, nn.RMSNorm], ids=lambda cls: cls.__name__)
def test_rms_norms_follow_the_embedding_they_normalise(norm):
    """These norms hand ``normalized_shape`` to ``F.rms_norm``, which checks it against their
    weight: the embedding group, which holds every block's norms, was left whole."""
    torch.manual_seed(0)
    model = timm.create_model("test_vit", norm_layer=norm, num_classes=10).eval()
    assert _groups.analyse(model).frozen == {}
    isoprune.prune(model, RATIOS)
    norms = [m for m in model.modules() if isinstance(m, norm)]
    assert norms and all(m.normalized_shape == tuple(m.weight.shape) == (32,) for m in norms)  # test_vit: 64 wide
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)


def test_qk_norm_keeps_head_dims_and_cuts_heads():
    """timm's ``Attention`` with qk-norm normalises queries and keys over their head dims: those
    stay whole, named (a head-dim cut failed when it was applied), and heads are cut (the tracer
    coupled the norms' weights to the qkv through timm's reshape, and left every attention
    whole). The LayerNorms over the embedding go, so that pruned equals zeroed; qk-norm stays."""
    model = lively(make("vit_qk_norm_micro"))
    model.norm = model.fc_norm = nn.Identity()
    for block in model.blocks:
        block.norm1 = block.norm2 = nn.Identity()
    analysis = _groups.analyse(model)
    assert analysis.frozen == {}
    assert {g.kind: g.fixed for g in analysis.groups if g.kind in ("heads", "head_dim")} == {"heads": None, "head_dim": "qk-norm normalises over head dims"}
    plan = assert_equivalent(model, RATIOS, changes=0.05)
    assert {g.kind for g in plan.groups if len(g.keep) < g.channels} == {"emb", "heads", "mlp"}
    assert all(b.attn.num_heads == 1 and b.attn.head_dim == 16 and b.attn.q_norm.weight.shape == (16,) for b in model.blocks)


def test_differential_attention_cut_by_head():
    """A head of differential attention is two query and key sub-heads and values as wide as both:
    it goes whole, and the model computes what the zeroed one does. Its sub-norm and lambdas are
    over head dims, which stay."""
    model = without_norms(lively(make("vit_diff_micro")))
    analysis = _groups.analyse(model)
    assert analysis.frozen == {}
    assert [g.fixed is not None for g in analysis.groups if g.kind == "head_dim"] == [True, True]
    plan = assert_equivalent(model, RATIOS, changes=0.05)
    assert {g.kind for g in plan.groups if len(g.keep) < g.channels} == {"emb", "heads", "mlp"}
    for attn in (m for m in model.modules() if isinstance(m, DiffAttention)):
        assert type(attn) is _zoo.PrunedDiffAttention and attn.num_heads == 1
        assert attn.qkv.out_features == 3 * 2 * attn.head_dim and attn.proj.in_features == 2 * attn.head_dim


def test_qwen_merger_takes_every_neighbours_channels():
    """The projector concatenates each 2x2 block of tokens' channels: an embedding channel is four
    of its inputs. The tracer mapped it to one, and the embedding was left whole."""
    model = without_norms(lively(make("qwen3_vit_micro")))
    assert _groups.analyse(model).frozen == {}
    plan = assert_equivalent(model, RATIOS, changes=0.05)
    assert {"emb", "heads", "mlp"} <= {g.kind for g in plan.groups if len(g.keep) < g.channels}
    merger = model.encoder.merger
    assert merger.fc1.in_features == 4 * model.encoder.patch_embed.proj.out_channels == 4 * 16


def test_deepseek_aligner_takes_each_channel_of_a_block_together():
    """DeepSeek's projector unshuffles each 3x3 block of tokens channel-major: an embedding
    channel is nine neighbouring inputs. The tracer mapped it to one, and the embedding was left
    whole. The 7x7 grid is padded to 9x9, as timm pads it."""
    model = without_norms(lively(make("deepseek_vit_micro")), (RmsNormFp32,))
    assert _groups.analyse(model).frozen == {}
    plan = assert_equivalent(model, RATIOS, changes=0.05)
    assert {"emb", "heads", "mlp"} <= {g.kind for g in plan.groups if len(g.keep) < g.channels}
    aligner = model.encoder.aligner
    assert aligner.fc1.in_features == 9 * model.encoder.patch_embed.proj.out_channels == 9 * 16


@pytest.mark.parametrize("name", ["vit_diff_micro", "vit_qk_norm_micro", "qwen3_vit_micro", "deepseek_vit_micro"])
def test_macs_count_what_timm_runs(name):
    assert_counts_what_timm_runs(make(name), RATIOS)
