"""timm's Swin V2 (``swin_transformer_v2``): SwinV2-CR's cosine attention with its q and v biases
apart from its qkv and a position bias MLP (``cpb_mlp``) with an output per head, and a patch
merging normalised after its reduction. Its attention reshaped its output to the input's width,
and its merging's reduction lost one input per channel where four go, so every stage's embedding
was left whole."""
import torch
import torch_pruning as tp
from timm.models import swin_transformer_v2 as swinv2

import isoprune
from conftest import assert_equivalent, inputs_for, lively, make, without_norms
from isoprune import _groups, _zoo


def test_pruned_model_computes_what_the_zeroed_one_does():
    model = without_norms(lively(make("swinv2_micro")))
    attentions = [m for m in model.modules() if isinstance(m, swinv2.WindowAttention)]
    analysis = _groups.analyse(model)
    assert not analysis.frozen and all("cosine" in g.fixed for g in analysis.groups if g.kind == "head_dim")
    plan = assert_equivalent(model, 0.5, changes=0.05)
    assert {g.kind for g in plan.groups if len(g.keep) < g.channels} == {"emb", "heads", "mlp"}
    for attn in attentions:
        heads = attn.num_heads
        assert type(attn) is _zoo.PrunedSwinV2WindowAttention
        assert attn.q_bias.shape == attn.v_bias.shape == attn.k_bias.shape == (attn.proj.in_features,)
        assert attn.logit_scale.shape[0] == attn.cpb_mlp[-1].out_features == attn.cpb_mlp[-1].weight.shape[0] == heads
    for merge in (m for m in model.modules() if isinstance(m, swinv2.PatchMerging)):
        assert merge.reduction.in_features % 4 == 0


def test_macs_count_what_runs():
    """timm runs the qkv as ``F.linear`` on its weight, which Torch-Pruning's counter misses; a
    pruned attention calls it as a layer, so after pruning the counts agree."""
    model = make("swinv2_micro")
    x = inputs_for(model, 1)
    plan = isoprune.plan(model, 0.5)
    isoprune.apply_plan(model, plan)
    assert plan.macs["after"] == isoprune.count(model)[0] == tp.utils.count_ops_and_params(model, x)[0] < plan.macs["before"]
    with torch.no_grad():
        assert model(x).shape == (1, 10)
