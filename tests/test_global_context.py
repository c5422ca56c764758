"""Global context blocks (GCNet; timm's ``gcresnet``, ``gcresnext``, ``gc_efficientnetv2``): a 1x1
convolution to one channel weighs every channel at each position. The tracer coupled that one
channel to all of them, its walk through timm's reshapes did not end, and the block's channels
were left whole (30 of gcresnet33ts's 58 groups)."""
import copy

import pytest
import timm
import torch
from timm.layers import GlobalContext
from torch import nn

import isoprune
from conftest import lively
from isoprune import _groups


def block_model(**kw) -> nn.Module:
    """Convolution, global context (with the attention unless told otherwise), convolution, head."""
    torch.manual_seed(0)
    gc = GlobalContext(24, rd_channels=8, **kw)
    model = nn.Sequential(nn.Conv2d(3, 24, 3), nn.ReLU(), gc, nn.Conv2d(24, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    lively(model)
    for name, m in list(gc.named_modules()):
        if isinstance(m, nn.LayerNorm):  # LayerNorm2d over the MLP's hidden channels: removing one is not zeroing it
            gc.set_submodule(name, nn.Identity())
    return model.eval()


@pytest.mark.parametrize("kw", [{}, {"fuse_add": True, "fuse_scale": False}, {"use_attn": False, "fuse_add": True}], ids=["scale", "add", "no-attn"])
def test_pruned_equals_zeroed(kw):
    model = block_model(**kw)
    x = torch.randn(2, 3, 16, 16)
    assert _groups.analyse(model, x).frozen == {}
    plan = isoprune.plan(model, 0.5, example_inputs=x)
    zeroed = isoprune.zero_out(copy.deepcopy(model), plan)
    with torch.no_grad():
        before = model(x)
    isoprune.apply_plan(model, plan)
    gc = model[2]
    assert model[0].out_channels == 12 and (gc.conv_attn is None or gc.conv_attn.in_channels == 12)
    mlp = gc.mlp_scale or gc.mlp_add
    assert mlp.fc1.in_channels == mlp.fc2.out_channels == 12 and mlp.fc1.out_channels < 8
    with torch.no_grad():
        got = model(x)
        torch.testing.assert_close(got, zeroed(x), atol=1e-5, rtol=0)
    assert (got - before).abs().max() > 0.05


def test_gcresnet_is_cut_whole():
    model = timm.create_model("gcresnet33ts", num_classes=10)
    analysis = _groups.analyse(model)
    assert analysis.frozen == {} and len(analysis.groups) > 40
    blocks = [m for m in model.modules() if isinstance(m, GlobalContext)]
    built = [m.conv_attn.in_channels for m in blocks]
    isoprune.prune(model, 0.3)
    assert blocks and all(m.conv_attn.in_channels == (m.mlp_scale or m.mlp_add).fc1.in_channels < c for m, c in zip(blocks, built))
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)
