"""Coupled channels: the groups of Torch-Pruning's dependency graph, found with index arrays.

Torch-Pruning's ``get_all_groups`` walks the dependency graph carrying one Python object per
channel, maps them through concat/split/reshape one by one, and merges each group's items by
scanning lists: 0.45 s of the 1.1 s isoprune took to prune DeiT-B. ``all_groups`` walks
the same graph in the same order with the same index mappings, applied to numpy arrays of channel
indices and the root channels they come from, so it finds the same groups, members and channels
(the tests compare it with ``get_all_groups`` item by item) in a fraction of the time. One
difference: where a reshape folds several root channels onto one channel, that channel is filed
under the first of them in sorted order, where Torch-Pruning's pick follows a set's order
(ResNeSt, MambaOut; checked over the 59 families of the coverage benchmark).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers
from torch_pruning.dependency import index_mapping as maps
from torch_pruning.dependency.dependency import Dependency
from torch_pruning.pruner import function

from ._cut import CONVS

NO_ROOT = -1  # a channel no root channel maps to (Torch-Pruning's None: key/value heads repeated)


class Diverged(Exception):
    """A walk that does not end: its channel sets outgrow every layer of the model (the tracer
    read timm MaxViT's qkv ``view`` as a flatten and mapped channels through it again and again:
    24 GB in 50 s), or it keeps reaching layers with channel sets it has not seen (FocalNet's gates
    as timm's forward uses them, one channel broadcast over many, coupled to them through slices:
    9 GB in 78 s); or one that cannot go on, through a mapping the tracer set up that does not fit
    the channels it is given (a split paired with more readers than it has parts)."""


@dataclass
class Item:
    """One member of a group: the dependency that reaches it, its channels, and the root channel
    each of them is coupled to (``NO_ROOT``: none). ``idxs`` and ``root_idxs`` read them as
    Torch-Pruning's group items do, as lists."""

    dep: Dependency
    channels: np.ndarray
    roots: np.ndarray

    @property
    def idxs(self) -> list[int]:
        return self.channels.tolist()

    @property
    def root_idxs(self) -> list[int | None]:
        return [None if r == NO_ROOT else r for r in self.roots.tolist()]


class Members(list):
    """A group's items, root first, and ``aliased``: pairs of its root channels (2 x k, possibly
    repeated) that reach one channel of some member, so that neither can go without the other.
    GhostNet's depthwise "cheap" convolution couples each of its inputs to one of its outputs, and
    both halves are concatenated: a layer fed the concatenation has channels ``i`` and
    ``i + half`` coupled."""

    aliased: np.ndarray


