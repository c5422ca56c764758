"""Invariants of plan + apply across the paper's families."""
import copy

import numpy as np
import pytest
import timm
import torch
from timm.layers import BlurPool2d
from timm.layers.non_local_attn import BilinearAttnTransform
from timm.models import dpn
from torch import nn

import isoprune
from conftest import TINY, assert_equivalent, base_of, inputs_for, layernorm_free, make
from isoprune import _arch, _groups

FAMILIES = TINY + ["tv:resnet18", "tv:mobilenet_v2"]


@pytest.mark.parametrize("name", FAMILIES)
def test_pruned_model_runs_smaller_with_same_output_shape(name):
    model = make(name)
    x = inputs_for(model)
    shape = model(x).shape
    macs, params = isoprune.count(model)
    isoprune.prune(model, 0.4)
    out = model(x)
    assert out.shape == shape and torch.isfinite(out).all()
    new_macs, new_params = isoprune.count(model)
    assert new_macs < 0.8 * macs and new_params < 0.8 * params
    assert model.isoprune_plan.macs == {"before": macs, "after": new_macs}
    assert model.isoprune_plan.params == {"before": params, "after": new_params}


def test_a_five_d_expand_is_not_read_as_grouped_query_attention():
    # Twins (also GC ViT, Hiera) expands 5-d tensors; Torch-Pruning took that for key/value heads repeated
    model = make("twins_micro")
    x = inputs_for(model)
    shape = model(x).shape
    macs = isoprune.count(model)[0]
    isoprune.prune(model, 0.3)
    assert model(x).shape == shape and isoprune.count(model)[0] < 0.9 * macs


def test_tnt_adds_its_pixel_embedding_along_tokens_not_channels():
    """TNT concatenates its class token and the projected pixel embedding along the tokens,
    which the tracer read as a concatenation of channels: from 7 blocks on, it could not infer
    the parts' widths and the trace failed."""
    import torch_pruning as tp

    model = make("tnt_micro")
    x = inputs_for(model)
    assert isoprune.count(model)[0] == tp.utils.count_ops_and_params(model, x[:1])[0]
    kinds = {g.root: g.kind for g in _groups.analyse(model).groups}
    assert kinds["blocks.6.mlp.fc1"] == kinds["blocks.0.mlp_in.fc1"] == "mlp"
    assert kinds["blocks.6.mlp.fc2"] == kinds["blocks.6.mlp_in.fc2"] == "emb"  # the patch and pixel embeddings, not MLPs' hidden units
    assert_equivalent(model, layernorm_free(model, 0.4))
    macs = isoprune.count(make("tnt_micro"))[0]
    isoprune.prune(model, 0.3)
    assert model(x).shape == (2, 10) and isoprune.count(model)[0] < 0.8 * macs


@pytest.mark.parametrize("name", TINY)
def test_a_pruned_timm_model_takes_a_new_classifier(name, tmp_path):
    # timm builds a new head (and the DINO head its input) from the remembered feature width
    model = make(name)
    isoprune.prune(model, 0.5)
    width = model.get_classifier().in_features
    loaded = isoprune.load(isoprune.save(model, tmp_path / "m", base=base_of(name)))
    for m in (model, loaded):
        assert m.num_features == width
        m.reset_classifier(3)
        assert m(inputs_for(m)).shape == (2, 3)


@pytest.mark.parametrize("name", FAMILIES)
def test_ratio_zero_is_the_identity(name):
    model = make(name)
    x = inputs_for(model)
    with torch.no_grad():
        before = model(x)
    state = copy.deepcopy(model.state_dict())
    plan = isoprune.plan(model, 0.0)
    assert all(len(g.keep) == g.channels for g in plan.groups)
    isoprune.apply_plan(model, plan)
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in state.items()}
    model.load_state_dict(state)  # still loads: nothing changed shape
    assert plan.macs["before"] == plan.macs["after"]


