"""EfficientViT's attention, both papers'. MIT's lightweight multi-scale linear attention
(``LiteMLA``): a fused qkv laid out a head at a time, aggregated by a depthwise and a grouped
convolution (a group each head's query, key or value), ReLU linear attention on the qkv and on
each aggregation. The tracer mapped timm's reshape onto channels the output projection lacks, and
left every qkv whole; now head dims are cut (``_zoo.lite_mla_trace``), each scale's on its own,
and the heads stay. MSRA's cascaded group attention: the map split a part a head, each head with
its own qkv layer on its part plus the previous head's output, within windows. The tracer could
not follow timm's reshapes and left every attention whole; now each head keeps its own query,
key and value widths (``_zoo.cascaded_group_attention_trace``)."""
import torch
from timm.models import efficientvit_mit, efficientvit_msra

from conftest import assert_counts_what_timm_runs, assert_equivalent, inputs_for, lively, make, without_norms
from isoprune import _groups, _zoo


def test_pruned_attention_computes_what_the_zeroed_one_does():
    model = without_norms(lively(make("efficientvit_micro")))  # the head's LayerNorm: removing is not zeroing under it
    attentions = [m for m in model.modules() if isinstance(m, efficientvit_mit.LiteMLA)]
    built = {id(a): (a.aggreg[0][1].groups // 3, a.dim) for a in attentions}
    assert len(attentions) == 4 and _groups.analyse(model).frozen == {}
    assert_equivalent(model, 0.5, changes=0.05)
    cut = 0
    for a in attentions:
        heads, dim = built[id(a)]
        assert type(a) is _zoo.PrunedLiteMLA and a.aggreg[0][1].groups == 3 * heads
        plain, aggregated = a.qkv.conv.out_channels // (3 * heads), a.aggreg[0][1].out_channels // (3 * heads)
        assert a.qkv.conv.out_channels == 3 * heads * plain and a.proj.conv.in_channels == heads * (plain + aggregated)
        cut += (plain < dim) + (aggregated < dim)
    assert cut >= 4


def test_cascaded_heads_keep_their_own_widths():
    model = lively(make("efficientvit_msra_micro"))
    attentions = [m for m in model.modules() if isinstance(m, efficientvit_msra.CascadedGroupAttention)]
    built = {id(a): a.key_dim for a in attentions}
    assert _groups.analyse(model).frozen == {}
    assert_equivalent(model, 0.5, changes=0.01)
    keys = []
    for a in attentions:
        assert type(a) is _zoo.PrunedCascadedGroupAttention and len(a.qkvs) == a.num_heads
        widths = [(dws.conv.out_channels, qkv.conv.out_channels - 2 * dws.conv.out_channels) for qkv, dws in zip(a.qkvs, a.dws)]
        for (key, value), qkv in zip(widths[:-1], a.qkvs[1:]):
            assert qkv.conv.in_channels == value  # the next head adds this head's output to its part
        assert a.proj[1].conv.in_channels == sum(value for _, value in widths) and all(key <= built[id(a)] for key, _ in widths)
        keys += [key for key, _ in widths]
    assert min(keys) < 8


def test_macs_count_what_timm_runs():
    for name in ("efficientvit_micro", "efficientvit_msra_micro"):
        model = make(name)
        assert_counts_what_timm_runs(model, 0.3)
        with torch.no_grad():
            assert model(inputs_for(model)).shape == (2, 10)
