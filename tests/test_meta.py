"""The passes over the meta skeleton: shortcuts for shapes give what torch's references give and
change no analysis; a clone of the skeleton is cut without touching it."""
from copy import deepcopy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import isoprune
from isoprune import _cut, _groups, _shapes, _trace
from conftest import TINY, make


class Zoo(nn.Module):
    """Every shortcut at least once, on contiguous, permuted and broadcast operands."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.gn = nn.GroupNorm(4, 8)
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 6)
        self.gamma = nn.Parameter(torch.ones(8))

    def forward(self, x):
        x = self.gn(self.bn(self.conv(x)))
        x = F.relu6(F.hardswish(F.mish(F.elu(F.leaky_relu(x)))))
        x = torch.sigmoid(F.silu(F.gelu(torch.tanh(F.hardsigmoid(x))))).clamp(min=0)
        x = F.relu(x, inplace=True) + x * 2 - x / 3
        x.mul_(1.5).add_(x)
        y = self.ln(x.permute(0, 2, 3, 1)) * self.gamma + 1  # channels-last view, broadcast scale
        y = y + self.gamma.view(1, 1, 1, 8)
        attn = (y.flatten(1, 2) @ y.flatten(1, 2).transpose(1, 2)).softmax(-1)
        z = F.scaled_dot_product_attention(y.flatten(1, 2), y.flatten(1, 2), y.flatten(1, 2))
        return self.fc(z.mean(1)) + attn.mean()


CASES = TINY + ["test_efficientnet", "beit_micro", "twins_micro", "tv:densenet121", "zoo"]


def _meta(name, dtype=torch.float32):
    model = Zoo() if name == "zoo" else make(name)
    skeleton = _trace.meta_skeleton(model).to(dtype)
    return skeleton, torch.empty(2, *_trace.input_size(model), device="meta", dtype=dtype)


@pytest.mark.parametrize("name", CASES)
def test_shortcuts_give_the_references_shapes_strides_and_dtypes(name):
    skeleton, x = _meta(name)
    for training in (True, False):
        with torch.enable_grad(), _shapes.shapes(check=True):
            skeleton.train(training)(x)
    skeleton, x = _meta(name, torch.bfloat16)  # half precision keeps norm statistics in float32
    with torch.no_grad(), _shapes.shapes(check=True):
        skeleton(x)


def test_shortcuts_are_taken(monkeypatch):
    skeleton, x = _meta("zoo")
    taken = []
    counted = {op: lambda *a, _op=op, _f=f, **k: taken.append(_op) or _f(*a, **k) for op, f in _shapes.SHORTCUTS.items()}
    monkeypatch.setattr(_shapes, "SHORTCUTS", counted)
    with torch.enable_grad(), _shapes.shapes():
        skeleton(x)
    names = {str(op) for op in taken}
    for op in ("native_batch_norm", "native_group_norm", "native_layer_norm", "addmm", "_safe_softmax", "hardswish", "mul_.Tensor", "add.Tensor", "mul.Scalar"):
        assert any(op in n for n in names), op


@pytest.mark.parametrize(
    "bad",
    [
        lambda: F.batch_norm(torch.empty(2, 8, 4, 4, device="meta"), None, None, torch.empty(7, device="meta")),
        lambda: F.layer_norm(torch.empty(2, 5, 8, device="meta"), (7,)),
        lambda: F.group_norm(torch.empty(2, 8, 4, 4, device="meta"), 3),
        lambda: F.linear(torch.empty(2, 8, device="meta"), torch.empty(4, 7, device="meta"), torch.empty(4, device="meta")),
        lambda: torch.empty(2, 8, 4, device="meta") + torch.empty(2, 7, 4, device="meta"),
        lambda: torch.empty(2, 8, device="meta").add_(torch.empty(3, 2, 8, device="meta")),
    ],
)
def test_what_breaks_a_layer_still_raises(bad):
    with _shapes.shapes(), pytest.raises(RuntimeError):
        bad()


@pytest.mark.parametrize("name", TINY + ["tv:densenet121"])
def test_analysis_is_the_same_without_them(name, monkeypatch):
    model = make(name)
    fast = _groups.analyse(model)
    monkeypatch.setattr(_shapes, "SHORTCUTS", {})
    slow = _groups.analyse(model)
    assert [g.to_dict() for g in fast.groups] == [g.to_dict() for g in slow.groups]
    assert fast.counts == slow.counts and fast.frozen == slow.frozen


class Ordered(nn.Module):
    """Blocks also listed outside its submodules, and one layer used twice."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
        self.order = [self.blocks[1], self.blocks[0]]
        self.shared = self.blocks[0]

    def forward(self, x):
        for block in self.order:
            x = block(x)
        return x


def _shapes_of(model):
    return [(n, tuple(t.shape)) for n, t in model.state_dict().items()]


