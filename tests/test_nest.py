"""NesT's attention within image blocks (``[batch, blocks, tokens, channels]``), its output laid out
head dim first where its values are heads first. The tracer could not follow timm's reshapes and
left every qkv whole; now heads and head dims are cut (``_zoo.nest_attention_trace``), and the
pruned forward reads its head dim from the qkv's width."""
import torch
from timm.models import nest

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, lively, without_norms
from isoprune import _groups, _zoo


def micro() -> nest.Nest:
    torch.manual_seed(0)
    model = nest.Nest(img_size=32, embed_dims=(16, 32, 48), num_heads=(2, 2, 4), depths=(1, 1, 2), num_classes=10)
    model.pretrained_cfg = {"input_size": (3, 32, 32)}  # timm's configs carry the image size
    return model.eval()


def test_pruned_attention_computes_what_the_zeroed_one_does():
    model = without_norms(lively(micro()))  # removing channels under a LayerNorm is not zeroing them
    attentions = {n: m for n, m in model.named_modules() if isinstance(m, nest.Attention)}
    assert _groups.analyse(model).frozen == {}
    plan = assert_equivalent(model, isoprune.Ratios(emb=0.3, heads=0.5, head_dim=0.5, mlp=0.3), changes=0.05)
    cut = {g.kind: g.owner for g in plan.groups if g.kind in ("heads", "head_dim") and len(g.keep) < g.channels}
    assert set(cut) == {"heads", "head_dim"}
    for attn in attentions.values():
        assert type(attn) is _zoo.PrunedNestAttention
        head_dim = attn.qkv.out_features // (3 * attn.num_heads)
        assert attn.proj.in_features == attn.num_heads * head_dim
    assert any(a.num_heads * 2 == b for a, b in zip(attentions.values(), (2, 2, 4, 4)))
    last = attentions["levels.2.transformer_encoder.1.attn"]
    assert last.num_heads == 2 and last.qkv.out_features == 3 * 2 * 6 and last.scale == 12**-0.5


def test_macs_count_what_timm_runs():
    assert_counts_what_timm_runs(micro(), isoprune.Ratios(emb=0.3, heads=0.5, head_dim=0.5, mlp=0.3))
