"""Our group walk and MAC counter against Torch-Pruning's, which they stand in for."""
import gc

import pytest
import torch
import torch_pruning as tp
from torch import nn

import isoprune
from isoprune import _arch, _coupling, _trace
from conftest import TINY, make


class Mixed(nn.Module):
    """Every index mapping a CNN meets: concat, split, a slice, and a flatten into a linear layer."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 6, 3, padding=1)
        self.c = nn.Conv2d(14, 12, 1)
        self.d = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.e = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        y = self.c(torch.cat([self.a(x), self.b(x)], 1))
        left, right = torch.split(y, [6, 6], 1)
        z = self.d(left) + right
        return self.fc(torch.flatten(self.e(z[:, 1:5]), 1))


CASES = TINY + ["twins_micro", "tv:densenet121", "tv:googlenet", "mixed"]


def _model(name):
    return Mixed().eval() if name == "mixed" else make(name)


def _graph(model):
    skeleton = _trace.meta_skeleton(model)
    inputs = _trace.meta_inputs(model, torch.empty(1, 3, 8, 8) if isinstance(model, Mixed) else None)
    graph = _trace.build_graph(skeleton, inputs, _arch.head_params(skeleton))
    return graph, _arch.classifier_modules(skeleton) + _trace.output_modules(graph)


@pytest.mark.parametrize("name", CASES)
def test_groups_are_torch_prunings_item_for_item(name):
    graph, ignored = _graph(_model(name))
    ours = _coupling.all_groups(graph, ignored)
    theirs = list(graph.get_all_groups(ignored_layers=ignored))
    assert len(ours) == len(theirs) > 0
    for mine, group in zip(ours, theirs):
        assert [(i.dep.target, i.dep.handler) for i in mine] == [(i.dep.target, i.dep.handler) for i in group]
        for a, b in zip(mine, group):
            assert sorted(zip(a.idxs, a.root_idxs)) == sorted(zip(b.idxs, b.root_idxs))


@pytest.mark.parametrize("name", CASES)
def test_macs_are_torch_prunings_and_counting_leaves_no_trace(name):
    model = _model(name).train()
    inputs = torch.empty(1, 3, 8, 8) if isinstance(model, Mixed) else None
    skeleton = _trace.meta_skeleton(model)
    meta = _trace.meta_inputs(model, inputs)
    expected = tp.utils.count_ops_and_params(_trace.meta_skeleton(model), meta)
    assert _trace.count(skeleton, meta) == (int(expected[0]), int(expected[1]))
    assert all(m.training for m in skeleton.modules())
    assert not any(m._forward_hooks or hasattr(m, "__flops__") for m in skeleton.modules())
    if not isinstance(model, Mixed):  # Mixed's flatten makes some groups misfits; its analysis retraces
        assert isoprune.plan(model, 0.0, example_inputs=inputs).macs["before"] == int(expected[0])


def test_counting_divides_by_the_batch():
    model = make("test_resnet")
    one = _trace.count(_trace.meta_skeleton(model), torch.empty(1, 3, 64, 64, device="meta"))
    four = _trace.count(_trace.meta_skeleton(model), torch.empty(4, 3, 64, 64, device="meta"))
    assert one[1] == four[1] and one[0] == pytest.approx(four[0], rel=1e-6)  # Linear biases count once per batch, as in Torch-Pruning


def test_garbage_collection_is_paused_only_while_pruning():
    model = make("test_vit")
    with _trace.gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        isoprune.prune(model, 0.2)
        assert not gc.isenabled()  # a pause does not turn on what the caller turned off
    finally:
        gc.enable()
