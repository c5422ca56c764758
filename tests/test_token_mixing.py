"""MLP-Mixer, ResMLP and gMLP: layers that mix tokens, run on the transposed map
(``layer(x.transpose(1, 2)).transpose(1, 2)``), whose features are the tokens. The tracer read
them as taking the channels around them, and left the embedding whole."""
import pytest
import torch
from timm.layers import GatedMlp
from timm.models import mlp_mixer
from torch import nn

from conftest import assert_counts_what_timm_runs, assert_equivalent, inputs_for, lively, without_norms
from isoprune import _groups

TOKENS = 16  # 32 px in patches of 8
TOKEN_HIDDEN = 16  # MLP-Mixer's token MLP: half the 32 channels
KINDS = {
    "mixer": {},
    "resmlp": dict(mlp_ratio=4, block_layer=mlp_mixer.ResBlock, norm_layer=mlp_mixer.Affine),
    "gmlp": dict(mlp_ratio=6, block_layer=mlp_mixer.SpatialGatingBlock, mlp_layer=GatedMlp),
}


def make(kind: str) -> mlp_mixer.MlpMixer:
    """Two blocks of 32 channels over 16 tokens, built as timm's registered models of each kind
    are (which fix their sizes)."""
    torch.manual_seed(0)
    return mlp_mixer.MlpMixer(num_classes=10, img_size=32, patch_size=8, num_blocks=2, embed_dim=32, **KINDS[kind]).eval()


def token_layers(model: nn.Module) -> dict[str, nn.Linear]:
    names = ("mlp_tokens.fc1", "mlp_tokens.fc2", "linear_tokens", "gate.proj")
    return {n: m for n, m in model.named_modules() if n.endswith(names)}


@pytest.mark.parametrize("name", ["mixer", "resmlp", "gmlp"])
def test_pruned_equals_zeroed_and_the_tokens_stay(name):
    model = lively(without_norms(make(name)))  # ResMLP's per-channel Affine stays
    width = model.stem.proj.out_channels
    analysis = _groups.analyse(model)
    assert analysis.frozen == {}
    tokens = token_layers(model)
    members = {m for g in analysis.groups for m in g.members}
    for n in tokens:  # no group reaches a token-mixing layer's tokens
        assert (n, "in" if n.endswith(("fc1", "linear_tokens", "proj")) else "out") not in members
    plan = assert_equivalent(model, 0.5, changes=0.1)
    assert model.stem.proj.out_channels < width  # the embedding was cut
    for n, layer in tokens.items():
        if n.endswith("mlp_tokens.fc1"):
            assert layer.in_features == TOKENS and layer.out_features < TOKEN_HIDDEN  # its hidden units were cut
        elif n.endswith("mlp_tokens.fc2"):
            assert layer.out_features == TOKENS
        else:
            assert (layer.in_features, layer.out_features) == (TOKENS, TOKENS)
    if name == "gmlp":  # the gate's halves lose the same units
        for block in model.blocks:
            assert block.mlp_channels.fc1.out_features == 2 * block.mlp_channels.fc2.in_features
    kinds = {g.kind for g in plan.groups if len(g.keep) < g.channels}
    assert kinds == {"channels", "mlp"}


def test_token_and_channel_mlps_are_not_isomorphic():
    """Both are Linear-GELU-Linear; the token MLP's outputs are tokens, so they rank apart."""
    analysis = _groups.analyse(make("mixer"))
    signatures = {g.root: g.signature for g in analysis.groups if g.kind == "mlp"}
    tokens = {s for root, s in signatures.items() if "mlp_tokens" in root}
    channels = {s for root, s in signatures.items() if "mlp_channels" in root}
    assert len(tokens) == len(channels) == 1 and tokens != channels


@pytest.mark.parametrize("name", ["mixer", "resmlp", "gmlp"])
def test_macs_count_what_timm_runs(name):
    model = make(name)
    assert_counts_what_timm_runs(model, 0.3)
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)
