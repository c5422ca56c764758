"""Dependency groups as plain records, their kinds, and their isomorphism signatures."""
from __future__ import annotations

import logging
import math
import re
import warnings
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import NamedTuple

import networkx as nx
import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from . import _arch, _coupling, _cut, _trace
from ._errors import IsopruneError
from ._importance import item_member, member_tensors

log = logging.getLogger("isoprune")

LABELS = ("type", "structure", "shape")
"""Node-label granularity for signatures. ``type``: layer type and pruning direction (Torch-Pruning's
isomorphic tag). ``structure`` (default): also kernel size and depthwise/grouped convolution.
``shape``: also every layer's widths, so blocks of different widths never share a group."""


@dataclass
class Group:
    """One prunable group: channels that must be removed together.

    ``members`` are (parameter-holding module or parameter name, ``"out"``/``"in"``).
    ``channels`` counts prunable units: channels, or for attention heads / head dims. Where the
    channels feed or leave grouped convolutions they split into ``blocks`` equal runs and a unit is
    one position in every run (removed from all of them alike, so each conv group keeps as many).
    The runs start ``offset`` channels into the traced group's: the channels before are kept
    whole (MobileViTv2's one query channel before its keys and values, each key coupled to its
    value). ``fixed`` says why the group keeps every unit whatever the ratios (None: it may be pruned).
    """

    id: int
    kind: str
    signature: str
    root: str
    channels: int
    members: list[tuple[str, str]]
    owner: str | None = None
    blocks: int = 1
    fixed: str | None = None
    offset: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class IsomorphicGroup:
    """Groups whose structures are isomorphic; importance is ranked among them."""

    signature: str
    kind: str
    groups: list[Group] = field(default_factory=list)

    @property
    def channels(self) -> list[int]:
        return [g.channels for g in self.groups]


@dataclass
class Analysis:
    """Everything derived from one trace of the model's skeleton."""

    skeleton: nn.Module
    graph: tp.DependencyGraph
    inputs: object
    groups: list[Group]
    tp_groups: list  # full-index Torch-Pruning groups; groups[i] comes from tp_groups[source[i]]
    source: dict[int, int]
    attention: dict[str, _arch.Layout]  # attention module name -> how its projections hold heads
    counts: tuple[int, int]  # (MACs, params) of the unpruned model, counted while tracing
    frozen: dict[str, str] = field(default_factory=dict)  # root of a group left whole -> why
    parts: dict[int, list[np.ndarray]] = field(default_factory=dict)  # group id -> its units that layers hold only some of (_parts)

    def isomorphic(self) -> list[IsomorphicGroup]:
        classes: dict[str, IsomorphicGroup] = {}
        for g in self.groups:
            classes.setdefault(g.signature, IsomorphicGroup(g.signature, g.kind)).groups.append(g)
        return list(classes.values())


def _direction(graph: tp.DependencyGraph, fn) -> str:
    return "out" if graph.is_out_channel_pruning_fn(fn) else "in"


def _label(graph, node, direction: str, labels: str) -> str:
    module = node.module
    if node.type == tp.ops.OPTYPE.PARAMETER:
        text = f"Parameter{module.dim()}"
    elif graph._module2name.get(module) is None:  # virtual op: concat, reshape, add, ...
        text = type(module).__name__.strip("_")
        if labels != "type" and getattr(module, "_grad_fn", None):
            text += ":" + re.sub(r"\d+$", "", str(module._grad_fn))
    else:
        text = type(module).__name__
        if labels != "type" and module in graph.token_layers:  # it mixes tokens (MLP-Mixer's token MLP)
            text += ":tokens"
        if labels != "type" and isinstance(module, _cut.CONVS):
            text += f":k{'x'.join(map(str, module.kernel_size))}"
            if module.groups > 1:
                text += ":dw" if _cut.depthwise(module) else f":g{module.groups}"
    if labels == "shape":
        text += f":{_width_label(module)}"
    return f"{text}/{direction}"


def _width_label(module) -> str:
    if isinstance(module, torch.Tensor):
        return "x".join(map(str, module.shape))
    for ins, outs in (("in_features", "out_features"), ("in_channels", "out_channels")):
        if hasattr(module, ins):
            return f"{getattr(module, ins)}x{getattr(module, outs)}"
    weight = getattr(module, "weight", None)
    return "x".join(map(str, weight.shape)) if isinstance(weight, torch.Tensor) else "-"