@pytest.mark.parametrize("name", ["test_vit", "test_resnet", "ordered"])
def test_a_clone_is_cut_and_hooked_alone(name):
    analysis = _groups.analyse(Ordered() if name == "ordered" else make(name), torch.empty(1, 8) if name == "ordered" else None)
    skeleton = analysis.skeleton.train()
    before, hooks = _shapes_of(skeleton), [len(m._forward_hooks) for m in skeleton.modules()]
    copy = _trace.clone(skeleton)
    cut = {analysis.source[g.id]: [0] for g in analysis.groups if g.kind not in ("heads", "head_dim")}
    _groups.run_ops(copy, _groups.cut_ops(analysis.graph, analysis.tp_groups, cut))
    copy.eval()
    macs, _ = _trace.count(copy, analysis.inputs)  # hooks on, run, hooks off
    copy.register_forward_hook(lambda *_: None)
    assert _shapes_of(skeleton) == before and [len(m._forward_hooks) for m in skeleton.modules()] == hooks
    assert _shapes_of(copy) != before and macs < analysis.counts[0]
    assert skeleton.training and not copy.training
    assert not any(a is b for a, b in zip(skeleton.modules(), copy.modules()))


def test_a_clone_keeps_references_between_its_modules():
    model = _trace.meta_skeleton(Ordered())
    copy = _trace.clone(model)
    assert copy.order[0] is copy.blocks[1] and copy.order[1] is copy.blocks[0] and copy.shared is copy.blocks[0]
    assert copy.order is not model.order and copy.blocks[0] is not model.blocks[0]


ATTRIBUTES = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features", "num_channels", "normalized_shape")


def _torch_pruning_cut(model, ops):
    """The cut as Torch-Pruning's handlers do it, for comparison with ``_cut``'s."""
    for op in ops:
        op.handler.__self__.pruning_dim = op.dim
        if op.param:
            owner, _, attr = op.name.rpartition(".")
            setattr(model.get_submodule(owner), attr, op.handler(model.get_parameter(op.name), op.idxs))
        else:
            op.handler(model.get_submodule(op.name), op.idxs)


def _layout(model):
    attributes = [(n, a, getattr(m, a)) for n, m in model.named_modules() for a in ATTRIBUTES if hasattr(m, a)]
    return attributes, [(n, tuple(t.shape), t.device.type) for n, t in model.state_dict().items()]


@pytest.mark.parametrize("name", TINY + ["test_efficientnet", "regnetx_002", "tv:densenet121", "beit_micro", "twins_micro", "maxvit_micro", "eva02_micro", "cait_micro"])
def test_cuts_match_torch_pruning_handlers(name):
    """Every member of every group cut as Torch-Pruning would: the same shapes, attributes and
    values, on the model and on its meta skeleton (grouped convs: regnetx; a parameter cut
    per head: BEiT's position bias table, CaiT's talking heads)."""
    model = make(name)
    plan = isoprune.plan(model, 0.4)
    ops = plan._ops
    assert {op.handler for op in ops} & set(_cut.CUTS)
    ours, theirs = deepcopy(model), deepcopy(model)
    with torch.no_grad():
        _groups.run_ops(ours, ops)
        _torch_pruning_cut(theirs, ops)
    assert _layout(ours) == _layout(theirs) and _layout(ours) != _layout(model)
    for (n, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.equal(a, b), n
    skeleton = _trace.meta_skeleton(model)
    ours, theirs = _trace.clone(skeleton), _trace.clone(skeleton)
    _groups.run_ops(ours, ops)
    _torch_pruning_cut(theirs, ops)
    assert _layout(ours) == _layout(theirs)
    assert [t.is_contiguous() for t in ours.state_dict().values()] == [t.is_contiguous() for t in theirs.state_dict().values()]


def test_a_cut_keeps_frozen_layers_frozen_and_cuts_gradients():
    model = make("test_resnet")
    stem, fc = model.conv1[0], model.fc
    stem.weight.requires_grad_(False)
    fc.weight.grad = torch.randn_like(fc.weight)
    widths = stem.out_channels, fc.in_features
    isoprune.prune(model, 0.5)
    assert not stem.weight.requires_grad and fc.weight.requires_grad
    assert stem.out_channels < widths[0] and fc.in_features < widths[1] and fc.weight.grad.shape == fc.weight.shape


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_a_model_in_another_precision_is_traced_in_it(dtype, tmp_path):
    """Without example inputs, the image traced on has the model's dtype (it was float32 always,
    and a half- or double-precision model failed to trace); so has the one a saved plan is fitted on."""
    model = make("test_vit").to(dtype)  # its patch embedding has a bias, which must match the image
    plan = isoprune.plan(model, 0.3)
    assert plan.macs["after"] < plan.macs["before"]
    isoprune.apply_plan(make("test_vit").to(dtype), isoprune.PruningPlan.load(plan.save(tmp_path / "plan.yaml")))
    assert isoprune.count(model)[0] == plan.macs["before"]
