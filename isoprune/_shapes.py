"""Output shapes of the slow ops, for the passes over the meta skeleton.

A pass over the meta skeleton computes nothing, but torch works out the shapes of many ops on the
meta device with its Python reference implementations: a batch norm decomposes into a dozen of
them (about 1 ms a call), an activation, a layer norm or a ``Linear`` with bias into several
(0.2-0.9 ms). That was nine tenths of a ResNet-50 pass (55 ms). Inside ``shapes()`` the ops below
get their outputs straight from their inputs' shapes and layouts.

This works below autograd (a dispatch mode), so the graph that tracing reads, its ``grad_fn``
names included, is the one the ops would record anyway. Each shortcut gives the output's shape,
strides and dtype as the reference would (``shapes(check=True)`` compares them, and the tests run
every model family they cover that way), and falls back to the reference wherever its inputs do
not fit, so a cut that breaks a layer still raises the reference's own error.
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


def _empty_like(x: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like(x)`` without torch's Python meta function for it (14 us a call): a
    contiguous ``x`` gets a contiguous tensor, a channels-last one a channels-last tensor, with
    the strides ``empty_like`` gives them (which for dims of size 1 need not be ``x``'s)."""
    if x.is_contiguous():
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    return torch.empty_like(x)


def _like(x: torch.Tensor, *_, **__) -> torch.Tensor:
    return _empty_like(x)


def _itself(x: torch.Tensor, *_, **__) -> torch.Tensor:
    return x


def _into(a: torch.Tensor, b) -> bool:
    """Whether ``a op b`` has ``a``'s shape, dtype and layout: ``b`` is a number, or a tensor of
    ``a``'s dtype laid out like it, or a contiguous one that broadcasts into it (its strides of 0
    leave the layout to ``a``)."""
    if not isinstance(b, torch.Tensor):
        return True
    if b.dim() == 0 and not b.is_complex():  # a wrapped number or a scalar: a's dtype wins
        return True
    if b.dtype != a.dtype or b.dim() > a.dim():
        return False
    if b.shape == a.shape:
        return b.stride() == a.stride()
    try:
        return b.is_contiguous() and torch.broadcast_shapes(a.shape, b.shape) == a.shape
    except RuntimeError:
        return False


def _binary(a: torch.Tensor, b, *_, **__):
    return _empty_like(a) if _into(a, b) else NotImplemented


def _binary_(a: torch.Tensor, b, *_, **__):
    return a if _into(a, b) else NotImplemented


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _batch_norm(x, weight, bias, mean, var, *_):
    channels = x.shape[1] if x.dim() > 1 else 0
    if not channels or any(t is not None and t.shape != (channels,) for t in (weight, bias, mean, var)):
        return NotImplemented
    stat = x.new_empty((channels,), dtype=_stats_dtype(x))
    return _empty_like(x), stat, _empty_like(stat)


def _layer_norm(x, normalized_shape, weight, bias, *_):
    shape = tuple(normalized_shape)
    k = len(shape)
    if not k or tuple(x.shape[x.dim() - k:]) != shape or any(t is not None and tuple(t.shape) != shape for t in (weight, bias)):
        return NotImplemented
    stat = x.new_empty(tuple(x.shape[: x.dim() - k]) + (1,) * k, dtype=_stats_dtype(x)).contiguous()
    out = _empty_like(x) if x.is_contiguous() else x.new_empty(x.shape)  # the reference's x.contiguous()
    return out, stat, _empty_like(stat)


def _group_norm(x, weight, bias, n, c, hxw, group, *_):
    if x.dim() < 2 or x.shape[0] != n or x.shape[1] != c or c % group or any(t is not None and t.shape != (c,) for t in (weight, bias)):
        return NotImplemented
    stat = x.new_empty((n, group))  # in the input's dtype, unlike batch and layer norm
    return _empty_like(x), stat, _empty_like(stat)


def _addmm(bias, m1, m2, *_, **__):
    if not (m1.dim() == m2.dim() == 2 and m1.shape[1] == m2.shape[0] and bias.dtype == m1.dtype == m2.dtype):
        return NotImplemented
    out = (m1.shape[0], m2.shape[1])
    try:
        if torch.broadcast_shapes(bias.shape, out) != out:
            return NotImplemented
    except RuntimeError:
        return NotImplemented
    return m1.new_empty(out)


def _softmax(x, dim, dtype=None):
    return _empty_like(x) if dtype is None else NotImplemented


_UNARY = ("relu", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "hardtanh", "leaky_relu", "elu", "mish", "clamp")
_BINARY = ("add", "sub", "mul", "div")

SHORTCUTS = {
    **{getattr(aten, op).default: _like for op in _UNARY},
    **{getattr(aten, op + "_").default: _itself for op in _UNARY},
    **{getattr(aten, op).Tensor: _binary for op in _BINARY},
    **{getattr(aten, op).Scalar: _binary for op in _BINARY},
    **{getattr(aten, op + "_").Tensor: _binary_ for op in _BINARY},
    **{getattr(aten, op + "_").Scalar: _binary_ for op in _BINARY},
    aten.native_batch_norm.default: _batch_norm,
    aten.native_layer_norm.default: _layer_norm,
    aten.native_group_norm.default: _group_norm,
    aten.addmm.default: _addmm,
    aten._safe_softmax.default: _softmax,
}
"""aten op -> its output from its inputs' metadata, or ``NotImplemented`` to run the reference."""


def _meta_of(out) -> list:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [(tuple(t.shape), t.stride(), t.dtype) if isinstance(t, torch.Tensor) else t for t in outs]


class shapes(TorchDispatchMode):
    """Within this block, the ops in ``SHORTCUTS`` that get floating-point meta tensors skip
    torch's Python shape references. With ``check=True`` each result is compared with the
    reference's (for tests: an ``AssertionError`` names the op that differs)."""

    def __init__(self, check: bool = False):
        super().__init__()
        self.check = check

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        shortcut = SHORTCUTS.get(func)
        first = args[0] if args else None
        if shortcut is None or not isinstance(first, torch.Tensor) or first.device.type != "meta" or not first.is_floating_point():
            return func(*args, **kwargs)
        out = shortcut(*args, **kwargs)
        if out is NotImplemented:
            return func(*args, **kwargs)
        if self.check:
            expected = func(*args, **kwargs)
            assert _meta_of(out) == _meta_of(expected), f"{func}: {_meta_of(out)} != reference {_meta_of(expected)}"
        return out
