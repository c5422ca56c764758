"""The paper's DeiT-B -> DeiT-S configuration reaches the paper's size (structure only)."""
import timm
import torch

import isoprune


def test_deit_base_to_deit_small_matches_the_paper():
    model = timm.create_model("deit_base_distilled_patch16_224")
    plan = isoprune.plan(model, isoprune.Ratios(emb=0.5, heads=0.5, head_dim=0.25, mlp=0.5))
    assert abs(plan.macs["before"] / 17.69e9 - 1) < 0.02 and abs(plan.params["before"] / 87.34e6 - 1) < 0.02
    assert abs(plan.macs["after"] / 4.16e9 - 1) < 0.02
    assert abs(plan.params["after"] / 20.69e6 - 1) < 0.02
    isoprune.apply_plan(model, plan)
    assert model.pos_embed.shape[-1] == 384 and model.patch_embed.proj.out_channels == 384
    assert sum(b.attn.num_heads for b in model.blocks) == 72
    assert isoprune.count(model) == (plan.macs["after"], plan.params["after"])
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