def structure_graph(graph: tp.DependencyGraph, tp_group, labels: str = "structure") -> nx.DiGraph:
    """A group's structure as a labelled digraph: one node per (layer, pruning direction), one
    edge per dependency between two of them. Built from the dependency graph itself rather than
    from the order the group was discovered in, and labels carry no names."""
    items = {}
    for item in tp_group:
        node = item.dep.target
        items[(node, _direction(graph, item.dep.handler))] = len(items)
    g = nx.DiGraph()
    for (node, direction), i in items.items():
        g.add_node(i, label=_label(graph, node, direction, labels))
    for (node, direction), i in items.items():
        for dep in node.dependencies:
            if _direction(graph, dep.trigger) != direction:
                continue
            j = items.get((dep.target, _direction(graph, dep.handler)))
            if j is not None and j != i:
                g.add_edge(i, j)
    return g


def signature(g: nx.DiGraph, kind: str) -> str:
    with warnings.catch_warnings():  # networkx notes that digraph hashes changed in 3.5; we need >= 3.5
        warnings.simplefilter("ignore", UserWarning)
        digest = nx.weisfeiler_lehman_graph_hash(g, node_attr="label", iterations=3, digest_size=8)
    return f"{kind}-{digest[:12]}"


def _root(graph: tp.DependencyGraph, tp_group) -> str:
    """The name of the layer a traced group is rooted at."""
    return graph._module2name[tp_group[0].dep.target.module]


def _ancestors(name: str) -> list[str]:
    """The modules that hold ``name``, innermost first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


class _Heads(NamedTuple):
    """One registered attention, as its projections' traced groups are read."""

    owner: str
    layout: _arch.Layout
    fixed: dict[str, str]  # kind -> why the architecture keeps it whole


def _units(root: str, channels: int, members, heads_of: dict[str, _Heads], mlps: set) -> list[tuple[str, int, str | None]]:
    """(kind, unit count, owner) for one traced group. An attention's qkv group yields two:
    whole heads and head dims (and, first, a parallel block's MLP hidden units, which its qkv
    holds before the queries); the residual stream feeding attention is the embedding."""
    attn = heads_of.get(root)
    if attn is not None and channels == attn.layout.offset + attn.layout.width:
        heads = [("heads", attn.layout.heads, attn.owner), ("head_dim", attn.layout.head_dim, attn.owner)]
        return [("mlp", attn.layout.offset, None)] * bool(attn.layout.offset) + heads
    if any(d == "in" and n in heads_of for n, d in members):
        return [("emb", channels, None)]
    mlp = next((m for m in _ancestors(root) if m in mlps), None)  # the layer may sit in a wrapper (conv + norm)
    if mlp is not None and all(n.startswith(mlp + ".") for n, _ in members):
        return [("mlp", channels, None)]  # hidden units; an MLP's output is the stream it adds to
    return [("channels", channels, None)]


def _parts(tp_group, per: int, blocks: int, offset: int) -> list[np.ndarray]:
    """The units of a group (``per`` units in ``blocks`` runs from ``offset`` on) that a
    convolution or linear layer holds only some of, one array per such layer (Res2Net's scales,
    InceptionNeXt's branches): removing them all would leave it without channels."""
    parts = {}
    for item in tp_group:
        if isinstance(item.dep.target.module, (*_cut.CONVS, nn.Linear)):
            roots = item.roots[(item.roots >= offset) & (item.roots < offset + per * blocks)]  # NO_ROOT (-1) is before every group
            units = _cut.distinct((roots - offset) % per)
            if 0 < len(units) < per:
                parts[units.tobytes()] = units
    return list(parts.values())


def _blocks(tp_group, runs: dict[int, int]) -> int:
    """How many equal runs a group's channels split into: the least common multiple, over the
    members that keep their channels in runs (``_member_runs``: grouped, not depthwise,
    convolutions; GroupNorms; the ``runs`` by ``id`` of layers' first outputs or of parameters,
    ``_arch.channel_runs``), of the runs of root channels that keep theirs equal (``_root_runs``).
    Removing the same positions from every run keeps each of those groups, or heads, equal in width."""
    n = len(tp_group[0].channels)
    blocks = 1
    for item in tp_group:
        split = _member_runs(item, runs)
        if split > 1:
            blocks = math.lcm(blocks, _root_runs(item, split, n))
    return blocks if n % blocks == 0 else 1


