"""Gemma-4's vision tower: attention with separate query, key and value layers (each in a wrapper
that may clamp), queries and keys normalised over head dims and rotated by a 2-d RoPE, and a gated
MLP. The tracer could not follow the RoPE's split halves, and no Gemma-4 model traced; now heads
are cut (``_zoo.gemma4_attention_trace``), and head dims, which the RoPE and the norms hold, stay."""
import torch
import timm
from timm.layers import RmsNorm
from timm.models import gemma4_vit

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, lively, without_norms
from isoprune import _groups

RATIOS = isoprune.Ratios(emb=0.3, heads=0.5, head_dim=0.5, mlp=0.3)


def micro(name: str = "gemma4_vit_167m_enc", **kwargs) -> torch.nn.Module:
    """Two blocks of 4 heads of 8 dims on a 3x3 grid of 16-pixel patches (clamping linears, as the
    167M tower has; the encoder pools them into soft tokens)."""
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=48, embed_dim=32, depth=2, num_heads=4, head_dim=8, intermediate_size=64,
                              position_embedding_size=64, **kwargs)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 48, 48)}
    return model.eval()


def test_heads_are_cut():
    model = without_norms(lively(micro()), (RmsNorm,))  # removing channels under a norm over them is not zeroing them
    attentions = [m for m in model.modules() if isinstance(m, gemma4_vit.Gemma4Attention)]
    assert _groups.analyse(model).frozen == {}
    plan = assert_equivalent(model, RATIOS, changes=0.01)
    assert {g.kind for g in plan.groups if len(g.keep) < g.channels} == {"heads", "mlp"}  # the stream is the output
    for a in attentions:
        assert a.num_heads == a.num_kv_heads == 2 and a.head_dim == 8
        assert a.q_proj.linear.out_features == a.k_proj.linear.out_features == a.v_proj.linear.out_features == a.o_proj.linear.in_features == 16


def test_classifier_keeps_the_stream_its_weightless_norm_normalises():
    model = micro("gemma4_vit_167m", num_classes=10)
    frozen = _groups.analyse(model).frozen
    assert len(frozen) == 1 and "normalized_shape=[32]" in next(iter(frozen.values()))
    isoprune.prune(model, RATIOS)
    assert all(a.num_heads == 2 for a in model.modules() if isinstance(a, gemma4_vit.Gemma4Attention))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 48, 48)).shape == (2, 10)


def test_macs_count_what_timm_runs():
    assert_counts_what_timm_runs(micro(), RATIOS)
