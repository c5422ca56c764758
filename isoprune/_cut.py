"""Cutting layers: what Torch-Pruning's layer handlers do to the common layers, at a fraction
of the cost.

A prune cuts every member of every group three times: on a copy of the meta skeleton to check
that each group can lose a channel, on another to measure the pruned shape, then on the model.
Torch-Pruning's handlers find a layer's kept channels as a set difference of Python ints and
sort them, then index every tensor with a fresh index list, on the meta skeleton too, where
the values are not there to index: that was a third of ResNet-50's prune. Here the kept channels are
one numpy call, and a meta tensor is cut by making an empty one of the new shape.

Convolutions, linear layers, batch, layer and group norms and plain parameters are cut here, to
the same shapes, values and attributes as Torch-Pruning's handlers (a test compares both on 13
model families); LSTMs by ``LSTMCut``, which replaces Torch-Pruning's handler (see there), and
timm's ``CondConv2d`` by ``CondConvCut``, which Torch-Pruning has none for; every other handler
(embeddings, PReLU, multi-head attention, custom ones) runs as Torch-Pruning wrote it. Unlike Torch-Pruning, a cut parameter keeps its ``requires_grad``: a frozen layer stays
frozen; and a convolution's own per-output-channel parameters besides its bias (NFNet's ``gain``)
are cut with its outputs.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np
import torch
from timm.layers import CondConv2d
from torch import nn
from torch_pruning import ops
from torch_pruning.pruner import function

from ._errors import IsopruneError

CONVS = (nn.modules.conv._ConvNd, CondConv2d)
"""Convolutions: torch's, and timm's ``CondConv2d``, whose experts' kernels are mixed per sample."""


def _kept(n: int, idxs: list[int]) -> np.ndarray:
    return np.delete(np.arange(n), idxs)


def distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of an array of non-negative integers, as ``np.unique`` gives
    them, found with a mask: the first ``np.unique`` of a process imports ``numpy.ma``, 10-20 ms
    of pruning a small CNN."""
    if not len(values):
        return np.zeros(0, dtype=np.int64)
    seen = np.zeros(int(values.max()) + 1, dtype=bool)
    seen[values] = True
    return np.flatnonzero(seen)


_LAYOUTS = {4: torch.channels_last, 5: torch.channels_last_3d}


def cut_tensor(t: torch.Tensor, dim: int, keep: np.ndarray, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``t`` with only the ``keep`` positions along ``dim``: a parameter stays a parameter (with
    its gradient cut alike), and a meta tensor is a new empty one. Given ``shape``, ``t`` is read
    as that shape and flattened back behind its first dim once cut (``CondConv2d`` keeps each
    expert's kernel as one row)."""
    view = t if shape is None else t.view(shape)
    if t.device.type == "meta":
        size = list(view.shape)
        size[dim] = len(keep)
        new = torch.empty(size, dtype=t.dtype, device="meta")
    else:
        index = torch.from_numpy(keep).to(t.device)
        if view.dim() == 2 and dim == 1 and view.is_contiguous() and t.device.type == "cpu":  # a matrix's columns:
            new = torch.gather(view.detach(), 1, index.expand(len(view), -1))  # 1.7x index_select's speed there
        else:
            new = view.detach().index_select(dim, index)
        layout = _LAYOUTS.get(view.dim())
        if layout is not None and view.is_contiguous(memory_format=layout) and not view.is_contiguous():
            new = new.contiguous(memory_format=layout)  # a channels-last model stays channels-last
    if shape is not None:
        new = new.reshape(len(t), -1)
    if not isinstance(t, nn.Parameter):
        return new
    param = nn.Parameter(new, requires_grad=t.requires_grad)
    if t.grad is not None:
        param.grad = cut_tensor(t.grad, dim, keep, shape)
    return param


def _per_output(conv: nn.modules.conv._ConvNd, keep: np.ndarray, n: int) -> None:
    """A convolution's own parameters of one value per output channel, besides its bias: the
    ``gain`` of timm's weight-standardised ``ScaledStdConv2d`` (NFNet), which Torch-Pruning's
    handler leaves whole, so that the pruned convolution no longer runs."""
    for name, p in list(conv.named_parameters(recurse=False)):
        if name not in ("weight", "bias") and p.shape[:1] == (n,) and p[0].numel() == 1:
            setattr(conv, name, cut_tensor(p, 0, keep))