def _root_runs(item, split: int, n: int) -> int:
    """In how many runs of a group's ``n`` root channels the same positions must go for a member
    in ``split`` equal runs to keep them equal: ``split`` where the member holds the root channels
    in their order; where it holds a part of them, or all of them in another order (Res2NeXt's
    scales, each a grouped convolution on a slice of the layer before), ``n`` over its run's
    length, if each of its runs holds every position of such a run of roots. 1 where neither:
    then no unit keeps its runs equal, and the probe leaves the group whole."""
    channels, roots = item.channels, item.roots
    if len(channels) == n and (channels == np.arange(n)).all() and (roots == channels).all():
        return split
    width = _member_width(item)
    if width is None or width % split or len(channels) != width or (roots == _coupling.NO_ROOT).any():
        return 1
    run = width // split
    if n % run or not (np.sort(channels) == np.arange(width)).all() or not (channels % run == roots % run).all():
        return 1
    return n // run


def _member_width(item) -> int | None:
    """How many channels a group member has in the direction it is cut (None: not a layer that says)."""
    layer, out = item.dep.target.module, item.dep.handler.__name__ == "prune_out_channels"
    if isinstance(layer, _cut.CONVS):
        return layer.out_channels if out else layer.in_channels
    if isinstance(layer, nn.Linear):
        return layer.out_features if out else layer.in_features
    if isinstance(layer, nn.GroupNorm):
        return layer.num_channels
    return None


def _member_runs(item, runs: dict[int, int]) -> int:
    """In how many equal runs a group member's channels must stay: a grouped convolution's
    ``groups`` (a depthwise one may lose any channel), a GroupNorm's (each keeps as many
    channels), or a layer's outputs' or a parameter's ``runs``; else 1."""
    layer = item.dep.target.module
    if id(layer) in runs and item.dep.handler.__name__ == "prune_out_channels":
        return runs[id(layer)]
    if isinstance(layer, _cut.CONVS) and layer.groups > 1 and not _cut.one_input_per_group(layer):
        return layer.groups
    if isinstance(layer, nn.GroupNorm):
        return layer.num_groups
    return 1


