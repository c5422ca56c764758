"""Dependency groups as plain records, their kinds, and their isomorphism signatures."""
from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass, field
from functools import partial

import networkx as nx
import torch
import torch_pruning as tp
from torch import nn

from . import _arch, _trace
from ._errors import IsopruneError
from ._importance import item_member

LABELS = ("type", "structure", "shape")
"""Node-label granularity for signatures. ``type``: layer type and pruning direction (Torch-Pruning's
isomorphic tag). ``structure`` (default): also kernel size and depthwise/grouped convolution.
``shape``: also every layer's widths, so blocks of different widths never share a group."""


@dataclass
class Group:
    """One prunable group: channels that must be removed together.

    ``members`` are (parameter-holding module or parameter name, ``"out"``/``"in"``).
    ``channels`` counts prunable units: channels, or for attention heads / head dims.
    """

    id: int
    kind: str
    signature: str
    root: str
    channels: int
    members: list[tuple[str, str]]
    owner: str | None = None

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
    attention: dict[str, tuple[int, int]]  # attention module name -> (num_heads, head_dim)

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
        if labels != "type" and isinstance(module, nn.modules.conv._ConvNd):
            text += f":k{'x'.join(map(str, module.kernel_size))}"
            if module.groups > 1:
                text += ":dw" if module.groups == module.in_channels == module.out_channels else f":g{module.groups}"
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


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _units(root: str, channels: int, members, heads_of: dict, mlps: set) -> list[tuple[str, int, str | None]]:
    """(kind, unit count, owner) for one traced group. An attention's qkv group yields two:
    whole heads and head dims; the residual stream feeding attention is the embedding."""
    if root in heads_of and channels == 3 * heads_of[root][1] * heads_of[root][2]:
        owner, heads, head_dim = heads_of[root]
        return [("heads", heads, owner), ("head_dim", head_dim, owner)]
    if any(d == "in" and n in heads_of for n, d in members):
        return [("emb", channels, None)]
    if _parent(root) in mlps:
        return [("mlp", channels, None)]
    return [("channels", channels, None)]


def analyse(model: nn.Module, example_inputs=None, labels: str = "structure") -> Analysis:
    """Trace the model's skeleton and describe every prunable group."""
    if labels not in LABELS:
        raise IsopruneError(f"unknown label granularity {labels!r}", hint=f"use one of {', '.join(LABELS)}")
    skeleton = _trace.meta_skeleton(model)
    inputs = _trace.meta_inputs(model, example_inputs)
    graph = _trace.build_graph(skeleton, inputs, _arch.head_params(skeleton))
    heads_of = {}  # qkv module name -> (attention name, num_heads, head_dim)
    mlps = set()
    for name, m in skeleton.named_modules():
        spec = _arch.attention_spec(m)
        if spec is not None:
            heads_of[f"{name}.{spec.qkv}" if name else spec.qkv] = (name, *spec.layout(m))
        elif _arch.is_mlp(m):
            mlps.add(name)
    ignored = _arch.classifier_modules(skeleton) + _trace.output_modules(graph)
    groups, tp_groups, source, attention = [], [], {}, {}
    for tp_group in graph.get_all_groups(ignored_layers=ignored):
        found = [m for m in map(partial(item_member, graph), tp_group) if m is not None]
        members = [(m["name"], "out" if m["out"] else "in") for m in found]
        root = graph._module2name[tp_group[0].dep.target.module]
        structure = structure_graph(graph, tp_group, labels)
        channels = len(tp_group[0].idxs)
        for kind, n, owner in _units(root, channels, members, heads_of, mlps):
            if owner:
                attention[owner] = heads_of[root][1:]
            source[len(groups)] = len(tp_groups)
            groups.append(Group(len(groups), kind, signature(structure, kind), root, n, members, owner))
        tp_groups.append(tp_group)
    return Analysis(skeleton, graph, inputs, groups, tp_groups, source, attention)