def one_input_per_group(conv: nn.modules.conv._ConvNd) -> bool:
    """A convolution with as many groups as inputs (depthwise, or with a channel multiplier: FastViT,
    PiT): it loses whole groups, an input with its outputs (``_trace._couple_multipliers``)."""
    return 1 < conv.groups == conv.in_channels


def depthwise(conv: nn.Module) -> bool:
    """A convolution (torch's or ``CondConv2d``) with a group per input and per output: an input
    goes with its output."""
    return one_input_per_group(conv) and conv.out_channels == conv.in_channels


def _conv_out(conv: nn.modules.conv._ConvNd, idxs: list[int], _dim: int) -> None:
    keep = _kept(conv.out_channels, idxs)
    _per_output(conv, keep, conv.out_channels)
    conv.out_channels -= len(idxs)
    conv.weight = cut_tensor(conv.weight, int(conv.transposed), keep)
    if conv.bias is not None:
        conv.bias = cut_tensor(conv.bias, 0, keep)


def _conv_in(conv: nn.modules.conv._ConvNd, idxs: list[int], _dim: int) -> None:
    keep = _kept(conv.in_channels, idxs)
    if one_input_per_group(conv) and not conv.transposed:  # those groups go, their outputs with them
        conv.in_channels = conv.groups = len(keep)
        return
    conv.in_channels -= len(idxs)
    if conv.groups > 1:  # Torch-Pruning's reading of a grouped conv's input: the first group's share
        keep = keep[: len(keep) // conv.groups]
    conv.weight = cut_tensor(conv.weight, 1 - int(conv.transposed), keep)


def _depthwise(conv: nn.modules.conv._ConvNd, idxs: list[int], _dim: int) -> None:
    keep = _kept(conv.out_channels, idxs)
    _per_output(conv, keep, conv.out_channels)
    conv.out_channels -= len(idxs)
    conv.in_channels -= len(idxs)
    conv.groups -= len(idxs)
    conv.weight = cut_tensor(conv.weight, 0, keep)
    if conv.bias is not None:
        conv.bias = cut_tensor(conv.bias, 0, keep)


def _linear_out(linear: nn.Linear, idxs: list[int], _dim: int) -> None:
    keep = _kept(linear.out_features, idxs)
    linear.out_features -= len(idxs)
    linear.weight = cut_tensor(linear.weight, 0, keep)
    if linear.bias is not None:
        linear.bias = cut_tensor(linear.bias, 0, keep)


def _linear_in(linear: nn.Linear, idxs: list[int], _dim: int) -> None:
    linear.in_features -= len(idxs)
    linear.weight = cut_tensor(linear.weight, 1, _kept(linear.weight.shape[1], idxs))


def _affine(norm: nn.Module, keep: np.ndarray, dim: int = 0) -> None:
    if norm.weight is not None:
        norm.weight = cut_tensor(norm.weight, dim, keep)
    if norm.bias is not None:
        norm.bias = cut_tensor(norm.bias, dim, keep)


def _batch_norm(norm: nn.modules.batchnorm._BatchNorm, idxs: list[int], _dim: int) -> None:
    keep = _kept(norm.num_features, idxs)
    norm.num_features -= len(idxs)
    if norm.track_running_stats:
        norm.running_mean = cut_tensor(norm.running_mean, 0, keep)
        norm.running_var = cut_tensor(norm.running_var, 0, keep)
    if norm.affine:
        _affine(norm, keep)


def _group_norm(norm: nn.GroupNorm, idxs: list[int], _dim: int) -> None:
    keep = _kept(norm.num_channels, idxs)
    norm.num_channels -= len(idxs)
    if norm.affine:
        _affine(norm, keep)


def _layer_norm(norm: nn.LayerNorm, idxs: list[int], dim: int) -> bool:
    if dim != -1 or not norm.normalized_shape:
        return False
    keep = _kept(norm.normalized_shape[-1], idxs)
    if norm.elementwise_affine:
        _affine(norm, keep, -1)
    norm.normalized_shape = (*norm.normalized_shape[:-1], len(keep))
    return True


CUTS: dict[Callable, Callable] = {
    function.prune_conv_out_channels: _conv_out,
    function.prune_conv_in_channels: _conv_in,
    function.prune_depthwise_conv_out_channels: _depthwise,
    function.prune_depthwise_conv_in_channels: _depthwise,
    function.prune_linear_out_channels: _linear_out,
    function.prune_linear_in_channels: _linear_in,
    function.prune_batchnorm_out_channels: _batch_norm,
    function.prune_batchnorm_in_channels: _batch_norm,
    function.prune_groupnorm_out_channels: _group_norm,
    function.prune_groupnorm_in_channels: _group_norm,
    function.prune_layernorm_out_channels: _layer_norm,
    function.prune_layernorm_in_channels: _layer_norm,
}
"""Torch-Pruning layer handler -> the cut done here; one that returns False leaves it to the handler."""
PARAMETER_CUTS = {function.prune_parameter_out_channels, function.prune_parameter_in_channels}


def lstm_rows(lstm: nn.LSTM, units: np.ndarray):
    """``(parameter name, dim, indices)`` of every slice of a one-layer LSTM that holds the hidden
    ``units`` of both directions: their rows of the four gates (input, forget, cell, output) in the
    input and recurrent weights and biases, and their columns of the recurrent weights."""
    hidden = lstm.hidden_size
    gates = np.concatenate([units + g * hidden for g in range(4)])
    for suffix in ("", "_reverse")[: 1 + lstm.bidirectional]:
        yield f"weight_ih_l0{suffix}", 0, gates
        yield f"weight_hh_l0{suffix}", 0, gates
        yield f"weight_hh_l0{suffix}", 1, units
        if lstm.bias:
            yield f"bias_ih_l0{suffix}", 0, gates
            yield f"bias_hh_l0{suffix}", 0, gates


class LSTMCut(function.LSTMPruner):
    """A one-layer ``nn.LSTM``'s hidden units and inputs. Torch-Pruning's handler counts a
    bidirectional LSTM's outputs as one direction's and cuts a hidden unit from one gate's rows
    only (the LSTM it left did not run). Here the outputs are both directions', ``[forward, backward]``, a unit
    one position in each (``_arch.channel_runs`` makes them two runs), and a unit goes from every
    gate, its recurrent column and both directions."""

    def get_out_channels(self, layer: nn.LSTM) -> int:
        return layer.hidden_size * (1 + layer.bidirectional)

    def prune_out_channels(self, layer: nn.LSTM, idxs: list[int]) -> nn.LSTM:
        if layer.num_layers != 1 or layer.proj_size:
            raise IsopruneError("only one-layer LSTMs without projections are cut", layers=layer.num_layers, proj_size=layer.proj_size)
        keep = _kept(layer.hidden_size, sorted({i % layer.hidden_size for i in idxs}))
        for name, dim, index in lstm_rows(layer, keep):
            setattr(layer, name, cut_tensor(getattr(layer, name), dim, index))  # nn.LSTM's __setattr__ keeps its flat weights in step
        layer.hidden_size = len(keep)
        return layer

    def prune_in_channels(self, layer: nn.LSTM, idxs: list[int]) -> nn.LSTM:
        if layer.num_layers != 1:
            raise IsopruneError("only one-layer LSTMs are cut", layers=layer.num_layers)
        keep = _kept(layer.input_size, idxs)
        for suffix in ("", "_reverse")[: 1 + layer.bidirectional]:
            setattr(layer, f"weight_ih_l0{suffix}", cut_tensor(getattr(layer, f"weight_ih_l0{suffix}"), 1, keep))
        layer.input_size = len(keep)
        return layer


def cond_conv_shapes(conv: CondConv2d) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shapes a ``CondConv2d``'s weight and bias are read as: ``[experts, out, in / groups,
    *kernel]`` and ``[experts, out]``."""
    return (conv.num_experts, *conv.weight_shape), (conv.num_experts, conv.out_channels)


class CondConvCut(function.BasePruningFunc):
    """timm's ``CondConv2d`` (CondConv EfficientNets): a convolution whose kernel is a per-sample
    mix of its experts' kernels, each kept flattened in one row of its weight (and bias). A
    channel goes from every expert."""

    def get_out_channels(self, layer: CondConv2d) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: CondConv2d) -> int:
        return layer.in_channels

    def prune_out_channels(self, layer: CondConv2d, idxs: list[int]) -> CondConv2d:
        keep = _kept(layer.out_channels, idxs)
        weight, bias = cond_conv_shapes(layer)
        layer.weight = cut_tensor(layer.weight, 1, keep, weight)
        if layer.bias is not None:
            layer.bias = cut_tensor(layer.bias, 1, keep, bias)
        layer.out_channels = len(keep)
        self._reshape(layer)
        return layer

    def prune_in_channels(self, layer: CondConv2d, idxs: list[int]) -> CondConv2d:
        keep = _kept(layer.in_channels, idxs)
        layer.in_channels = len(keep)
        if layer.groups > 1:  # as ``_conv_in``: the first group's share
            keep = keep[: len(keep) // layer.groups]
        layer.weight = cut_tensor(layer.weight, 2, keep, cond_conv_shapes(layer)[0])
        self._reshape(layer)
        return layer

    @staticmethod
    def _reshape(layer: CondConv2d) -> None:
        layer.weight_shape = (layer.out_channels, layer.in_channels // layer.groups, *layer.kernel_size)
        if layer.bias is not None:
            layer.bias_shape = (layer.out_channels,)


class DepthwiseCondConvCut(CondConvCut):
    """A depthwise ``CondConv2d``: an input goes with its output, as for a depthwise convolution."""

    def prune_out_channels(self, layer: CondConv2d, idxs: list[int]) -> CondConv2d:
        layer.in_channels = layer.groups = layer.out_channels - len(idxs)
        return super().prune_out_channels(layer, idxs)

    prune_in_channels = prune_out_channels


_COND_CONV, _DEPTHWISE_COND_CONV = CondConvCut(), DepthwiseCondConvCut()


def _pruner_of(graph, module: nn.Module):
    """``DependencyGraph.get_pruner_of_module`` that tells a depthwise ``CondConv2d`` from others
    (Torch-Pruning picks a custom layer's handler by its class)."""
    if isinstance(module, CondConv2d):
        return _DEPTHWISE_COND_CONV if depthwise(module) else _COND_CONV
    return type(graph).get_pruner_of_module(graph, module)


def own_pruners(graph) -> None:
    """Give a new dependency graph our handlers in place of Torch-Pruning's (``LSTMCut``) and
    those it has none for (``CondConvCut``), before it is built."""
    graph.REGISTERED_PRUNERS[ops.OPTYPE.LSTM] = LSTMCut()
    graph.CUSTOMIZED_PRUNERS[CondConv2d] = _COND_CONV  # its modules are hooked; ``_pruner_of`` picks the handler
    graph.get_pruner_of_module = partial(_pruner_of, graph)
    pruners = [p for p in [*graph.REGISTERED_PRUNERS.values(), _COND_CONV, _DEPTHWISE_COND_CONV] if p is not None]
    graph._in_channel_pruning_fn = {p.prune_in_channels for p in pruners}
    graph._out_channel_pruning_fn = {p.prune_out_channels for p in pruners}


def cut_module(handler, module: nn.Module, idxs: list[int], dim: int) -> None:
    """Remove channels ``idxs`` from ``module`` as ``handler`` (a Torch-Pruning layer handler)
    would, in place."""
    cut = CUTS.get(handler)
    if cut is None or cut(module, idxs, dim) is False:
        handler.__self__.pruning_dim = dim
        handler(module, idxs)


def cut_parameter(handler, param: torch.Tensor, idxs: list[int], dim: int) -> torch.Tensor:
    """A plain parameter with channels ``idxs`` along ``dim`` removed, as ``handler`` would."""
    if handler in PARAMETER_CUTS:
        return cut_tensor(param, dim, _kept(param.shape[dim], idxs))
    handler.__self__.pruning_dim = dim
    return handler(param, idxs)
