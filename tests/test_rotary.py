"""timm's rotary-embedding ViTs (EVA-02 and DINOv3's ``EvaAttention``; the rope ViTs' and
Perception Encoder's ``AttentionRope``): heads, embedding and (gated) MLPs pruned; head dims kept
whole where the rotary position embedding turns them in pairs."""
import copy

import pytest
import timm
import torch
from timm.models.eva import EvaAttention
from torch import nn

import isoprune
from conftest import assert_equivalent, base_of, inputs_for, layernorm_free, lively, make

EVA = ["eva02_micro", "eva02_separate_micro"]
ROTARY = EVA + ["vit_rope_micro"]


@pytest.mark.parametrize("name", ROTARY)
def test_prunes_heads_embedding_and_mlp_keeping_rotary_head_dims(name):
    model = make(name)
    x = inputs_for(model)
    kinds = {g.kind: g.fixed for iso in isoprune.isomorphic_groups(model) for g in iso.groups}
    assert kinds.keys() == {"emb", "heads", "head_dim", "mlp"}
    assert "rotary" in kinds["head_dim"] and kinds["heads"] is None
    macs, params = isoprune.count(model)
    isoprune.prune(model, isoprune.Ratios(emb=0.5, heads=0.34, head_dim=0.5, mlp=0.5))
    assert model(x).shape == (2, 10)
    for group in model.isoprune_plan.groups:
        assert (len(group.keep) == group.channels) == (group.kind == "head_dim")
    for block in model.blocks:
        attn = block.attn
        assert isinstance(attn, EvaAttention) == (type(attn) is isoprune._arch.PrunedEvaAttention)
        assert attn.num_heads == 2 and attn.head_dim == 16 and attn.proj.in_features == 32
    assert model.isoprune_plan.macs["after"] < 0.6 * macs and isoprune.count(model)[1] < 0.6 * params


@pytest.mark.parametrize("name", ROTARY)
def test_heads_and_mlp_are_equivalent_to_zeroing_them(name):
    model = lively(make(name))
    with torch.no_grad():
        before = model(inputs_for(model))
    plan = assert_equivalent(model, layernorm_free(model, 0.34))  # the separate one's MLP has a norm
    assert any(len(g.keep) < g.channels for g in plan.groups if g.kind == "heads")
    with torch.no_grad():
        assert (model(inputs_for(model)) - before).abs().max() > 0.1  # the cut mattered


@pytest.mark.parametrize("name, extra", [(n, {}) for n in ROTARY] + [("vit_rope_micro", {"qkv_fused": False})])
def test_without_rotary_embedding_head_dims_are_pruned_too(name, extra):
    base = base_of(name)
    torch.manual_seed(0)
    model = lively(timm.create_model(base["name"], **base["kwargs"], **extra, use_rot_pos_emb=False).eval())
    plan = assert_equivalent(model, isoprune.Ratios(heads=0.34, head_dim=0.25))
    assert all(len(g.keep) < g.channels for g in plan.groups if g.kind in ("heads", "head_dim"))
    attn = model.blocks[0].attn
    if getattr(attn, "q_bias", None) is not None:  # EVA's fused qkv: its separate biases are cut like its rows
        assert attn.q_bias.shape == attn.k_bias.shape == attn.v_bias.shape == (attn.num_heads * attn.head_dim,)


def test_mixed_rotary_embedding_keeps_heads_whole_too():
    model = timm.create_model("vit_small_patch16_rope_mixed_224", **base_of("vit_rope_micro")["kwargs"]).eval()
    fixed = {g.kind: g.fixed for iso in isoprune.isomorphic_groups(model) for g in iso.groups}
    assert "per head" in fixed["heads"] and "pairs" in fixed["head_dim"] and fixed["mlp"] is None
    isoprune.prune(model, isoprune.Ratios(emb=0.25, heads=0.5, mlp=0.5))
    assert model.blocks[0].attn.num_heads == 3 and model(inputs_for(model)).shape == (2, 10)


@pytest.mark.parametrize("name", ROTARY)
def test_pruned_model_saves_and_loads(name, tmp_path):
    model = lively(make(name))
    isoprune.prune(model, isoprune.Ratios(emb=0.25, heads=0.34, mlp=0.5))
    loaded = isoprune.load(isoprune.save(model, tmp_path / "m", base=base_of(name)))
    x = inputs_for(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=0)
    assert type(loaded.blocks[1].attn) is type(model.blocks[1].attn)


@pytest.mark.parametrize("name", EVA)
def test_pruned_eva_forward_computes_what_timm_does(name):
    model = lively(make(name))
    x = inputs_for(model)
    with torch.no_grad():
        expected = model(x)
        twin = copy.deepcopy(model)
        isoprune._arch.settle(twin)
        torch.testing.assert_close(twin(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("gate_last", [False, True])
def test_glu_mlp_trace_forward_computes_what_timm_does(gate_last):
    from timm.layers import GluMlp

    torch.manual_seed(0)
    mlp = GluMlp(8, 12, act_layer=nn.SiLU, gate_last=gate_last)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(isoprune._arch.glu_mlp_trace(mlp, x), mlp(x))


def test_gated_mlp_loses_each_hidden_unit_from_both_halves():
    model = lively(make("eva02_micro"))
    fc1 = model.blocks[0].mlp.fc1.weight.detach().clone()
    hidden = fc1.shape[0] // 2
    with torch.no_grad():  # hidden unit 3 is tiny in both halves and at fc2's input
        for half in (0, hidden):
            model.blocks[0].mlp.fc1.weight[half + 3] *= 1e-4
            model.blocks[0].mlp.fc1.bias[half + 3] *= 1e-4
        model.blocks[0].mlp.fc2.weight[:, 3] *= 1e-4
    isoprune.prune(model, isoprune.Ratios(mlp=1 / hidden), scope="local")
    kept = model.blocks[0].mlp.fc1.weight
    assert kept.shape[0] == 2 * (hidden - 1) and model.blocks[0].mlp.fc2.in_features == hidden - 1
    rows = [r for r in range(2 * hidden) if r not in (3, hidden + 3)]
    torch.testing.assert_close(kept, fc1[rows])


def test_eva_counts_its_fused_qkv():
    # timm runs EVA's fused qkv through F.linear on its weight, which a per-layer counter misses
    model = make("eva02_micro")
    macs, _ = isoprune.count(model)
    skeleton, inputs = isoprune._trace.meta_skeleton(model), isoprune._trace.meta_inputs(model)
    with isoprune._trace.counting(skeleton, inputs) as own, torch.no_grad():
        isoprune._trace.forward(skeleton, inputs)  # timm's own forward
    qkv, tokens = model.blocks[0].attn.qkv, 1 + model.patch_embed.num_patches
    assert macs - own.macs == len(model.blocks) * tokens * qkv.in_features * qkv.out_features
    assert isoprune.plan(model, 0.3).macs["before"] == macs
