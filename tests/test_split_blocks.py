"""Blocks that split their channels at the sizes they were built with: InceptionNeXt's token mixer
(a depthwise branch on each of three slices, the first slice unchanged), MambaOut's gated
convolution block (``fc1`` makes gates and as many values, the last of which go through a
depthwise convolution), Res2Net's bottleneck (scales, each convolved after the previous one's
output is added; Res2NeXt's and DLA's alike), ReXNet's block (its input added to the first of its wider outputs), DPN's
(a residual path and a dense one, split off its input and concatenated again), CSPNet's cross
stages (one half through the blocks, the other around them), FasterNet's partial convolution
(a quarter of the channels convolved, the rest passed on) and MixNet's mixed convolution (a part
of the channels per kernel size)."""
import pytest
import timm
import torch
from timm.layers import mixed_conv2d
from timm.models import cspnet, dla, dpn, fasternet, inception_next, mambaout, res2net, rexnet

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, inputs_for, layernorm_free, lively, make
from isoprune import _groups, _zoo


def test_inception_next_branches_lose_channels_as_zeroing_them_does():
    model = lively(make("inception_next_micro"))
    mixers = [m for m in model.modules() if isinstance(m, inception_next.InceptionDWConv2d)]
    built = [m.split_indexes for m in mixers]
    assert built[0] == (10, 2, 2, 2)  # uneven: Torch-Pruning's own guess of the widths is wrong here
    assert _groups.analyse(model).frozen == {}
    assert_equivalent(model, layernorm_free(model, 0.5), changes=0.1)  # all but the classifier's hidden units
    assert all(type(m) is _zoo.PrunedInceptionDWConv2d for m in mixers)
    kept = [[m.dwconv_hw.in_channels, m.dwconv_w.in_channels, m.dwconv_h.in_channels] for m in mixers]
    assert sum(map(sum, kept)) < sum(sum(s[1:]) for s in built)  # the branches lost channels, not only the slice kept as is


def test_inception_next_layer_scale_keeps_its_channels():
    """InceptionNeXt-Atto as timm builds it: its layer scale (``gamma.reshape(1, -1, 1, 1)``) was
    coupled one channel to four, in every stage but the first two."""
    torch.manual_seed(0)
    model = timm.create_model("inception_next_atto", num_classes=10).eval()
    assert _groups.analyse(model).frozen == {}
    isoprune.prune(model, 0.3)
    blocks = [m for m in model.modules() if isinstance(m, inception_next.MetaNeXtBlock)]
    assert all(b.gamma.numel() == b.mlp.fc2.out_channels for b in blocks)
    assert all(b.mlp.fc2.out_channels < width for b, width in zip(blocks, [40] * 2 + [80] * 2 + [160] * 6 + [320] * 2))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 10)


def test_inception_next_branches_keep_a_channel_each():
    model = make("inception_next_micro")
    isoprune.prune(model, 0.97)  # every branch of the first stage holds 2 of 16 channels
    assert all(len(g.keep) < g.channels for g in model.isoprune_plan.groups if g.kind == "channels")
    for m in model.modules():
        if isinstance(m, inception_next.InceptionDWConv2d):
            assert min(m.dwconv_hw.in_channels, m.dwconv_w.in_channels, m.dwconv_h.in_channels) > 0
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)


def test_mambaout_hidden_unit_is_a_gate_and_its_value_through_the_convolution_or_not():
    model = lively(make("mambaout_micro"))
    blocks = [m for m in model.modules() if isinstance(m, mambaout.GatedConvBlock)]
    assert _groups.analyse(model).frozen == {}
    plan = assert_equivalent(model, layernorm_free(model, 0.5), changes=0.05)  # the hidden units; the stages' widths span LayerNorms
    roots = {g.root for g in plan.groups if g.kind == "mlp"}
    assert roots == {f"{n}.fc1" for n, m in model.named_modules() if m in blocks}
    for block in blocks:
        assert type(block) is _zoo.PrunedGatedConvBlock
        assert block.fc1.out_features == 2 * block.fc2.in_features
    convolved = [(b.conv.in_channels, b.split_indices[2]) for b in blocks]
    values = [(b.fc2.in_features - b.conv.in_channels, b.split_indices[1]) for b in blocks]
    for units in (convolved, values):  # units whose values go through the convolution were removed, and units whose do not
        assert sum(after for after, _ in units) < sum(before for _, before in units)


