"""Importance criteria, by name.

A criterion scores every element of a weight tensor; a channel's score is the sum over its
elements in every member of its group, averaged over members. Whole tensors are scored at once.
Gradient-based criteria accumulate statistics over calibration batches first.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
import torch_pruning as tp
from timm.layers import CondConv2d
from torch import nn
from tqdm.auto import tqdm

from . import _dist
from ._coupling import NO_ROOT
from ._cut import cond_conv_shapes, depthwise as is_depthwise
from ._errors import IsopruneError
from ._memory import named_batch


class Importance:
    """Base class: ``elementwise(weight, grad, sq_grad)`` returns a score per element.
    ``stats`` names the calibration statistics it uses: ``grad`` and/or ``sq_grad``."""

    stats: tuple[str, ...] = ()

    @property
    def needs_calib(self) -> bool:
        return bool(self.stats)

    def elementwise(self, weight: torch.Tensor, grad, sq_grad) -> torch.Tensor:
        raise NotImplementedError


_CRITERIA: dict[str, type[Importance]] = {}


def register_importance(name: str):
    def wrap(cls):
        _CRITERIA[name] = cls
        return cls

    return wrap


def available_importances() -> list[str]:
    return sorted(_CRITERIA)


def get_importance(name_or_obj) -> Importance:
    if isinstance(name_or_obj, Importance):
        return name_or_obj
    if name_or_obj not in _CRITERIA:
        raise IsopruneError(
            f"unknown importance {name_or_obj!r}", hint=f"use one of {', '.join(available_importances())}"
        )
    return _CRITERIA[name_or_obj]()


@register_importance("l1")
class L1(Importance):
    def elementwise(self, weight, grad, sq_grad):
        return weight.abs()


@register_importance("l2")
class L2(Importance):
    def elementwise(self, weight, grad, sq_grad):
        return weight.square()


@register_importance("taylor")
class Taylor(Importance):
    """First-order Taylor expansion of the loss: |w * dL/dw|, gradients averaged over batches."""

    stats = ("grad",)

    def elementwise(self, weight, grad, sq_grad):
        return (weight * grad).abs()


@register_importance("hessian")
class Hessian(Importance):
    """Second-order (OBD) saliency 0.5 * w^2 * H_ii, with the Hessian diagonal approximated by the
    mean squared gradient over calibration batches (the empirical Fisher)."""

    stats = ("sq_grad",)

    def elementwise(self, weight, grad, sq_grad):
        return 0.5 * weight.square() * sq_grad


@register_importance("random")
class Random(Importance):
    def __init__(self, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)

    def elementwise(self, weight, grad, sq_grad):
        return torch.rand(weight.shape, generator=self.generator).to(weight.device)


def _pair(batch, n: int) -> tuple:
    """A calibration batch as ``(inputs, targets)``; an error naming the batch where it is not a pair."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch
    what = f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list)) else f"a {type(batch).__name__}"
    raise IsopruneError(f"calibration batch {n + 1} is {what}, not an (inputs, targets) pair",
                        hint="pass calib=[(inputs, targets), ...]: images and their class indices, as a DataLoader of a labelled data set gives")


def calibrate(model: nn.Module, calib: Iterable, max_batches: int | None = None, stats=("grad", "sq_grad"),
              chunk: int | None = None) -> dict:
    """Mean gradient and/or mean squared gradient of the cross-entropy loss per parameter, over
    ``(input, target)`` batches. Runs in eval mode; leaves the model's grads and mode as found.

    Each parameter's gradient is folded into the statistics as soon as backward has made it, and
    dropped: the gradients of the whole model never exist at once, so calibration holds one model
    size per statistic beside the activations of one batch. A batch of more than ``chunk`` images
    goes through forward and backward in pieces of at most ``chunk``, whose gradients add up to
    the batch's before they are folded in (eval mode: the same statistics, the squared gradient
    too, for the activations of one piece and the gradients of the whole model).

    Under torchrun each process gives its own share of the batches: the sums and the batch count
    are all-reduced, so every process gets the mean over all of them."""
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.grad for p in params]
    sums: dict[str, dict] = {stat: {} for stat in stats}

    whole = [True]  # False while a batch's gradient is still being added up, piece by piece

    def fold(p: torch.Tensor) -> None:
        if not whole[0]:
            return
        grad, p.grad = p.grad, None
        if "sq_grad" in sums:
            total = sums["sq_grad"].get(p)
            if total is None:
                sums["sq_grad"][p] = grad.square()
            else:
                total.addcmul_(grad, grad)
        if "grad" in sums:
            total = sums["grad"].get(p)
            if total is None:
                sums["grad"][p] = grad  # backward made it for us alone: keep it as the running sum
            else:
                total += grad

    device = params[0].device if params else torch.device("cpu")
    n = 0
    handles = []
    try:
        for p in params:
            p.grad = None
            handles.append(p.register_post_accumulate_grad_hook(fold))
        desc = f"calibration in pieces of {chunk}" if chunk else "calibration"  # the CLI logs no info lines: the bar says it
        classes = getattr(model, "num_classes", None)
        labels = f"class indices below its {classes} classes" if isinstance(classes, int) and classes else "class indices"
        hint = f"calibration data must be (inputs, targets) batches the model takes: images shaped like its input, and {labels}"
        for batch in tqdm(calib, desc=desc, total=max_batches, leave=False, disable=not _dist.is_main()):
            if max_batches is not None and n >= max_batches:
                break
            x, y = _pair(batch, n)
            pieces = list(zip(x.split(chunk), y.split(chunk))) if chunk and isinstance(x, torch.Tensor) else [(x, y)]
            with named_batch("calibration", n + 1, hint, inputs=x, targets=y):
                for i, (xs, ys) in enumerate(pieces):
                    whole[0] = i == len(pieces) - 1
                    out = model(xs.to(device))
                    out = out[0] if isinstance(out, (tuple, list)) else out
                    (F.cross_entropy(out, ys.to(device)) * (len(ys) / len(y))).backward()  # the batch's mean, piece by piece
            n += 1
    finally:
        for handle in handles:
            handle.remove()
        for p, g in zip(params, saved):
            p.grad = g
        model.train(was_training)
    for per_param in sums.values():  # parameters the loss does not reach score a zero gradient
        for p in params:
            if p not in per_param:
                per_param[p] = torch.zeros_like(p)
    n = _dist.all_sum_([per_param[p] for per_param in sums.values() for p in params], n, device)
    if n == 0:
        raise IsopruneError("calibration data yielded no batches", hint="pass an iterable of (input, target) batches")
    for per_param in sums.values():
        for total in per_param.values():
            total.div_(n)
    return sums


