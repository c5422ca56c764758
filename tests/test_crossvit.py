"""CrossViT's cross attention: each branch's class token attends to the other branch's tokens with
separate ``wq``/``wk``/``wv`` layers, as CaiT's class attention does. Unregistered, its reshapes at
the input's width broke on any cut, and 8 groups of CrossViT-Ti (its embeddings among them) were
left whole."""
from timm.models import crossvit

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, lively, make, without_norms
from isoprune import _groups, _zoo


def test_pruned_cross_attention_computes_what_the_zeroed_one_does():
    model = without_norms(lively(make("crossvit_micro")))
    attentions = {name: m for name, m in model.named_modules() if isinstance(m, crossvit.CrossAttention)}
    built = {name: m.num_heads for name, m in attentions.items()}
    assert _groups.analyse(model).frozen == {}
    plan = assert_equivalent(model, 0.5, changes=0.1)
    assert sum(g.kind == "emb" and len(g.keep) < g.channels for g in plan.groups) == 2  # both branches' embeddings
    for name, attn in attentions.items():
        assert type(attn) is _zoo.PrunedCrossAttention
        assert attn.wq.out_features == attn.wk.out_features == attn.wv.out_features == attn.proj.in_features
        assert attn.num_heads < built[name] and attn.proj.in_features % attn.num_heads == 0


def test_macs_count_what_timm_runs():
    assert_counts_what_timm_runs(make("crossvit_micro"), isoprune.Ratios(emb=0.3, heads=0.5, head_dim=0.25, mlp=0.3))