@pytest.mark.parametrize("name", FAMILIES + ["resnet50", "convnext_atto"])
def test_zeroed_channels_equal_pruned_channels(name):
    model = make(name)
    plan = assert_equivalent(model, layernorm_free(model, 0.4))
    assert plan.params["after"] < plan.params["before"]


@pytest.mark.parametrize("kinds", [dict(heads=0.5), dict(head_dim=0.25), dict(heads=0.5, head_dim=0.5, mlp=0.5)])
def test_attention_heads_and_head_dims_are_equivalent(kinds):
    model = make("test_vit")
    assert_equivalent(model, isoprune.Ratios(**kinds))
    attn = model.blocks[0].attn
    assert attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim == 3 * attn.attn_dim
    assert attn.proj.in_features == attn.attn_dim
    assert attn.scale == pytest.approx(attn.head_dim**-0.5)


@pytest.mark.parametrize("name", ["test_vit", "swin_micro"])
def test_fused_and_unfused_attention_agree_after_pruning(name):
    model = make(name)
    isoprune.prune(model, isoprune.Ratios(emb=0.25, heads=0.5, head_dim=0.25, mlp=0.5))
    x = inputs_for(model)
    with torch.no_grad():
        fused = model(x)
        for m in model.modules():
            if isoprune._arch.attention_spec(m) is not None:
                m.fused_attn = False
        unfused = model(x)
    torch.testing.assert_close(fused, unfused, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", TINY)
def test_a_pruned_model_compiles_as_one_graph(name):
    """What deployment does with a pruned model: ``torch.compile`` traces it whole (no graph
    break from the changed widths or attention attributes) and computes what it does eagerly."""
    model = make(name)
    isoprune.prune(model, isoprune.Ratios(emb=0.25, heads=0.5, head_dim=0.25, mlp=0.5, default=0.4))
    x = inputs_for(model)
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(model, backend="eager", fullgraph=True, dynamic=False)(x)
        torch.testing.assert_close(compiled, model(x))


def test_swin_heads_take_their_relative_position_bias_along():
    model = make("swin_micro")
    assert_equivalent(model, isoprune.Ratios(heads=0.5, head_dim=0.25, mlp=0.5))
    for block in (b for stage in model.layers for b in stage.blocks):
        attn = block.attn
        assert attn.relative_position_bias_table.shape[1] == attn.num_heads
        assert attn.qkv.out_features == 3 * attn.proj.in_features
        assert attn.scale == pytest.approx((attn.proj.in_features // attn.num_heads) ** -0.5)
    assert model.layers[0].blocks[0].attn.num_heads == 1


@pytest.mark.parametrize("size", [(2, 6, 8, 5), (1, 7, 5, 3)])
def test_patch_merging_trace_forward_computes_what_timm_does(size):
    from timm.models.swin_transformer import PatchMerging

    torch.manual_seed(0)
    merge = PatchMerging(size[-1])
    x = torch.randn(size)
    assert torch.equal(isoprune._arch.patch_merging_forward(merge, x), merge(x))


def test_swin_patch_merging_drops_each_channel_from_all_four_neighbours():
    model = make("swin_micro")
    before = [stage.blocks[0].norm1.normalized_shape[0] for stage in model.layers]
    isoprune.prune(model, isoprune.Ratios(emb=0.5))
    dims = [stage.blocks[0].norm1.normalized_shape[0] for stage in model.layers]
    assert all(d < b for d, b in zip(dims, before))
    for i, stage in enumerate(model.layers[1:], start=1):
        merge = stage.downsample
        assert merge.norm.normalized_shape[0] == merge.reduction.in_features == 4 * dims[i - 1]
        assert merge.reduction.out_features == dims[i]
    assert model(inputs_for(model)).shape == (2, 10)


def test_classifier_is_never_pruned_at_its_output():
    model = make("deit_tiny_distilled_patch16_224", num_classes=7)
    isoprune.prune(model, 0.5)
    assert model.head.out_features == 7 and model.head_dist.out_features == 7
    model = make("tv:mobilenet_v2", num_classes=5)
    isoprune.prune(model, 0.5)
    assert model.classifier[1].out_features == 5


@pytest.mark.parametrize("name", ["test_vit", "test_resnet"])
def test_headless_model_keeps_its_feature_width(name):
    model = make(name, num_classes=0)
    x = inputs_for(model)
    shape = model(x).shape
    isoprune.prune(model, 0.5)
    assert model(x).shape == shape
    assert model.isoprune_plan.params["after"] < model.isoprune_plan.params["before"]


def test_plan_does_not_touch_the_model():
    model = make("test_resnet")
    state = copy.deepcopy(model.state_dict())
    isoprune.plan(model, 0.5)
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)


def test_round_to_keeps_multiples():
    model = make("test_vit")
    plan = isoprune.plan(model, isoprune.Ratios(mlp=0.37, emb=0.3), round_to=8)
    for g in plan.groups:
        if g.kind in ("mlp", "emb"):
            assert len(g.keep) % 8 == 0
    isoprune.apply_plan(model, plan)
    assert model.blocks[0].mlp.fc1.out_features % 8 == 0


def test_round_to_that_cannot_be_reached_keeps_the_whole_group():
    # 28 channels, 5 removed -> 23 kept, which rounds up to 32 > 28: every channel stays
    model = nn.Sequential(nn.Conv2d(3, 28, 3), nn.BatchNorm2d(28), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(28, 10)).eval()
    x = torch.randn(1, 3, 16, 16)
    plan = isoprune.plan(model, 5 / 28 + 1e-6, round_to=16, example_inputs=x)
    assert [len(g.keep) for g in plan.groups] == [28]


def test_bad_ratios_are_user_errors():
    model = make("test_resnet")
    with pytest.raises(isoprune.IsopruneError, match="outside"):
        isoprune.plan(model, 1.0)
    with pytest.raises(isoprune.IsopruneError, match="unknown ratio key 'embed'"):
        isoprune.plan(model, {"embed": 0.5})
    with pytest.raises(isoprune.IsopruneError, match="unknown scope"):
        isoprune.plan(model, 0.5, scope="layerwise")
    with pytest.raises(isoprune.IsopruneError, match="unknown importance"):
        isoprune.plan(model, 0.5, importance="l3")


def test_ratios_that_reach_no_group_are_an_error_or_a_warning(caplog):
    """``mlp=0.5`` on a ResNet prunes nothing: an error; beside a ratio that reaches its groups, a
    warning, as for an override naming no member; one number for every kind says nothing."""
    model = make("test_resnet")
    with pytest.raises(isoprune.IsopruneError, match=r"ratios mlp=0.5 reach no group of this ResNet, so nothing would be pruned \(its kinds: channels\)"):
        isoprune.plan(model, {"mlp": 0.5})
    with caplog.at_level("WARNING", logger="isoprune"):
        pruning = isoprune.plan(model, isoprune.Ratios(default=0.3, mlp=0.5, overrides={"layer9.conv1": 0.4, "re:layer1": 0.2}))
    assert "ratios layer9.conv1=0.4, mlp=0.5 reach no group of this ResNet (its kinds: channels)" in caplog.text
    assert pruning.macs["after"] < pruning.macs["before"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="isoprune"):
        isoprune.plan(model, 0.3)
        isoprune.plan(model, isoprune.Ratios(emb=0.5, heads=0.5, mlp=0.5, default=0.5))  # the ViT kinds at the default's ratio
    assert "reach no group" not in caplog.text


def test_a_failed_trace_says_whether_the_inputs_or_the_tracer_are_to_blame(monkeypatch):
    model = make("test_vit")  # built for 3 channels
    with pytest.raises(isoprune.IsopruneError, match=r"does not run on inputs of shape \[1, 1, 160, 160\]: RuntimeError: .*"
                                                      "pass example_inputs shaped like the model's real input"):
        isoprune.plan(model, 0.3, example_inputs=torch.randn(1, 1, 160, 160))
    with pytest.raises(isoprune.IsopruneError, match=r"does not run on inputs of shape \[1, 3, 32, 32\]: AssertionError: Input height \(32\) "):
        isoprune.plan(timm.create_model("deit_tiny_patch16_224"), 0.3, example_inputs=torch.randn(1, 3, 32, 32))  # built for 224
    # DPN-68's block as timm writes it: Torch-Pruning cannot infer the widths of its slices
    monkeypatch.delitem(_arch._TRACE_FORWARD, dpn.DualPathBlock)
    with pytest.raises(isoprune.IsopruneError, match="the model runs on these inputs, but the tracer cannot follow its layers"):
        isoprune.plan(timm.create_model("dpn68"), 0.3)


class FixedWidth(nn.Module):
    """fc1's width is pinned by a buffer the tracer does not see: cutting it breaks the model."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        self.register_buffer("mask", torch.ones(16))

    def forward(self, x):
        h = torch.relu(self.fc1(x)) * self.mask
        return self.fc3(torch.relu(self.fc2(h)))


class SlicedWidth(nn.Module):
    """fc1's first 12 channels meet a buffer: one channel may go, eight may not."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        self.register_buffer("mask", torch.ones(12))

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc3(self.fc2(h) + (h[:, :12] * self.mask).sum(1, keepdim=True))


def test_group_whose_cut_breaks_the_model_is_left_whole(caplog):
    model, x = FixedWidth(), torch.randn(2, 8)
    analysis = isoprune._groups.analyse(model, x)
    assert list(analysis.frozen) == ["fc1"] and "broadcast" in analysis.frozen["fc1"]
    assert "1 group is left whole (fc1: " in caplog.text
    isoprune.prune(model, 0.5, example_inputs=x)
    assert (model.fc1.out_features, model.fc2.out_features) == (16, 8)
    assert model(x).shape == (2, 4)


def test_group_whose_planned_cut_breaks_the_model_is_left_whole(caplog):
    model, x = SlicedWidth(), torch.randn(2, 8)
    assert isoprune._groups.analyse(model, x).frozen == {}  # one channel is fine
    pruning = isoprune.plan(model, 0.5, example_inputs=x)
    assert "1 more group is left whole: the planned cut breaks the model" in caplog.text
    assert all(len(g.keep) == g.channels for g in pruning.groups)
    isoprune.apply_plan(model, pruning, x)
    assert model(x).shape == (2, 4)


def test_grouped_convolutions_lose_the_same_positions_in_every_group():
    model = make("regnetx_002")
    convs = {n: m.groups for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
    assert len(convs) > 5
    pruning = assert_equivalent(model, 0.4)
    for name, groups in convs.items():
        conv = model.get_submodule(name)
        assert conv.groups == groups and conv.in_channels % groups == conv.out_channels % groups == 0
    assert pruning.macs["after"] < 0.6 * pruning.macs["before"]
    assert any(g.blocks > 1 for g in pruning.groups)
    fresh = isoprune.apply_plan(make("regnetx_002"), isoprune.PruningPlan.from_dict(pruning.to_dict()))
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_hybrid_vit_takes_images_into_its_backbone():
    """A hybrid ViT's patch embedding is a CNN and a 1x1 projection of its features: the image's
    channels are the CNN's (the trace was fed the projection's 1024, and failed)."""
    model = make("vit_hybrid_micro")
    assert isoprune._trace.input_size(model) == (3, 64, 64)
    plan = isoprune.plan(model, 0.5)
    isoprune.apply_plan(model, plan)
    assert plan.macs["after"] == isoprune.count(model)[0] < 0.5 * plan.macs["before"]
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)


def test_a_mapping_that_does_not_fit_leaves_its_group_whole(monkeypatch):
    """Torch-Pruning pairs a split's readers with its parts by position; where they do not pair up
    (BAT-ResNeXt's bilinear attention as timm writes it, here without the trace forward isoprune
    has for it since), a walk meets a mapping it cannot apply. That group is left whole, with why,
    and the others are cut: before, the whole analysis failed with a bare IndexError."""
    monkeypatch.delitem(_arch._TRACE_FORWARD, BilinearAttnTransform)
    analysis = _groups.analyse(timm.create_model("bat_resnext26ts", device="meta"))
    whole = [why for why in analysis.frozen.values() if "does not fit its channels" in why]
    assert whole and len(analysis.groups) > len(analysis.frozen)


def test_group_norms_keep_their_groups_equal():
    """A GroupNorm needs as many channels in each of its groups: BiT (ResNetV2 with 32 groups
    everywhere) and EfficientNet-GN could not lose one channel, and were left whole."""
    model = make("bit_micro")
    norms = {n: m.num_channels for n, m in model.named_modules() if isinstance(m, nn.GroupNorm)}
    analysis = _groups.analyse(model)
    assert not analysis.frozen and all(g.blocks % 32 == 0 for g in analysis.groups)
    pruning = isoprune.plan(model, 0.5)
    isoprune.apply_plan(model, pruning)
    for name, width in norms.items():
        norm = model.get_submodule(name)
        assert norm.num_groups == 32 and norm.num_channels % 32 == 0 and norm.num_channels < width
    assert pruning.macs["after"] < 0.4 * pruning.macs["before"] and pruning.macs["after"] == isoprune.count(model)[0]
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)


def test_blur_pool_follows_its_input_width():
    """timm's ``BlurPool2d`` keeps a copy of its filter per channel it was built for: ResNet-Blur,
    EfficientNet-Blur and MobileNetV4-Blur were left with their blurred widths whole."""
    model = make("resnetblur_micro")
    blurs = [m for m in model.modules() if isinstance(m, BlurPool2d)]
    assert blurs and not _groups.analyse(model).frozen
    pruning = assert_equivalent(model, 0.5, changes=0.02)
    assert all(b.channels is None and b.filt.shape[0] == 1 for b in blurs)
    assert pruning.macs["after"] < 0.4 * pruning.macs["before"]


def test_ghostnet_cuts_each_channel_with_its_cheap_copy():
    # a GhostModule concatenates a conv's outputs with their depthwise copies: a layer fed both
    # halves loses channel i and i + half together, or the halves no longer match
    model = make("ghostnet_050")
    analysis = _groups.analyse(model)
    assert not analysis.frozen
    paired = [g for g in analysis.groups if g.blocks == 2]
    assert {"blocks.1.0.conv_dw", "blocks.7.0.shortcut.2"} <= {g.root for g in paired}
    pruning = assert_equivalent(model, 0.4)
    assert pruning.macs["after"] < 0.5 * pruning.macs["before"]
    dw = model.blocks[1][0].conv_dw
    assert dw.in_channels == dw.out_channels == dw.groups == 2 * model.blocks[1][0].ghost1.primary_conv[0].out_channels


def test_coupled_root_channels_go_by_position_in_equal_runs():
    runs = lambda n, pairs: _groups._coupled_runs(n, np.array(pairs, dtype=np.int64).reshape(-1, 2).T)  # noqa: E731
    assert runs(6, []) == (1, 0)
    assert runs(6, [(0, 3), (1, 4), (2, 5)]) == (2, 0)
    assert runs(6, [(0, 2), (2, 4), (1, 3), (5, 3)]) == (3, 0)  # found as chains, in any order
    assert runs(6, [(0, 3), (1, 4)]) == (2, 0)  # channels 2 and 5, coupled to none, go together too
    assert runs(8, [(0, 2), (1, 3), (4, 6), (5, 7)]) == (4, 0)  # ResNeSt's attention: [cardinality, radix, channels]
    assert runs(6, [(0, 1), (2, 3), (4, 5)]) == (1, 0)  # neighbours, not positions in runs
    # the runs start after channels coupled to none (MobileViTv2: a query channel, then keys and values)
    assert runs(7, [(1, 4), (2, 5), (3, 6)]) == (2, 1)
    assert runs(6, [(2, 4), (3, 5)]) == (2, 2)  # not 3 runs from channel 0, whose channels 0 and 1 nothing coupled to 2 and 3
    assert runs(7, [(1, 4), (2, 6)]) == (1, 0)  # pairs out of line: no runs


def test_weight_standardised_convolutions_are_cut_and_counted():
    from timm.layers import ScaledStdConv2d

    # NFNet's convolutions scale each output channel by a gain of their own
    model = make("test_nfnet")
    assert not _groups.analyse(model).frozen
    pruning = isoprune.plan(model, 0.4)
    isoprune.apply_plan(model, pruning)
    convs = [m for m in model.modules() if isinstance(m, ScaledStdConv2d)]
    assert len(convs) > 5 and all(c.gain.shape == (c.out_channels, 1, 1, 1) for c in convs)
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)
    assert pruning.macs["after"] < 0.55 * pruning.macs["before"]
    # their MACs are a convolution's (Torch-Pruning's counter knows no subclass and counts none)
    torch.manual_seed(0)
    std, plain = ScaledStdConv2d(8, 16, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(1, 8, 12, 12)
    assert isoprune.count(std, x)[0] == isoprune.count(plain, x)[0] == 16 * 12 * 12 * 8 * 9 + 16 * 12 * 12


def test_parameters_traced_onto_the_wrong_channels_stay_whole(monkeypatch):
    # unregistered, ConViT's gates (one per head) are joined by the tracer to the value channels
    from timm.models import convit

    monkeypatch.delitem(_arch._ATTENTION, convit.GPSA)
    monkeypatch.delitem(_arch._TRACE_FORWARD, convit.GPSA)
    model = make("convit_micro")
    gates = {n: p.shape for n, p in model.named_parameters() if "gating_param" in n}
    assert "does not have" in isoprune._groups.analyse(model).frozen["blocks.0.attn.v"]
    x = inputs_for(model)
    isoprune.prune(model, 0.4)
    assert model(x).shape == (2, 10)
    assert {n: p.shape for n, p in model.named_parameters() if "gating_param" in n} == gates
    assert model.isoprune_plan.params["after"] < 0.8 * model.isoprune_plan.params["before"]


def test_attention_whose_width_its_layout_misreads_is_probed(monkeypatch):
    # a qkv group is cut by head, unprobed, only when it holds the channels its layout says
    # (GC ViT's global qkv holds keys and values, not the three copies a layout reads)
    from dataclasses import fields

    from timm.layers.attention import Attention

    spec = _arch._ATTENTION[Attention]

    class Misread(type(spec)):
        def layout(self, module, projection=None):
            right = super().layout(module, projection)
            return right._replace(head_dim=right.head_dim - 1)

    monkeypatch.setitem(_arch._ATTENTION, Attention, Misread(**{f.name: getattr(spec, f.name) for f in fields(spec)}))
    model = make("test_vit")
    frozen = _groups.analyse(model).frozen
    qkv = [f"{name}.qkv" for name, m in model.named_modules() if isinstance(m, Attention)]
    assert qkv and all("RuntimeError" in frozen[name] for name in qkv)
    isoprune.prune(model, 0.3)
    assert model(inputs_for(model)).shape == (2, 10)


def test_a_channels_last_model_stays_channels_last():
    model = make("test_resnet").to(memory_format=torch.channels_last)
    x = inputs_for(model)
    isoprune.prune(model, 0.5)
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in weights)
    reference = make("test_resnet")
    isoprune.apply_plan(reference, model.isoprune_plan)
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
