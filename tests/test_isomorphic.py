"""Isomorphic groups: which groups share a structure, and that signatures ignore names and order."""
import timm
import torch
from torch import nn

import isoprune
from isoprune import _groups
from conftest import make


def by_kind(groups):
    out = {}
    for iso in groups:
        out.setdefault(iso.kind, []).append(iso)
    return out


def test_deit_base_has_one_emb_one_mlp_one_attention_class():
    model = timm.create_model("deit_base_distilled_patch16_224")
    kinds = by_kind(isoprune.isomorphic_groups(model))
    assert [len(i.groups) for i in kinds["emb"]] == [1]
    assert kinds["emb"][0].channels == [768]
    assert [len(i.groups) for i in kinds["mlp"]] == [12]
    assert [len(i.groups) for i in kinds["heads"]] == [12]
    assert [len(i.groups) for i in kinds["head_dim"]] == [12]
    assert kinds["heads"][0].channels == [12] * 12 and kinds["head_dim"][0].channels == [64] * 12
    assert set(kinds) == {"emb", "mlp", "heads", "head_dim"}


def test_resnet50_bottleneck_convs_share_isomorphic_groups():
    groups = isoprune.isomorphic_groups(make("resnet50"))
    roots = {iso.signature: sorted(g.root for g in iso.groups) for iso in groups}
    conv1 = [r for r in roots.values() if "layer1.0.conv1" in r][0]
    conv2 = [r for r in roots.values() if "layer1.0.conv2" in r][0]
    assert len(conv1) == len(conv2) == 16  # one per bottleneck, across all four stages
    assert "layer4.2.conv1" in conv1 and "layer4.2.conv2" in conv2
    # type-only labels cannot tell 1x1 from 3x3 convs; structure labels can
    assert len(isoprune.isomorphic_groups(make("resnet50"), labels="type")) <= len(groups)


def test_shape_labels_split_blocks_of_different_widths():
    structure = isoprune.isomorphic_groups(make("resnet50"), labels="structure")
    shape = isoprune.isomorphic_groups(make("resnet50"), labels="shape")
    assert len(shape) > len(structure)
    for iso in shape:
        assert len(set(iso.channels)) == 1


class Wrapped(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.renamed_backbone = inner

    def forward(self, x):
        return self.renamed_backbone(x)


def test_signatures_do_not_depend_on_module_names():
    model = make("test_vit")
    plain = [(i.signature, len(i.groups)) for i in isoprune.isomorphic_groups(model)]
    wrapped = [(i.signature, len(i.groups)) for i in isoprune.isomorphic_groups(Wrapped(model), torch.randn(1, 3, 160, 160))]
    assert sorted(plain) == sorted(wrapped)


def test_signatures_do_not_depend_on_traversal_order():
    """The same group discovered from each of its members (so in a different order each time)
    has one signature."""
    analysis = _groups.analyse(make("test_resnet"))
    graph = analysis.graph
    for tp_group, group in zip(analysis.tp_groups, analysis.groups):
        expected = group.signature
        for item in list(tp_group)[1:]:
            module = item.dep.target.module
            if not isinstance(module, (nn.Conv2d, nn.Linear)) or not graph.is_out_channel_pruning_fn(item.dep.handler):
                continue
            other = graph.get_pruning_group(module, item.dep.handler, list(range(len(item.idxs))))
            assert _groups.signature(_groups.structure_graph(graph, other), group.kind) == expected
        shuffled = list(reversed(list(tp_group)))
        assert _groups.signature(_groups.structure_graph(graph, shuffled), group.kind) == expected
