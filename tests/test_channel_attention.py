"""Attention across the head dims of each head: XCiT's cross-covariance attention (a temperature
per head; its class attention is CaiT's, which XCiT imports), EdgeNeXt's (XCiT's, in its split
blocks) and DaViT's channel attention (beside its attention within windows; the ``_fl`` models'
second version, queries against keys, was not registered and every block's was left whole). Removed heads
compute what zeroed ones do; removed head dims do not (the softmax runs across head dims), so
those are checked to run and count."""
import pytest
import timm
import torch_pruning as tp
from timm.models import edgenext

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, inputs_for, lively, make, without_norms
from isoprune import _groups, _zoo

# the attention classes each model's blocks become, and two of its attention modules that must lose heads
CASES = {
    "xcit_micro": ({_zoo.PrunedXCA, _zoo.PrunedClassAttn}, {"blocks.0.attn", "cls_attn_blocks.0.attn"}),
    "davit_micro": ({_zoo.PrunedChannelAttention, _zoo.PrunedDavitWindowAttention}, {"stages.0.blocks.0.0.attn", "stages.0.blocks.0.1.attn"}),
    "davit_fl_micro": ({_zoo.PrunedChannelAttentionV2, _zoo.PrunedDavitWindowAttention},
                       {"stages.0.blocks.0.spatial_block.attn", "stages.0.blocks.0.channel_block.attn"}),
}


@pytest.mark.parametrize("name", CASES)
def test_pruned_heads_compute_what_the_zeroed_ones_do(name):
    classes, cut = CASES[name]
    model = lively(make(name))
    assert _groups.analyse(model).frozen == {}
    plan = assert_equivalent(model, isoprune.Ratios(heads=0.5, mlp=0.5), changes=0.1)
    assert cut <= {g.owner for g in plan.groups if g.kind == "heads" and len(g.keep) < g.channels}
    pruned = [m for m in model.modules() if type(m) in classes]
    assert {type(m) for m in pruned} == classes
    for attn in pruned:
        assert attn.proj.in_features % (attn.groups if isinstance(attn, _zoo.PrunedChannelAttentionV2) else attn.num_heads) == 0
        if isinstance(attn, _zoo.PrunedXCA):
            assert attn.temperature.shape == (attn.num_heads, 1, 1) and attn.qkv.out_features == 3 * attn.proj.in_features


@pytest.mark.parametrize("ratios", [isoprune.Ratios(head_dim=0.5), 0.5], ids=["head_dim", "all"])
@pytest.mark.parametrize("name", CASES)
def test_every_kind_prunes_and_macs_count_what_timm_runs(name, ratios):
    model = make(name)
    x = inputs_for(model, 1)
    before = isoprune.count(model)[0]
    assert before == tp.utils.count_ops_and_params(model, x)[0]
    isoprune.prune(model, ratios)
    assert model(x).shape == (1, 10)
    assert isoprune.count(model)[0] == tp.utils.count_ops_and_params(model, x)[0] < 0.9 * before


def test_edgenext_attention_loses_heads():
    """EdgeNeXt's cross-covariance attention reshaped to its input's width, and was left whole;
    now it loses heads as XCiT's does."""
    model = lively(make("edgenext_micro"))
    assert _groups.analyse(model).frozen == {}
    assert_equivalent(model, isoprune.Ratios(heads=0.5, mlp=0.5), changes=0.01)
    attentions = [m for m in model.modules() if isinstance(m, edgenext.CrossCovarianceAttn)]
    assert len(attentions) == 3
    for attn in attentions:
        assert type(attn) is _zoo.PrunedCrossCovarianceAttn and attn.num_heads == 1 and attn.temperature.shape == (1, 1, 1)
    assert_counts_what_timm_runs(make("edgenext_micro"), 0.5)


def test_edgenext_split_blocks_cut_the_stream():
    """EdgeNeXt's split blocks chain chunks of the stream through depthwise convolutions, as
    Res2Net's scales (each added to the previous one's output): the tracer mapped timm's chunk onto
    channels the blocks' layers lack, and left each stage's stream whole, named. Traced with a
    marked split, the stream is cut; where the scales are added together, each keeps as many
    channels (a position is one channel of every scale), and the pruned block splits at its
    convolutions' widths. LayerNorms off: removing channels under one is not zeroing them; nor is
    removing head dims (above)."""
    model = without_norms(lively(make("edgenext_micro")))
    blocks = {n: m for n, m in model.named_modules() if isinstance(m, edgenext.SplitTransposeBlock)}
    built = {n: b.convs[0].in_channels * (len(b.convs) + 1) for n, b in blocks.items()}
    assert [len(b.convs) for b in blocks.values()] == [1, 2, 3]
    assert_equivalent(model, isoprune.Ratios(emb=0.5, heads=0.5, mlp=0.5), changes=0.01)
    for name, b in blocks.items():
        assert type(b) is _zoo.PrunedSplitTransposeBlock and b.mlp.fc1.in_features < built[name]
        widths = {conv.in_channels for conv in b.convs}
        assert len(widths) == 1 or len(b.convs) == 1  # scales added together keep as many channels
    assert_counts_what_timm_runs(make("edgenext_micro"), 0.3)


def test_edgenext_rw_stream_coupled_across_stages_is_cut():
    """``edgenext_small_rw`` widens its stream at each stage with a depthwise convolution of two
    outputs per input, so a channel of the first stage is two of the second, four of the third,
    and its split blocks couple the scales of each stage: the coupling runs through the whole
    model and the walk reaches the layers again and again with other channels (118 times the
    graph's nodes; a walk used to stop at 16 and leave everything whole). It ends, and the stream
    is 4 units of 12 channels of the first stage: those left coupled by both strides (16 and 12)."""
    model = without_norms(lively(timm.create_model("edgenext_small_rw", depths=(2, 2, 2, 2), num_classes=10,
                                                   pretrained_cfg_overlay={"input_size": (3, 64, 64)}).eval()))
    analysis = _groups.analyse(model)
    assert analysis.frozen == {}
    assert [(g.channels, g.blocks) for g in analysis.groups if g.kind == "emb"] == [(4, 12)]
    assert_equivalent(model, isoprune.Ratios(emb=0.5, heads=0.5, mlp=0.5), changes=0.01)
    widening = [b.conv_dw for b in model.modules() if isinstance(b, edgenext.ConvBlock) and b.conv_dw.out_channels > b.conv_dw.in_channels]
    assert [(conv.in_channels, conv.out_channels) for conv in widening] == [(24, 48), (48, 96), (96, 192)]