def _map(mapping, idx: np.ndarray, root: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Torch-Pruning's index mappings on arrays: ``idx`` in the source's channels becomes the
    target's, each keeping its root channel; channels the target does not have drop out."""
    if isinstance(mapping, maps._FlattenIndexMapping):
        stride = mapping._stride
        if mapping.reverse:  # many flattened channels to one (Torch-Pruning keeps a set of pairs)
            pairs = np.unique(np.stack([idx // stride, root]), axis=1)
            return pairs[0], pairs[1]
        return (idx[:, None] * stride + np.arange(stride)).ravel(), np.repeat(root, stride)
    if isinstance(mapping, (maps._ConcatIndexMapping, maps._SplitIndexMapping)):
        lo, hi = mapping.offset[0], mapping.offset[1]
        if mapping.reverse == isinstance(mapping, maps._ConcatIndexMapping):  # into one part
            keep = (idx >= lo) & (idx < hi)
            return idx[keep] - lo, root[keep]
        return idx + lo, root
    if isinstance(mapping, maps._SliceIndexMapping):
        start, step = mapping.start, mapping.step
        if mapping.reverse:
            return idx * step + start, root
        keep = (idx >= start) & (idx < mapping.end) & ((idx - start) % step == 0)
        return (idx[keep] - start) // step, root[keep]
    # anything else (grouped-query attention, custom mappings) through Torch-Pruning's own objects
    hybrid = [_helpers._HybridIndex(int(i), None if r == NO_ROOT else int(r)) for i, r in zip(idx, root)]
    mapped = mapping(hybrid)
    return (
        np.array([h.idx for h in mapped], dtype=np.int64),
        np.array([NO_ROOT if h.root_idx is None else h.root_idx for h in mapped], dtype=np.int64),
    )


def _in_order(mappings: list) -> list:
    """A dependency's index mappings in the order to apply them. Torch-Pruning keeps a split's in
    the first slot and a concatenation's in the second, which is the order from a split's part into
    a concatenation, but not back: there the channels must first be taken out of the
    concatenation (ReXNet concatenates a part of a split as it is)."""
    first, second = mappings
    if isinstance(first, maps._SplitIndexMapping) and isinstance(second, maps._ConcatIndexMapping) and first.reverse:
        return [second, first]
    return mappings


def _merge(graph: tp.DependencyGraph, found: list) -> Members:
    """One item per (layer, pruning function), in order of discovery, holding each of its channels
    once (with the root channel it was first reached from), and the root channels found coupled to
    each other on the way; ignored parameters join no group."""
    ignored = {id(p) for p in graph.ignored_params}
    merged: dict = {}
    for dep, idx, root in found:
        if isinstance(dep.target.module, nn.Parameter) and id(dep.target.module) in ignored:
            continue
        merged.setdefault((dep.target, dep.handler), (dep, [], []))
        merged[(dep.target, dep.handler)][1].append(idx)
        merged[(dep.target, dep.handler)][2].append(root)
    items, aliased = Members(), []
    for dep, idxs, roots in merged.values():
        idx, root = np.concatenate(idxs), np.concatenate(roots)
        first = _first_of_each(idx)
        items.append(Item(dep, idx[first], root[first]))
        # a channel reached again, of a layer (reshapes fold channels together without coupling them)
        if len(first) < len(idx) and isinstance(dep.target.module, (*CONVS, tp.ops.TORCH_LINEAR)):
            aliased.append(_aliases(idx, root))
    items.aliased = np.concatenate(aliased, axis=1) if aliased else np.empty((2, 0), dtype=np.int64)
    return items


def _aliases(idx: np.ndarray, root: np.ndarray) -> np.ndarray:
    """Pairs (2 x k) of distinct root channels reaching one channel: the lowest and each other."""
    known = root != NO_ROOT
    idx, root = idx[known], root[known]
    order = np.lexsort((root, idx))
    idx, root = idx[order], root[order]
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    lowest = root[np.repeat(starts, np.diff(np.r_[starts, len(idx)]))]
    other = lowest != root
    return np.stack([lowest[other], root[other]])


def _first_of_each(values: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of each distinct value, in order."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    first = np.ones(len(values), dtype=bool)
    first[1:] = ordered[1:] != ordered[:-1]
    return np.sort(order[first])


LIMIT = 1 << 20
"""The most channels a walk may map onto, whatever the widest parameter: a layer the tracer does
not know may keep its kernels flattened in one parameter (millions wide; CondConv's experts did,
before ``_cut.CondConvCut``), and walks mapped onto that many ran out of memory before they diverged."""


def _widest(graph: tp.DependencyGraph) -> int:
    """The largest dimension of any parameter in the graph, or width of any concatenation (GC's
    trace joins its attention channel to the context, one more than its widest layer): no
    tensor the walk maps has more channels."""
    sizes = [1]
    for m, node in graph.module2node.items():
        for p in [m] if isinstance(m, nn.Parameter) else m.parameters(recurse=False):
            sizes.append(max(p.shape, default=1))
        sizes += [end for dep in node.dependencies for mapping in dep.index_mapping if (end := _part_end(mapping)) is not None]
    return max(sizes)


def _part_end(mapping) -> int | None:
    """Where a concatenation's or split's part ends in the whole; None for other mappings, and
    for one whose offsets Torch-Pruning could not infer (see ``Diverged``: a mapping that does
    not fit)."""
    if isinstance(mapping, (maps._ConcatIndexMapping, maps._SplitIndexMapping)) and len(mapping.offset) == 2:
        return mapping.offset[1] if isinstance(mapping.offset[1], int) else None
    return None


def pruning_group(graph: tp.DependencyGraph, module: nn.Module, pruning_fn, channels: int, limit: int | None = None,
                  widest: int | None = None) -> Members:
    """Every layer coupled to removing ``module``'s channels with ``pruning_fn``: the root first,
    each other member once, with the channels of it that go with each root channel. Depth first,
    as Torch-Pruning walks: a member reached again is walked on from only with channels (and
    root channels) in an order not seen there before. Raises ``Diverged`` once one step maps to
    more than ``limit`` channels, or to a channel no tensor has (``widest`` or past it: over all
    of timm's models, no walk did), or once it has reached layers more than 256 times the
    graph's nodes. The smallest model of each of 65 timm families took at most 6.3 times;
    ``edgenext_small_rw`` takes 118, its stream coupled across stages by its channel-doubling
    depthwise convolutions and within them by its split blocks, reached again and again with
    other channels."""
    if isinstance(module, tp.ops.TORCH_CONV) and module.groups == module.out_channels > 1:
        pruning_fn = function.prune_depthwise_conv_out_channels
    node = graph.module2node[module]
    everything = np.arange(channels, dtype=np.int64)
    found = [(Dependency(pruning_fn, pruning_fn, source=node, target=node), everything, everything)]
    reached = {(node, pruning_fn, everything.tobytes(), everything.tobytes())}
    visited = set()
    stack = [found[0]]
    while stack:
        dep, idx, root = stack.pop()
        visited.add(dep.target)
        for new in dep.target.dependencies:
            if new.trigger != dep.handler:
                continue
            new_idx, new_root = idx, root
            for mapping in _in_order(new.index_mapping):
                if mapping is not None:
                    try:
                        new_idx, new_root = _map(mapping, new_idx, new_root)
                    except (IndexError, ValueError) as exc:  # a mapping that does not fit the channels it is given
                        where = type(new.target.module).__name__.strip("_")
                        raise Diverged(f"the tracer's {type(mapping).__name__.strip('_')} at {where} does not fit its channels ({exc})") from exc
            if not len(new_idx):
                continue
            if limit is not None and len(new_idx) > limit:
                raise Diverged(f"the tracer maps {channels} channels onto {len(new_idx)} through {type(new.target.module).__name__.strip('_')}")
            if widest is not None and new_idx.max() >= widest:
                raise Diverged(f"the walk from {channels} channels goes on without end: it reaches channel {new_idx.max()} of "
                               f"{type(new.target.module).__name__.strip('_')}, and no layer or concatenation has more than {widest}")
            key = (new.target, new.handler, new_idx.tobytes(), new_root.tobytes())
            if new.target in visited and key in reached:
                continue
            reached.add(key)
            found.append((new, new_idx, new_root))
            if limit is not None and len(found) > 256 * len(graph.module2node):
                raise Diverged(f"the walk from {channels} channels reaches layers {len(found)} times without end")
            stack.append(found[-1])
    return _merge(graph, found)


def all_groups(graph: tp.DependencyGraph, ignored_layers=(), diverged: dict | None = None, first=()) -> list[Members]:
    """The full-channel group of every prunable conv, linear and LSTM layer, as ``get_all_groups``
    yields them (the layers in ``first`` before the others): a layer already removed by an
    earlier group roots none of its own, and a group that would remove an ignored layer's
    outputs is left out. A walk that diverges (see ``Diverged``; a legitimate one never maps to
    more channels than 8 times the widest layer has, nor than ``LIMIT``) is left out too, and
    recorded in ``diverged`` (root name -> why)."""
    with warnings.catch_warnings():  # its width inference's "Maximum recursive depth reached!": nothing a user can act on
        warnings.simplefilter("ignore")
        maps.update_index_mapping(graph)
    widest = _widest(graph)
    limit = min(8 * widest, LIMIT)
    ignored = {id(m) for m in [*ignored_layers, *graph.IGNORED_LAYERS_IN_TRACING]}
    removed: set[int] = set()
    groups = []
    preferred = [m for m in first if m in graph.module2node]
    early = {id(m) for m in preferred}
    for m in preferred + [m for m in graph.module2node if id(m) not in early]:
        if not isinstance(m, (*CONVS, tp.ops.TORCH_LINEAR, tp.ops.TORCH_LSTM)) or id(m) in ignored:
            continue
        pruner = graph.get_pruner_of_module(m)
        channels = None if pruner is None else pruner.get_out_channels(m)
        if channels is None or id(m) in removed:
            continue
        try:
            group = pruning_group(graph, m, pruner.prune_out_channels, channels, limit, widest)
        except Diverged as exc:
            if diverged is not None:
                diverged[graph._module2name[m]] = str(exc)
            continue
        outs = [item.dep.target.module for item in group if graph.is_out_channel_pruning_fn(item.dep.handler)]
        removed.update(map(id, outs))
        if not any(id(out) in ignored for out in outs):
            groups.append(group)
    return groups