def test_res2net_scales_lose_channels_as_zeroing_them_does():
    model = lively(make("res2net_micro"))
    blocks = [m for m in model.modules() if isinstance(m, res2net.Bottle2neck)]
    assert _groups.analyse(model).frozen == {}
    assert_equivalent(model, 0.5, changes=0.1)
    assert all(type(b) is _zoo.PrunedBottle2neck for b in blocks)
    for b in blocks:
        scales = [conv.in_channels for conv in b.convs]
        assert sum(scales) <= b.conv1.out_channels < 8 * b.width  # the last scale, not convolved, may lose every channel
        if not b.is_first:  # each scale's width is the previous convolution's output, which it is added to
            assert scales[1:] == [conv.out_channels for conv in b.convs[:-1]]
    assert any(len(set(conv.in_channels for conv in b.convs)) > 1 for b in blocks)  # the scales were cut apart


@pytest.mark.parametrize("name, block, pruned", [("dla_res2net_micro", dla.DlaBottle2neck, _zoo.PrunedDlaBottle2neck),
                                                  ("dla_res2next_micro", dla.DlaBottle2neck, _zoo.PrunedDlaBottle2neck),
                                                  ("res2next_micro", res2net.Bottle2neck, _zoo.PrunedBottle2neck)])
def test_grouped_scales_keep_their_groups_equal(name, block, pruned):
    """Res2NeXt's scales are grouped convolutions, each on a slice of the first layer's outputs:
    the group of those outputs holds each convolution's channels as a part, not from its first.
    Each scale loses the same positions from each of its convolution's groups (DLA's blocks, as
    Res2Net's, split at their built widths: traced by the same forward)."""
    model = lively(make(name))
    assert _groups.analyse(model).frozen == {}
    plan = assert_equivalent(model, 0.5, changes=0.05)
    hidden = {g.root: g for g in plan.groups if g.root.endswith(".conv1")}
    blocks = {n: m for n, m in model.named_modules() if isinstance(m, block)}
    assert set(hidden) == {f"{n}.conv1" for n in blocks} and all(len(g.keep) < g.channels for g in hidden.values())
    for b in blocks.values():
        assert type(b) is pruned
        assert all(conv.in_channels % conv.groups == 0 == conv.out_channels % conv.groups for conv in b.convs)
        assert sum(conv.in_channels for conv in b.convs) < len(b.convs) * b.width
    assert {conv.groups for b in blocks.values() for conv in b.convs} == ({1} if name == "dla_res2net_micro" else {8})

    """The first scale's channels reach only its convolution, so they score lowest: at 0.9 they
    would all go, leaving it nothing to convolve. One stays, and the rest of the group is cut."""
    model = make("res2net_micro")
    isoprune.prune(model, 0.9)
    for b in model.modules():
        if isinstance(b, res2net.Bottle2neck):
            assert min(conv.in_channels for conv in b.convs) >= 1 and b.conv1.out_channels < 8 * b.width // 2
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)


def test_rexnet_stream_is_one_group_across_its_widening_blocks():
    """A ReXNet block adds its input to the first of its outputs and passes the others on as they
    are: the stream's channels are one group across the stage, whose later blocks carry more."""
    model = make("rexnet_micro")
    blocks = [m for m in model.modules() if isinstance(m, rexnet.LinearBottleneck)]
    built = [(b.in_channels, b.out_channels) for b in blocks]
    plan = isoprune.plan(model, 0.5)
    assert _groups.analyse(model).frozen == {} and all(len(g.keep) < g.channels for g in plan.groups)  # none left whole
    assert_equivalent(model, 0.5, changes=0.1)
    for b, (width_in, width_out) in zip(blocks, built):
        first = b.conv_exp or b.conv_dw
        assert (b.in_channels, b.out_channels) == (first.conv.in_channels, b.conv_pwl.conv.out_channels)
        assert b.in_channels < width_in and b.out_channels < width_out


@pytest.mark.parametrize("name", ["dpn_micro", "dpn68_micro"])
def test_dpn_residual_and_dense_paths_lose_channels_as_zeroing_them_does(name):
    """DPN-b makes its residual and dense outputs with a layer each; DPN-68's blocks split one
    layer's outputs at the residual width, which no parameter holds: a pruned block counts what
    that layer kept below it. Before, its trace failed."""
    model = make(name)
    blocks = [m for m in model.modules() if isinstance(m, dpn.DualPathBlock)]
    built = [(b.num_1x1_c, b.inc) for b in blocks]
    plan = isoprune.plan(model, 0.5)
    assert _groups.analyse(model).frozen == {} and all(len(g.keep) < g.channels for g in plan.groups)  # none left whole
    assert_equivalent(model, 0.5, changes=0.02)  # outputs of about 0.05
    for b, (residual, dense) in zip(blocks, built):
        if b.b:
            assert (b.num_1x1_c, b.inc) == (b.c1x1_c1.out_channels, b.c1x1_c2.out_channels)
        assert b.num_1x1_c < residual and b.inc <= dense
    assert [b.inc for b in blocks] != [dense for _, dense in built]