class Slot(NamedTuple):
    """Where a member holds some of its channels: along ``dim`` of ``tensor``, from its channel
    ``start`` on (a bidirectional LSTM's backward direction holds its outputs from its hidden size on)."""

    tensor: torch.Tensor
    dim: int
    start: int = 0

    def positions(self, channels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which of the member's ``channels`` lie here, and where along ``dim``."""
        held = (channels >= self.start) & (channels < self.start + self.tensor.shape[self.dim])
        return held, channels[held] - self.start


def member_tensors(model: nn.Module, name: str, *, param: bool, out: bool, dim: int) -> list[Slot]:
    """The real tensors that pruning ``name`` in one direction touches, with where the channels
    lie in each; a tensor may be a view of a parameter (a ``CondConv2d``'s weight as ``[experts,
    out, in, *kernel]``, an LSTM's as ``[gates, hidden, ...]``)."""
    if param:
        return [Slot(model.get_parameter(name), dim)]
    module = model.get_submodule(name)
    if isinstance(module, nn.LSTM):
        return _lstm_slots(module, out) if module.num_layers == 1 and not module.proj_size else []
    if isinstance(module, CondConv2d):
        weight, bias = cond_conv_shapes(module)
        depthwise = is_depthwise(module)
        if module.groups > 1 and not depthwise and not out:
            return []
        tensors = [Slot(module.weight.view(weight), 1 if out or depthwise else 2)]
        return tensors + ([Slot(module.bias.view(bias), 1)] if out and module.bias is not None else [])
    if isinstance(module, nn.modules.conv._ConvNd):
        depthwise = is_depthwise(module)
        if module.groups > 1 and not depthwise and not out:
            return []
        dim = int(module.transposed) if (out or depthwise) else 1 - int(module.transposed)
        return [Slot(module.weight, dim)] + ([Slot(module.bias, 0)] if out and module.bias is not None else [])
    if isinstance(module, nn.Linear):
        return [Slot(module.weight, 0 if out else 1)] + ([Slot(module.bias, 0)] if out and module.bias is not None else [])
    return [Slot(p, 0) for p in (getattr(module, "weight", None), getattr(module, "bias", None)) if isinstance(p, torch.Tensor)]


def _lstm_slots(lstm: nn.LSTM, out: bool) -> list[Slot]:
    """A one-layer LSTM's inputs: its input weights' columns, in each direction. Its outputs (as
    ``_cut.LSTMCut`` numbers them: the forward direction's hidden units, then the backward's):
    each unit's rows of the four gates in the input and recurrent weights and biases, and its
    column of the recurrent weights, in its direction."""
    hidden, slots = lstm.hidden_size, []
    for direction, suffix in enumerate(("", "_reverse")[: 1 + lstm.bidirectional]):
        gates = lambda name, *shape: lstm.get_parameter(f"{name}_l0{suffix}").view(4, hidden, *shape)  # noqa: E731
        if not out:
            slots.append(Slot(lstm.get_parameter(f"weight_ih_l0{suffix}"), 1))
            continue
        start = direction * hidden
        slots += [Slot(gates("weight_ih", -1), 1, start), Slot(gates("weight_hh", hidden), 1, start), Slot(gates("weight_hh", hidden), 2, start)]
        slots += [Slot(gates(name), 1, start) for name in ("bias_ih", "bias_hh")] if lstm.bias else []
    return slots


def item_member(graph: tp.DependencyGraph, item) -> dict | None:
    """How a Torch-Pruning group item names a real member: keyword arguments of
    ``member_tensors``, plus ``name``; None for virtual ops (reshape, add, ...)."""
    node = item.dep.target
    out = graph.is_out_channel_pruning_fn(item.dep.handler)
    if node.type == tp.ops.OPTYPE.PARAMETER:
        return {"name": graph._param_to_name[node.module], "param": True, "out": out, "dim": node.pruning_dim}
    name = graph._module2name.get(node.module)
    if name is None or not any(True for _ in node.module.parameters(recurse=False)):
        return None
    return {"name": name, "param": False, "out": out, "dim": node.pruning_dim}


def _stats_of(tensor: torch.Tensor, stats: dict | None) -> list:
    """The tensor's calibration statistics, as ``elementwise`` takes them: ``grad``, ``sq_grad``
    (a view of a parameter's: its parameter's, viewed alike)."""
    stats = stats or {}
    base = _base(tensor)
    found = [stats.get(name, {}).get(base) for name in ("grad", "sq_grad")]
    return [s if s is None or base is tensor else s.view(tensor.shape) for s in found]


def _base(tensor: torch.Tensor) -> torch.Tensor:
    """The parameter a view was made of (``member_tensors``), else the tensor itself."""
    return tensor if isinstance(tensor, nn.Parameter) or tensor._base is None else tensor._base


def element_scores(criterion: Importance, tensor: torch.Tensor, stats: dict | None) -> torch.Tensor:
    """The criterion's score for every element of a real tensor, with its calibration statistics."""
    return criterion.elementwise(tensor.detach(), *_stats_of(tensor, stats))


class _ChannelSums:
    """The criterion's scores summed per channel along a dim of a tensor, kept per tensor.

    A weight is a member of two groups (its outputs', its inputs'): on the first visit the sums
    along both of its first two dims come from one elementwise pass, so the model's weights are
    scored once, not twice. The pass goes over ``CHUNK`` elements at a time: a temporary the size
    of a whole weight, freed, raises glibc's threshold for returning memory to the system, after
    which the next ones pile up on the heap (DeiT-B: the peak went from 0.1 to 0.1-0.7 times the
    model, from run to run)."""

    CHUNK = 1 << 18

    def __init__(self, criterion: Importance, stats: dict | None):
        self.criterion, self.stats = criterion, stats
        self.kept: dict[tuple, dict[int, torch.Tensor]] = {}

    def __call__(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        dim %= tensor.dim()
        sums = self.kept.setdefault((id(_base(tensor)), tensor.shape), {})  # a view is made anew for each member
        if dim not in sums:
            dims = {dim, *range(min(tensor.dim(), 2))}
            parts: dict[int, list] = {d: [] for d in dims}
            whole = [tensor.detach(), *(None if s is None else s.detach() for s in _stats_of(tensor, self.stats))]
            rows = max(1, self.CHUNK // max(tensor[0].numel(), 1))
            for start in range(0, len(tensor), rows):
                scores = self.criterion.elementwise(*(None if t is None else t[start : start + rows] for t in whole))
                for d in dims:
                    parts[d].append(scores.sum([o for o in range(scores.dim()) if o != d]) if scores.dim() > 1 else scores)
            for d in dims:
                sums[d] = (torch.cat(parts[d]) if d == 0 else torch.stack(parts[d]).sum(0)).double().cpu()
        return sums[dim]


def channel_scores(model: nn.Module, analysis, criterion: Importance, stats: dict | None) -> list[torch.Tensor]:
    """One score per root channel for every Torch-Pruning group of the analysis."""
    graph, names = analysis.graph, analysis.graph._module2name
    result = []
    sums = _ChannelSums(criterion, stats)
    with torch.no_grad():
        for tp_group in analysis.tp_groups:
            total = torch.zeros(len(tp_group[0].channels), dtype=torch.float64)
            members = 0
            for item in tp_group:
                member = item_member(graph, item)
                if member is None:
                    continue
                for slot in member_tensors(model, **member):
                    per_channel = sums(slot.tensor, slot.dim)
                    held, positions = slot.positions(item.channels)
                    rooted = item.roots[held] != NO_ROOT  # channels no root channel maps to score none
                    total.index_add_(0, torch.from_numpy(item.roots[held][rooted]), per_channel[torch.from_numpy(positions[rooted])])
                    members += 1
            scores = total / max(members, 1)
            if not torch.isfinite(scores).all():
                raise IsopruneError(
                    "importance scores are not finite",
                    group=names.get(tp_group[0].dep.target.module),
                    hint="check the model's weights and calibration data for NaN/inf",
                )
            result.append(scores)
    return result


def attention_unit_scores(scores: torch.Tensor, layout) -> torch.Tensor:
    """A projection's channel scores -> one score per (head, dim) unit, summed over the copies
    (query, key and value in a fused qkv; see ``_arch.Layout``)."""
    return scores[layout.channels().to(scores.device)].sum(0)