def _coupled_runs(n: int, aliased: np.ndarray) -> tuple[int, int]:
    """In how many equal runs of ``n`` root channels the same position must go together, given
    the pairs of them found coupled (``_coupling.Members``): the fewest runs in which all the
    channels coupled to each other lie at one position. 2 where GhostNet concatenates a layer's
    outputs with their depthwise copies; 8 where ResNeSt's attention (cardinality 2, radix 4, laid
    out ``[cardinality, radix, channels]``) weighs each of a channel's 4 radix splits. Where the
    first channels are coupled to none and the rest line up so (MobileViTv2's query channel before
    its keys and values), the runs start after them: ``(runs, offset)``, the first ``offset``
    channels kept whole. That is tried first: runs from channel 0 may fit them only by their width
    (BoTNet's queries and keys, before values wider than them, as wide as one head's values), and
    nothing coupled them to the channels they would go with. Coupled channels that line up in no
    runs but single channels leave ``(1, 0)``: then no unit keeps the forward pass whole, and the
    probe leaves the group whole."""
    if not aliased.size:
        return 1, 0
    coupled = nx.Graph(aliased.T.tolist())
    coupled.add_nodes_from(range(n))
    label = np.arange(n)
    for channels in nx.connected_components(coupled):
        label[list(channels)] = min(channels)
    alone = np.bincount(label, minlength=n)[label] == 1
    for offset in dict.fromkeys((int(np.argmin(alone)), 0)):  # from the first channel coupled to another, or from the start
        m = n - offset
        for runs in (d for d in range(2, m // 2 + 1) if m % d == 0):
            position = np.arange(m) % (m // runs)
            if (position == position[label[offset:] - offset]).all():
                return runs, offset
    return 1, 0


def _group_blocks(tp_group, halved: bool, by_head: bool, runs: dict[int, int]) -> tuple[int, int]:
    """The runs of a group's channels and the channels before them (see ``_blocks``,
    ``_coupled_runs``); gated MLPs' split layers (``halved``) in two at least. Attention cut by head
    (``by_head``) is not read for coupled runs: the tracer couples query, key and value channels
    through their products."""
    n = len(tp_group[0].channels)
    blocks = math.lcm(_blocks(tp_group, runs), 2 if halved else 1)
    coupled, offset = (1, 0) if by_head else _coupled_runs(n, tp_group.aliased)
    if offset:
        return (coupled, offset) if blocks == 1 else (1, 0)
    blocks = math.lcm(blocks, coupled)
    return (blocks, 0) if n % blocks == 0 else (1, 0)


def unit_channels(channels: int, blocks: int, units, offset: int = 0) -> list[int]:
    """Root channels of the given units of a group of ``channels`` units in ``blocks`` runs,
    starting ``offset`` channels in."""
    return [offset + b * channels + u for b in range(blocks) for u in units]


@dataclass
class Op:
    """Remove ``idxs`` from member ``name`` in one direction, as Torch-Pruning's ``handler`` would (``_cut``)."""

    name: str
    param: bool
    out: bool
    dim: int
    handler: object
    idxs: list[int]


def cut_ops(graph: tp.DependencyGraph, tp_groups: list, removed: dict[int, list[int]]) -> list[Op]:
    """Member-level removals for root-channel removals per Torch-Pruning group (``removed`` is
    keyed by index into ``tp_groups``), merged per member so each is cut once in original numbering.
    Each full group item maps root channels to its own (``roots`` beside ``channels``), so this
    is a filter of the traced groups, with no second walk of the graph."""
    merged, channels = {}, {}
    for src, drop in removed.items():
        dropped = np.zeros(len(tp_groups[src][0].channels) + 1, dtype=bool)  # the last: NO_ROOT, never dropped
        dropped[drop] = True
        for item in tp_groups[src]:
            member = item_member(graph, item)
            if member is None:
                continue
            key = (member["name"], member["out"])
            merged.setdefault(key, Op(handler=item.dep.handler, idxs=[], **member))
            channels.setdefault(key, []).append(item.channels[dropped[item.roots]])
    for key, op in merged.items():
        parts = channels[key]
        op.idxs = (_cut.distinct(np.concatenate(parts)) if len(parts) > 1 else np.sort(parts[0])).tolist()
    return list(merged.values())


def run_ops(model: nn.Module, ops: list[Op]) -> None:
    """Run the cuts, every layer's outputs first: a weight cut along both dims loses its rows
    before its columns, the slower copy, which then reads only the rows kept. Cuts along
    different dims do not depend on each other's order."""
    for op in sorted(ops, key=lambda op: not op.out):
        if op.param:
            owner_name, _, attr = op.name.rpartition(".")
            owner = model.get_submodule(owner_name)
            setattr(owner, attr, _cut.cut_parameter(op.handler, model.get_parameter(op.name), op.idxs, op.dim))
        else:
            _cut.cut_module(op.handler, model.get_submodule(op.name), op.idxs, op.dim)


def removed_outputs(ops: list[Op]) -> dict[str, list[int]]:
    """The output channels ``ops`` remove from each layer, by name."""
    return {op.name: op.idxs for op in ops if op.out and not op.param}


def _misfits(graph: tp.DependencyGraph, skeleton: nn.Module, tp_groups: list) -> tuple[list, set[int]]:
    """Groups coupling a member to channels it does not have, and the parameters among those
    members. The tracer does this through indexing and broadcasting ops: BEiT's relative position
    table (one column per head) joined to the embedding, LayerScale's gamma to a reshape. A
    parameter the tracer cuts along its last dim, where only another is as wide as the channels
    it is coupled to (PiT's position embedding, ``[1, channels, height, width]``), is cut there."""
    params, bad = {}, set()
    for i, tp_group in enumerate(tp_groups):
        for item in tp_group:
            member = item_member(graph, item)
            if member is None or not len(item.channels):
                continue
            slots = member_tensors(skeleton, **member)
            if slots and item.channels.max() >= max(s.start + s.tensor.shape[s.dim] for s in slots):
                wide = [d for d, size in enumerate(slots[0].tensor.shape) if size == item.channels.max() + 1]
                if member["param"] and len(wide) == 1:
                    item.dep.target.pruning_dim = wide[0]
                    continue
                bad.add(i)
                if member["param"]:
                    param = skeleton.get_parameter(member["name"])
                    params[id(param)] = param
    return list(params.values()), bad


def _conv_misfit(model: nn.Module) -> str | None:
    """A layer left without channels (a branch that holds a few of a group's channels can lose
    them all: InceptionNeXt's depthwise ones), or a convolution whose widths its groups do not
    divide (meta tensors check neither)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and not (m.in_features and m.out_features):
            return f"{name}: no channels left"
        if isinstance(m, _cut.CONVS):
            if not (m.in_channels and m.out_channels and m.groups):
                return f"{name}: no channels left"
            if m.in_channels % m.groups or m.out_channels % m.groups:
                return f"{name}: {m.in_channels}->{m.out_channels} channels in {m.groups} groups"
    return None


def _breaks(skeleton: nn.Module, inputs, graph, tp_groups: list, cuts: dict[int, list[int]]) -> str | None:
    """Why the skeleton no longer runs with ``cuts`` (root channels per group) made; None if it does."""
    probe = _trace.clone(skeleton).eval()  # train-mode BatchNorm rejects a batch of one 1x1 map
    try:
        ops = cut_ops(graph, tp_groups, cuts)
        run_ops(probe, ops)
        _arch.settle(probe, removed_outputs(ops))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _trace.forward(probe, inputs)
    except Exception as exc:  # noqa: BLE001 - any failure means these cuts break the model
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return _conv_misfit(probe)


def _unsafe(skeleton, inputs, graph, tp_groups: list, candidates: dict[int, list[int]], accepted: dict) -> dict[int, str]:
    """Groups whose cut (``candidates``: root channels per group) breaks the forward pass, found by
    halving: a set that runs together with everything accepted so far is accepted whole, so a
    clean model costs one probe."""
    if not candidates:
        return {}
    error = _breaks(skeleton, inputs, graph, tp_groups, accepted | candidates)
    if error is None:
        accepted |= candidates
        return {}
    if len(candidates) == 1:
        return dict.fromkeys(candidates, error)
    items = list(candidates.items())
    mid = len(items) // 2
    left = _unsafe(skeleton, inputs, graph, tp_groups, dict(items[:mid]), accepted)
    return left | _unsafe(skeleton, inputs, graph, tp_groups, dict(items[mid:]), accepted)


def breaking(analysis: Analysis, cuts: dict[int, list[int]]) -> dict[int, str]:
    """Which of ``cuts`` (root channels per Torch-Pruning group of the analysis) break the model,
    and how; each is also recorded in ``analysis.frozen``."""
    graph = analysis.graph
    found = _unsafe(analysis.skeleton, analysis.inputs, graph, analysis.tp_groups, cuts, {})
    for src, error in found.items():
        analysis.frozen[_root(graph, analysis.tp_groups[src])] = error
    return found


def _traced_groups(skeleton: nn.Module, inputs, trusted: dict[str, int], halves: set[str]) -> tuple[tp.DependencyGraph, list, list[tuple[int, int]], dict[str, str], _trace.Tally]:
    """The dependency graph and the groups that can be cut, with why others are left whole, and
    the model's MACs and params, counted during the trace.

    Tracing is not always right: parameters it couples to channels they do not have are traced
    again as fixed (not pruned), and any group that cannot lose a channel without breaking the
    forward pass is left whole, found with one pass over the meta skeleton when all is well.
    Each group is probed by removing its first unit (one channel per block, see ``_blocks``).
    Groups rooted at a registered attention's qkv with as many channels as its layout holds
    (``trusted``: root -> channels) are cut by head and not probed; any other width is probed;
    those rooted at a gated MLP's split layer (``halves``) are cut in both halves alike."""
    ignored_params = _arch.head_params(skeleton)
    for attempt in range(2):
        with _trace.counting(skeleton, inputs) as tally:
            graph = _trace.build_graph(skeleton, inputs, ignored_params)
        ignored = _arch.classifier_modules(skeleton) + _trace.output_modules(graph) + _arch.head_layers(skeleton) + graph.token_layers + graph.held_layers
        diverged: dict[str, str] = {}
        # a gated layer roots the group of its hidden units: both halves, whatever other layers
        # (MambaOut's convolution) hold a part of one
        first = [skeleton.get_submodule(n) for n in sorted(halves)] + graph.first_roots
        tp_groups = _coupling.all_groups(graph, ignored, diverged, first=first)
        misfit_params, misfit = _misfits(graph, skeleton, tp_groups)
        if not misfit_params or attempt:
            break
        ignored_params = ignored_params + misfit_params
    frozen = diverged | {_root(graph, tp_groups[i]): "traced onto channels a member does not have" for i in sorted(misfit)}
    tp_groups = [g for i, g in enumerate(tp_groups) if i not in misfit]
    roots = [_root(graph, g) for g in tp_groups]
    runs = _arch.channel_runs(skeleton)
    by_head = [trusted.get(root) == len(g[0].channels) for g, root in zip(tp_groups, roots)]
    blocks = [_group_blocks(g, root in halves, head, runs) for g, root, head in zip(tp_groups, roots, by_head)]
    candidates = {
        i: unit_channels((len(g[0].channels) - offset) // b, b, [0], offset)
        for i, (g, (b, offset), head) in enumerate(zip(tp_groups, blocks, by_head))
        if len(g[0].channels) - offset > b and not head
    }
    unsafe = _unsafe(skeleton, inputs, graph, tp_groups, candidates, {})
    frozen |= {_root(graph, tp_groups[i]): error for i, error in unsafe.items()}
    if frozen:
        first, why = next(iter(frozen.items()))
        log.warning("%d %s left whole (%s: %s)", len(frozen), "group is" if len(frozen) == 1 else "groups are", first, why)
    kept = [i for i in range(len(tp_groups)) if i not in unsafe]
    return graph, [tp_groups[i] for i in kept], [blocks[i] for i in kept], frozen, tally


def analyse(model: nn.Module, example_inputs=None, labels: str = "structure") -> Analysis:
    """Trace the model's skeleton and describe every prunable group."""
    if labels not in LABELS:
        raise IsopruneError(f"unknown label granularity {labels!r}", hint=f"use one of {', '.join(LABELS)}")
    skeleton = _trace.meta_skeleton(model)
    inputs = _trace.meta_inputs(model, example_inputs)
    heads_of: dict[str, _Heads] = {}  # by projection name
    mlps, halves = set(), set()
    prefix = lambda name, child: f"{name}.{child}" if name else child  # noqa: E731
    for name, m in skeleton.named_modules():
        spec = _arch.attention_spec(m)
        if spec is not None:
            fixed = spec.fixed(skeleton, m) if spec.fixed else {}
            for projection in spec.projections(m):
                heads_of[prefix(name, projection)] = _Heads(name, spec.layout(m, projection), fixed)
        elif _arch.is_mlp(m):
            mlps.add(name)
            if _arch.gated_layer(m):
                halves.add(prefix(name, _arch.gated_layer(m)))
    trusted = {root: attn.layout.offset + attn.layout.width for root, attn in heads_of.items()}
    graph, traced, blocks, frozen, tally = _traced_groups(skeleton, inputs, trusted, halves)
    groups, tp_groups, source, attention, parts = [], [], {}, {}, {}
    for tp_group, (n_blocks, offset) in zip(traced, blocks):
        found = [m for m in map(partial(item_member, graph), tp_group) if m is not None]
        members = [(m["name"], "out" if m["out"] else "in") for m in found]
        root = _root(graph, tp_group)
        structure = structure_graph(graph, tp_group, labels)
        channels = (len(tp_group[0].channels) - offset) // n_blocks
        for kind, n, owner in _units(root, channels, members, heads_of, mlps):
            fixed = None
            if owner:
                attn = heads_of[root]
                attention[owner] = attn.layout
                fixed = attn.fixed.get(kind)
            source[len(groups)] = len(tp_groups)
            if kind not in ("heads", "head_dim"):
                parts[len(groups)] = _parts(tp_group, n, n_blocks, offset)
            groups.append(Group(len(groups), kind, signature(structure, kind), root, n, members, owner, n_blocks, fixed, offset))
        tp_groups.append(tp_group)
    return Analysis(skeleton, graph, inputs, groups, tp_groups, source, attention, (tally.macs, tally.params), frozen, parts)
