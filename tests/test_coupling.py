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


class FlatExperts(nn.Module):
    """Experts' kernels flattened in one parameter (4 x 1024 * 128 * 9), mixed per image and run
    as a functional convolution, as timm's ``CondConv2d`` does: a layer the tracer does not know
    (isoprune knows ``CondConv2d``, see ``test_condconv.py``), whose parameter it maps the
    channels around it onto, millions of them."""

    def __init__(self, channels: int, out: int, experts: int):
        super().__init__()
        self.kernel = (out, channels, 3, 3)
        self.weight = nn.Parameter(torch.randn(experts, out * channels * 9))

    def forward(self, x, routing):
        kernels = (routing @ self.weight).view(len(x) * self.kernel[0], *self.kernel[1:])
        out = nn.functional.conv2d(x.reshape(1, -1, *x.shape[2:]), kernels, padding=1, groups=len(x))
        return out.view(len(x), self.kernel[0], *out.shape[2:])


class CondConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 128, 3, padding=1)
        self.routing = nn.Linear(128, 4)
        self.cond = FlatExperts(128, 1024, 4)
        self.head = nn.Linear(1024, 10)

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.cond(x, torch.sigmoid(self.routing(x.mean((2, 3))))).mean((2, 3)))


def test_a_walk_onto_a_flattened_parameter_stops_at_a_million_channels():
    """The limit was 8 times the widest parameter's largest dim, which a flattened kernel makes
    millions: the walk went on (65 s and 3.7 GB for this model; timm's ``efficientnet_cc_b0_4e``
    ran out of memory, before ``CondConv2d`` was known) and left the stem to be cut against a layer
    it cannot cut."""
    frozen = isoprune._groups.analyse(CondConvNet(), torch.randn(1, 3, 8, 8)).frozen
    assert frozen.keys() == {"stem", "routing"}
    assert all("channels onto" in why for why in frozen.values())