@pytest.mark.parametrize("name,pruned", [("cspresnet_micro", _zoo.PrunedCrossStage), ("cs3darknet_micro", _zoo.PrunedCrossStage3)])
def test_cross_stage_halves_lose_channels_as_zeroing_them_does(name, pruned):
    """The half through the blocks is also the first block's shortcut: a part of a split read by
    two layers, which Torch-Pruning's mapping (it pairs readers with parts by position) could not
    follow, and the trace of CSPDarkNet-3 failed. Each half is now cut on its own."""
    model = make(name)
    stages = [m for m in model.modules() if isinstance(m, (cspnet.CrossStage, cspnet.CrossStage3))]
    built = [s.conv_exp.conv.out_channels for s in stages]
    assert _groups.analyse(model).frozen == {}
    assert_equivalent(model, 0.5, changes=0.02)
    assert all(type(s) is pruned for s in stages)
    through = [s.blocks[0].conv1.conv.in_channels for s in stages]
    around = [s.conv_exp.conv.out_channels - t for s, t in zip(stages, through)]
    assert all(t + a < width for t, a, width in zip(through, around, built))
    assert through != around  # split where the layers say, not in halves


def test_partial_convolution_splits_where_its_convolution_says():
    """The partial convolution picks its forward when it is built (an attribute, not a method):
    the trace's stand-in and every copy isoprune makes must keep it its own."""
    model = make("fasternet_micro")
    mixers = [m for m in model.modules() if isinstance(m, fasternet.Partial_conv3)]
    assert not _groups.analyse(model).frozen
    assert all(m.forward.__self__ is m and m.forward.__func__ is fasternet.Partial_conv3.forward_split_cat for m in mixers)
    assert _counted(model) == isoprune.count(model)[0]
    plan = assert_equivalent(model, 0.5, changes=0.02)
    assert plan.macs["after"] == _counted(model) == isoprune.count(model)[0]
    for m in mixers:
        assert m.dim_conv3 == m.partial_conv3.in_channels
    blocks = [b for b in model.modules() if isinstance(b, fasternet.MLPBlock)]
    for b in blocks:  # the block's width is split; the MLP takes the convolution's outputs and the rest
        mixing = b.spatial_mixing
        assert mixing.dim_conv3 + mixing.dim_untouched == b.mlp[-1].out_channels
        assert mixing.partial_conv3.out_channels + mixing.dim_untouched == b.mlp[0].in_channels
    assert any(4 * m.dim_conv3 != m.dim_conv3 + m.dim_untouched for m in mixers)  # not the quarter timm built


def test_mixed_convolution_parts_lose_channels_as_zeroing_them_does():
    model = make("mixnet_micro")
    mixed = [m for m in model.modules() if isinstance(m, mixed_conv2d.MixedConv2d)]
    built = [list(m.splits) for m in mixed]
    assert len(mixed) > 10 and not _groups.analyse(model).frozen  # before, 23 groups were left whole
    assert_equivalent(model, 0.5, changes=0.02)
    for m, splits in zip(mixed, built):
        assert m.splits == [conv.in_channels for conv in m.values()] and m.in_channels == sum(m.splits)
        assert m.out_channels == sum(conv.out_channels for conv in m.values())
    assert any(len(set(m.splits)) > 1 and len(set(splits)) == 1 for m, splits in zip(mixed, built))  # parts cut apart


def _counted(model) -> int:
    """Torch-Pruning's count of timm's FasterNet, which misses its classifier (timm's ``Linear``,
    a subclass its counter does not know)."""
    import torch_pruning as tp

    head = model.classifier.in_features * model.classifier.out_features + model.classifier.out_features
    return tp.utils.count_ops_and_params(model, inputs_for(model, 1))[0] + head


def test_macs_count_what_timm_runs():
    names = ["inception_next_micro", "mambaout_micro", "res2net_micro", "rexnet_micro", "dpn_micro", "dpn68_micro"]
    for name in names + ["cspresnet_micro", "cs3darknet_micro", "mixnet_micro"]:
        model = make(name)
        assert_counts_what_timm_runs(model, 0.3)
        with torch.no_grad():
            assert model(inputs_for(model)).shape == (2, 10)
