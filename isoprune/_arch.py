"""Architecture knowledge as registries keyed by module type (looked up along the MRO).

What the dependency graph cannot tell by itself:
- which modules are multi-head attention, where their qkv projections live, which of their
  parameters hold one slice per head, and how to fix their attributes after heads or head dims
  are removed;
- which modules are transformer MLPs (their hidden width is the ``mlp`` kind), and which of those
  gate one half of a layer's output with the other;
- which modules are the classifier, so it is never pruned at its output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import apply_rot_embed_cat
from timm.layers.pos_embed_rel import RelPosBiasTf, RelPosMlp
from timm.models.beit import Attention as BeitAttention
from timm.models.eva import EvaAttention
from torch import nn

from ._cut import cut_tensor
from ._errors import IsopruneError


class Layout(NamedTuple):
    """How an attention projection's output channels hold its heads: ``[copies, heads, head_dim]``
    flattened (3 copies, query, key and value, in a fused qkv; 1 in a separate projection), or
    ``[heads, copies, head_dim]`` where ``heads_first``; ``offset`` channels in (a parallel block's
    projection holds its MLP's hidden units first)."""

    heads: int
    head_dim: int
    copies: int
    heads_first: bool = False
    offset: int = 0

    @property
    def width(self) -> int:
        """The channels the projection holds, laid out so."""
        return self.copies * self.heads * self.head_dim

    def channels(self) -> torch.Tensor:
        """The channel of every (copy, head, dim), as a ``[copies, heads, head_dim]`` tensor."""
        grid = torch.arange(self.offset, self.offset + self.width)
        if self.heads_first:
            return grid.view(self.heads, self.copies, self.head_dim).transpose(0, 1)
        return grid.view(self.copies, self.heads, self.head_dim)


def _out_width(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


@dataclass(frozen=True)
class AttentionSpec:
    """How one attention type is laid out: ``qkv`` is a Linear (or 1x1 convolution) holding the
    query, key and value of every head (see ``Layout``; ``heads_first`` names the module's flag for
    the second order, or is True where every module of the type has it) or, where the module has
    none, ``separate`` names its query, key and value Linears, each ``[num_heads, head_dim]``; the
    module keeps ``num_heads``. ``offset(module)`` counts the qkv's channels before the queries,
    which are another kind's: a parallel block's MLP hidden units (its ``mlp`` group).
    ``head_params`` names parameters that hold one slice per head (``(name, dim)``, e.g. Swin's
    relative position bias table; a dotted name reaches into a submodule), or is a function of the
    module giving them; the tracer leaves them out and they are cut with the heads.
    ``fixup(module, heads, dims)`` makes the module's other attributes agree with its pruned
    weights (kept indices). ``fixed(model, module)`` names the kinds (``"heads"``, ``"head_dim"``)
    the module must keep whole in this model, with why. ``pruned`` is the class such a module
    becomes once its model is pruned, where its own forward assumes the widths it was built with.
    ``head_layers`` name layers whose outputs hold a slice per head, which ``fixup`` cuts: they root
    no group of their own (VOLO's outlook attention weights), and are cut with others at their inputs.
    ``runs(module)`` names layers whose first outputs hold a run per head, cut by a group rooted
    elsewhere (GC ViT's keys, matched channel for channel with the stage's global queries), with how
    many runs: that group then has as many, and each head keeps as many channels as the others.
    ``query_dim(module)`` is the width of a head's query and key where its values are a whole
    number of times wider (LeViT): a head dim is then one channel of each of them, and of each
    query-wide slice of the values, which count as that many copies. ``heads_attr`` names the
    module's attribute that holds its head count (Hiera's is ``heads``)."""

    qkv: str
    fixup: Callable[[nn.Module, list[int], list[int]], None]
    head_params: tuple[tuple[str, int], ...] | Callable[[nn.Module], tuple[tuple[str, int], ...]] = ()
    separate: tuple[str, str, str] | None = None
    fixed: Callable[[nn.Module, nn.Module], dict[str, str]] | None = None
    pruned: type | None = None
    heads_first: str | bool | None = None
    head_layers: tuple[str, ...] = ()
    runs: Callable[[nn.Module], dict[str, int]] | None = None
    query_dim: Callable[[nn.Module], int] | None = None
    heads_attr: str = "num_heads"
    offset: Callable[[nn.Module], int] | None = None

    def heads(self, module: nn.Module) -> int:
        return int(getattr(module, self.heads_attr))

    def projections(self, module: nn.Module) -> tuple[str, ...]:
        if self.separate and not isinstance(getattr(module, self.qkv, None), (nn.Linear, nn.Conv2d)):
            return self.separate
        return (self.qkv,)

    def layout(self, module: nn.Module, projection: str | None = None) -> Layout:
        """How a projection of the module (its first, unless named) lays out its heads. A fused qkv
        holds three copies; of separate projections the narrowest holds one, and the others as
        many as they are wider (PVT's ``kv``, ConViT's ``qk``: two)."""
        names = self.projections(module)
        heads = self.heads(module)
        flag = self.heads_first
        heads_first = flag if isinstance(flag, bool) else bool(flag and getattr(module, flag))
        offset = self.offset(module) if self.offset is not None else 0
        widths = {name: _out_width(module.get_submodule(name)) - offset for name in names}
        if self.query_dim is not None:
            head_dim = self.query_dim(module)
        else:
            head_dim = min(widths.values()) // heads if names == self.separate else widths[names[0]] // (3 * heads)
        return Layout(heads, head_dim, widths[projection or names[0]] // (heads * head_dim), heads_first, offset)

    def per_head(self, module: nn.Module) -> tuple[tuple[str, int], ...]:
        """The module's parameters that hold one slice per head, ``(name, dim)``."""
        return self.head_params(module) if callable(self.head_params) else self.head_params


_ATTENTION: dict[type, AttentionSpec] = {}
_MLP: set[type] = set()
_GATED: dict[type, str | Callable[[nn.Module], str | None]] = {}
_TRACE_FORWARD: dict[type, Callable] = {}
_PRUNED: dict[type, type] = {}
Cut = Callable[[str], list[int]]
"""The output channels a cut removed from a module's submodule, by its name in the module (in
the numbering they had before)."""
_RESIZE: dict[type, Callable[[nn.Module, Cut], None]] = {}
_RUNS: dict[type, Callable[[nn.Module], dict[str, int]]] = {}


def register_attention(cls: type, spec: AttentionSpec) -> None:
    _ATTENTION[cls] = spec


def register_mlp(cls: type, gated: str | Callable[[nn.Module], str | None] | None = None) -> None:
    """``gated`` names a layer whose output the MLP splits in two halves, one gating the other
    (timm ``GluMlp``'s ``fc1``): a hidden unit is then one position in both halves. Given a
    function, it names the layer for each module, or None where that one is not gated."""
    _MLP.add(cls)
    if gated:
        _GATED[cls] = gated


def register_trace_forward(cls: type, forward: Callable) -> None:
    """Trace ``cls`` with ``forward`` instead of its own: the same numbers, written with ops whose
    channel mapping the tracer follows (it loses channels through reshape-permute-flatten)."""
    _TRACE_FORWARD[cls] = forward


def register_pruned(cls: type, pruned: type) -> None:
    """A module of ``cls`` becomes ``pruned`` once its model is pruned: the class of a module
    (not an attention, whose spec names its own) whose forward assumes the widths it was built with."""
    _PRUNED[cls] = pruned


def register_resize(cls: type, resize: Callable[[nn.Module, Cut], None]) -> None:
    """``resize(module, cut)`` sets what a module of ``cls`` keeps of its widths (and its forward
    reads) to the widths of its parameters once they are cut: for modules whose parameters are cut
    by the groups that run through them, not by a spec of their own (MetaFormer's ``Scale``). A
    width no parameter holds (where DPN splits a layer's outputs) is counted from what ``cut``
    says that layer lost."""
    _RESIZE[cls] = resize


def register_runs(cls: type, runs: Callable[[nn.Module], dict[str, int]]) -> None:
    """``runs(module)`` names parameters of a module of ``cls`` that hold its channels in equal
    runs it keeps equal, with how many (EvoNorm's groups, each normalised on its own), or
    submodules whose outputs do (``""``: the module's own; a bidirectional LSTM's, both
    directions'): the group that cuts them then removes the same positions from every run, as
    from a GroupNorm's."""
    _RUNS[cls] = runs


def _lookup(registry, module: nn.Module):
    for cls in type(module).__mro__:
        if cls in registry:
            return registry[cls] if isinstance(registry, dict) else cls
    return None


def attention_spec(module: nn.Module) -> AttentionSpec | None:
    return _lookup(_ATTENTION, module)


def is_mlp(module: nn.Module) -> bool:
    return _lookup(_MLP, module) is not None


def gated_layer(module: nn.Module) -> str | None:
    gated = _lookup(_GATED, module)
    return gated(module) if callable(gated) else gated


def trace_forward(module: nn.Module) -> Callable | None:
    return _lookup(_TRACE_FORWARD, module)


def head_params(model: nn.Module) -> list[nn.Parameter]:
    """Every per-head parameter of the registered attention modules (kept out of the trace)."""
    found = []
    for m in model.modules():
        spec = attention_spec(m)
        if spec is not None:
            found += [m.get_parameter(name) for name, _ in spec.per_head(m)]
    return found


def head_layers(model: nn.Module) -> list[nn.Module]:
    """Every layer a registered attention cuts with its heads at its output (``AttentionSpec``)."""
    return [m.get_submodule(name) for m in model.modules() if (spec := attention_spec(m)) is not None for name in spec.head_layers]


def channel_runs(model: nn.Module) -> dict[int, int]:
    """How many runs a registered attention splits a layer's outputs in (``AttentionSpec.runs``),
    by the layer's ``id``, and a registered module its parameters (``register_runs``), by theirs."""
    found = {}
    for m in model.modules():
        spec = attention_spec(m)
        if spec is not None and spec.runs is not None:
            found |= {id(m.get_submodule(name)): runs for name, runs in spec.runs(m).items()}
        runs = _lookup(_RUNS, m)
        if runs is not None:
            found |= {id(_part(m, name)): n for name, n in runs(m).items()}
    return found


def _part(module: nn.Module, name: str) -> nn.Module | torch.Tensor:
    """The submodule or parameter of ``module`` that ``name`` names."""
    try:
        return module.get_submodule(name)
    except AttributeError:
        return module.get_parameter(name)


def settle(model: nn.Module, removed: dict[str, list[int]] | None = None) -> None:
    """Make a model whose parameters have been cut run at its new widths: every module whose own
    forward assumes its unpruned widths becomes its ``pruned`` class (an attention's spec names it,
    others ``register_pruned``), which computes the same at any widths, and every module that keeps
    its widths in attributes is resized (``register_resize``). ``removed`` holds the output
    channels the cut removed, by layer name; settle once after each cut."""
    removed = removed or {}
    for name, m in model.named_modules():
        spec = attention_spec(m)
        pruned = spec.pruned if spec is not None else _lookup(_PRUNED, m)
        if pruned is not None and type(m) is not pruned:
            m.__class__ = pruned
        resize = _lookup(_RESIZE, m)
        if resize is not None:
            resize(m, lambda layer, prefix=f"{name}.": removed.get(prefix + layer, []))


def cut_heads(module: nn.Module, spec: AttentionSpec, heads: list[int]) -> None:
    """Keep only the ``heads`` slices of the module's per-head parameters."""
    for name, dim in spec.per_head(module):
        param = module.get_parameter(name)
        if param.shape[dim] == len(heads):
            continue
        owner, _, attr = name.rpartition(".")
        setattr(module.get_submodule(owner), attr, cut_tensor(param, dim, np.asarray(heads, dtype=np.int64)))


def rescale_queries(module: nn.Module, head_dim: int, heads_first: bool = False, query: nn.Module | None = None, rows=slice(None)) -> None:
    """The fused path (``F.scaled_dot_product_attention``) always scales by ``1/sqrt(head_dim)``, so
    after removing head dims we set ``scale`` to the new value and fold the ratio to the old one
    (the module's ``scale`` until now) into the query rows (of the fused qkv, of ``q_proj``, or the
    ``rows`` of the layer ``query`` given): fused and unfused paths then compute exactly what the
    unpruned model did."""
    old_scale = float(module.scale)
    module.scale = head_dim ** -0.5
    factor = old_scale / module.scale
    if math.isclose(factor, 1.0):
        return
    if not isinstance(getattr(module, "q_norm", nn.Identity()), nn.Identity):
        raise IsopruneError(
            "head-dim pruning of attention with qk-norm is not supported",
            module=type(module).__name__,
            hint="set head_dim ratio to 0 for this model",
        )
    qkv = getattr(module, "qkv", None)
    if query is not None or qkv is None:  # separate projections
        query = query if query is not None else module.q_proj
    else:  # the first copy of every head
        heads = _out_width(qkv) // (3 * head_dim)
        query, rows = qkv, Layout(heads, head_dim, 3, heads_first).channels()[0].flatten()
    with torch.no_grad():
        query.weight[rows] *= factor
        if query.bias is not None:
            query.bias[rows] *= factor


def fix_timm_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """timm ``Attention`` keeps ``num_heads``, ``head_dim``, ``attn_dim`` and ``scale`` in step."""
    module.num_heads = len(heads)
    module.head_dim = len(dims)
    module.attn_dim = len(heads) * len(dims)
    rescale_queries(module, len(dims))


def timm_attention_trace(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """timm ``Attention`` for the tracer: its own forward, but where it normalises queries and
    keys over their head dims (qk-norm), whose weights the tracer couples to the qkv's channels
    through timm's reshape, onto channels they do not have (every such attention was left whole):
    then the values go to the output projection as ``value_heads`` has them."""
    if not qk_norm_fixed(self):
        return type(self).forward(self, x, *args, **kwargs)
    out = self.norm(value_heads(self.qkv(x), Layout(self.num_heads, self.head_dim, 3), 2))
    if getattr(self, "gate", None) is not None:
        out = out * self.gate(x).sigmoid()
    return self.proj_drop(self.proj(out))


def fix_window_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """timm Swin ``WindowAttention``: ``num_heads`` and ``scale``; the head dim is read from qkv."""
    module.num_heads = len(heads)
    rescale_queries(module, len(dims))


def fix_rope_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """timm ``AttentionRope``: as ``Attention``, and its key/value heads, as many as its heads
    (grouped-query attention is kept whole)."""
    fix_timm_attention(module, heads, dims)
    module.num_kv_heads = module.num_heads
    module.kv_dim = module.attn_dim


def _merged_neighbours(x: torch.Tensor) -> torch.Tensor:
    """Swin's patch merging input ``[batch, h, w, C]`` as a concatenation of the four 2x2
    neighbours, in the order timm's reshape-permute-flatten lays them out (``[w, h, C]``, channels
    innermost), so the tracer maps channel ``c`` to ``c, C+c, 2C+c, 3C+c``. The tracer takes dim 1
    of a 4-d tensor for channels, so the slicing and concatenation run channels-first."""
    _, height, width, _ = x.shape
    x = nn.functional.pad(x, (0, 0, 0, width % 2, 0, height % 2)).permute(0, 3, 1, 2)
    x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], dim=1)
    return x.permute(0, 2, 3, 1)


def patch_merging_forward(self, x: torch.Tensor) -> torch.Tensor:
    """timm Swin ``PatchMerging`` for the tracer: the merged neighbours, normalised and reduced."""
    return self.reduction(self.norm(_merged_neighbours(x)))


def post_norm_patch_merging_forward(self, x: torch.Tensor) -> torch.Tensor:
    """timm Swin V2 ``PatchMerging`` for the tracer: the merged neighbours, reduced and normalised."""
    return self.norm(self.reduction(_merged_neighbours(x)))


channel_splits: list = []
"""The autograd nodes of the splits that trace forwards make on channels, for ``build_graph``."""


def split_channels(x: torch.Tensor, chunks: int | Sequence[int]) -> tuple[torch.Tensor, ...]:
    """``x.chunk(chunks, dim=1)`` (or, given sizes, ``x.split(sizes, dim=1)``) in a trace forward,
    marked as a split of channels. Torch-Pruning maps a split's channels onto its parts only on
    dim 1, and not at all once a 3-d parameter (a ViT's class token) lies upstream: its guard
    against reading the token concatenation as one of channels. ``build_graph`` maps the marked
    splits again."""
    parts = x.chunk(chunks, dim=1) if isinstance(chunks, int) else x.split(list(chunks), dim=1)
    channel_splits.append(parts[0].grad_fn)
    return parts


channel_concats: list = []
"""``(autograd node, parts' autograd nodes, part widths)`` of the concatenations of channels that
trace forwards make, for ``build_graph``."""


def concat_channels(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    """``torch.cat(parts, dim)`` in a trace forward, marked as a concatenation of channels.
    Torch-Pruning maps a concatenation's channels only on dim 1 and infers each part's width from
    the layers around it; ``build_graph`` maps the marked ones with the widths they had."""
    out = torch.cat(parts, dim)
    channel_concats.append((out.grad_fn, [p.grad_fn for p in parts], [p.shape[dim] for p in parts]))
    return out


channel_flattens: list = []
"""``(autograd node, stride)`` of the flattens ``flatten_channels`` makes, for ``build_graph``."""


def flatten_channels(x: torch.Tensor) -> torch.Tensor:
    """``x.flatten(-2)`` in a trace forward, ``[..., channels, k]`` to ``[..., channels * k]``,
    marked: ``build_graph`` maps channel ``c`` onto ``c * k`` up to ``c * k + k - 1``."""
    out = x.flatten(-2)
    channel_flattens.append((out.grad_fn, x.shape[-1]))
    return out


first_roots: list = []
"""Layers trace forwards name to root the group of their outputs before other layers do."""


def root_first(layer: nn.Module) -> None:
    """Mark ``layer``, in a trace forward, to root the group of its outputs: the group's channels
    are numbered as the layer has them, where they fall in runs that a layer rooting it later would
    number otherwise (SKNet's grouped path convolutions, not its attention's ``[paths, channels]``)."""
    first_roots.append(layer)


token_swaps: list = []
"""``(into, back)``: the autograd nodes of the transposes ``mix_tokens`` makes, for ``build_graph``."""


def mix_tokens(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer`` run along the token axis of ``x`` (``[batch, tokens, channels]``) in a trace
    forward: ``layer(x.transpose(1, 2)).transpose(1, 2)``, the two transposes marked. The tracer
    maps channels through a transpose as if nothing moved, so it coupled the token-mixing layers of
    MLP-Mixer, ResMLP and gMLP (whose features are the tokens) to the channels around them;
    ``build_graph`` cuts the couplings through the marked transposes."""
    into = x.transpose(1, 2)
    back = layer(into).transpose(1, 2)
    token_swaps.append((into.grad_fn, back.grad_fn))
    return back


held_outputs: list = []
"""The autograd nodes of the sums ``held`` makes, for ``build_graph``."""
ended_outputs: list = []
"""The autograd nodes of the sums ``held(..., cut=True)`` makes, for ``build_graph``."""


def held(x: torch.Tensor, cut: bool = False) -> torch.Tensor:
    """A zero to add, in a trace forward, to what ``x`` weighs: the output of layers that compute
    not channels but weights for another layer (CondConv's routing: one weight per expert). The
    tracer reaches the layers that make ``x``, so that their inputs are cut with the channels they
    read; ``build_graph`` cuts every coupling through the marked sum, and no group cuts their
    outputs. With ``cut``, their groups do: channels that end inside a module, coupled to each
    other and to nothing after it (a lambda layer's queries and keys)."""
    total = x.sum()
    (ended_outputs if cut else held_outputs).append(total.grad_fn)
    return total * 0


def glu_mlp_trace(self, x: torch.Tensor) -> torch.Tensor:
    """timm ``GluMlp`` for the tracer: its two halves split as channels (``split_channels``)."""
    x1, x2 = split_channels(self.fc1(x).movedim(self.chunk_dim, 1), 2)
    x = (x1 * self.act(x2) if self.gate_last else self.act(x1) * x2).movedim(1, self.chunk_dim)
    return self.drop2(self.fc2(self.norm(self.drop1(x))))


def split_heads(projected: torch.Tensor, heads: int, copies: int = 1) -> torch.Tensor:
    """A projection's output ``[batch, tokens, copies * heads * head_dim]``, laid out as ``Layout``
    has it, as ``[copies, batch, heads, tokens, head_dim]`` (``[batch, heads, tokens, head_dim]``
    for one copy). The head dim is read from the width, so it holds once the model is pruned."""
    batch, tokens, _ = projected.shape
    split = projected.reshape(batch, tokens, copies, heads, -1).permute(2, 0, 3, 1, 4)
    return split[0] if copies == 1 else split


def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
    """Fused attention at the module's ``scale`` (plus ``bias``, if given, before the softmax;
    causal, if asked), with its dropout (if it has one) while training."""
    dropout = self.attn_drop.p if self.training and hasattr(self, "attn_drop") else 0.0
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, is_causal=is_causal, scale=self.scale)


def project(self, x: torch.Tensor) -> torch.Tensor:
    """The output projection, and its dropout if the module has one."""
    x = self.proj(x)
    return self.proj_drop(x) if hasattr(self, "proj_drop") else x


def fused_qkv(self, x: torch.Tensor, trace: bool) -> tuple[torch.Tensor, ...]:
    """Queries, keys and values ``[batch, heads, tokens, head_dim]`` from a fused qkv whose
    biases the module keeps apart (``q_bias``, ``k_bias``, ``v_bias``; EVA, BEiT, Swin V2). The qkv is
    called as a module, so the tracer and the MACs counter see it (timm calls ``F.linear`` on its
    weight); the biases, which we cut with the heads, are left out of a trace."""
    qkv = self.qkv(x)
    if self.q_bias is not None and not trace:
        qkv = qkv + torch.cat((self.q_bias, self.k_bias, self.v_bias))
    return split_heads(qkv, self.num_heads, 3).unbind(0)


def _eva_attention(self, x: torch.Tensor, rope, attn_mask, is_causal: bool, trace: bool) -> torch.Tensor:
    """timm ``EvaAttention``'s computation with its output as wide as its heads (timm reshapes it
    to the input's width, so it runs only while no head, head dim or embedding dim is gone).
    Always through ``scaled_dot_product_attention``, at the module's ``scale``."""
    gate = self.gate(x).sigmoid() if self.gate is not None else None
    if self.qkv is not None:
        q, k, v = fused_qkv(self, x, trace)
    else:
        q, k, v = (split_heads(p(x), self.num_heads) for p in (self.q_proj, self.k_proj, self.v_proj))
    q, k = self.q_norm(q), self.k_norm(k)
    if rope is not None:
        turn = partial(apply_rot_embed_cat, emb=rope, half=getattr(self, "rotate_half", False))
        n = self.num_prefix_tokens
        q = torch.cat([q[:, :, :n], turn(q[:, :, n:])], dim=2).type_as(v)
        k = torch.cat([k[:, :, :n], turn(k[:, :, n:])], dim=2).type_as(v)
    dropout = self.attn_drop.p if self.training else 0.0
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout, is_causal=is_causal, scale=self.scale)
    x = self.norm(x.transpose(1, 2).flatten(2))
    if gate is not None:
        x = x * gate
    return self.proj_drop(self.proj(x))


def eva_attention_forward(self, x, rope=None, attn_mask=None, is_causal=False):
    """A pruned ``EvaAttention``'s forward (see ``_eva_attention``)."""
    return _eva_attention(self, x, rope, attn_mask, is_causal, trace=False)


def eva_attention_trace(self, x, rope=None, attn_mask=None, is_causal=False):
    """``EvaAttention`` for the tracer: its fused qkv called as a module (timm's ``F.linear`` on
    the weight hides the layer from it); the q and v biases, which we cut with the heads, and the
    rotary embedding, which keeps shapes but would read to the tracer as head dims coupled in
    pairs, left out."""
    return _eva_attention(self, x, None, attn_mask, is_causal, trace=True)


class PrunedEvaAttention(EvaAttention):
    """timm ``EvaAttention`` after pruning: the same module, with a forward that follows its widths."""

    forward = eva_attention_forward


def cut_qkv_biases(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """The separate q/k/v biases of a fused qkv (EVA, BEiT, Swin V2), laid out ``[heads, head_dim]``,
    cut like the projection's rows (the k bias is a buffer of zeros, and stays one). Called before
    ``num_heads`` changes: a bias's head dim is its width over the heads."""
    for name in ("q_bias", "k_bias", "v_bias"):
        tensor = getattr(module, name, None)
        if tensor is None:
            continue
        kept = (np.asarray(heads)[:, None] * (tensor.shape[0] // module.num_heads) + np.asarray(dims)).ravel()
        if tensor.shape[0] != len(kept):
            setattr(module, name, cut_tensor(tensor, 0, kept))


def fix_eva_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """timm ``EvaAttention``: ``num_heads``, ``head_dim``, and the separate q/k/v biases of its
    fused qkv (``head_dim`` is read before it is changed)."""
    cut_qkv_biases(module, heads, dims)
    module.num_heads = len(heads)
    module.head_dim = len(dims)


def _beit_attention(self, x: torch.Tensor, shared_rel_pos_bias, trace: bool) -> torch.Tensor:
    """timm BEiT ``Attention``'s computation with its output as wide as its heads (timm reshapes
    it to the input's width), at the module's ``scale``. Traced (``trace``) without the q/v biases
    (see ``fused_qkv``) or the relative position bias, whose per-head parts are cut with the heads."""
    q, k, v = fused_qkv(self, x, trace)
    bias = None
    if not trace:
        if self.relative_position_bias_table is not None:
            bias = self._get_rel_pos_bias()
        if shared_rel_pos_bias is not None:
            bias = shared_rel_pos_bias if bias is None else bias + shared_rel_pos_bias
    return project(self, attend(self, q, k, v, bias).transpose(1, 2).flatten(2))


def beit_attention_forward(self, x, shared_rel_pos_bias=None):
    """A pruned BEiT ``Attention``'s forward (see ``_beit_attention``)."""
    return _beit_attention(self, x, shared_rel_pos_bias, trace=False)


def beit_attention_trace(self, x, shared_rel_pos_bias=None):
    """BEiT ``Attention`` for the tracer (see ``_beit_attention``)."""
    return _beit_attention(self, x, shared_rel_pos_bias, trace=True)


def fix_beit_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """timm BEiT ``Attention``: ``num_heads`` and its q/k/v biases; ``scale`` stays, passed to
    the pruned forward's attention as it is."""
    cut_qkv_biases(module, heads, dims)
    module.num_heads = len(heads)


def beit_head_params(module: nn.Module) -> tuple[tuple[str, int], ...]:
    """BEiT's relative position bias table: a column per head, where the block has its own."""
    return (("relative_position_bias_table", 1),) if module.relative_position_bias_table is not None else ()


def beit_fixed(model: nn.Module, module: nn.Module) -> dict[str, str]:
    """Heads are kept whole where one relative position bias serves every block."""
    if model._modules.get("rel_pos_bias") is not None:
        return {"heads": "one relative position bias, with a column per head, serves every block"}
    return {}


class PrunedBeitAttention(BeitAttention):
    """timm BEiT ``Attention`` after pruning: the same module, with a forward that follows its widths."""

    forward = beit_attention_forward


def qk_norm_fixed(module: nn.Module) -> dict[str, str]:
    """Head dims stay whole in an attention that normalises its queries and keys over them."""
    return {} if isinstance(getattr(module, "q_norm", nn.Identity()), nn.Identity) else {"head_dim": "qk-norm normalises over head dims"}


def resize_norm(norm: nn.Module, cut: Cut) -> None:
    """A norm that is not a ``LayerNorm`` but keeps its ``normalized_shape`` (torch's ``RMSNorm``,
    timm's ``RmsNorm`` and ``SimpleNorm``, which hand it to ``F.rms_norm``): as wide as its weight,
    which the group cut. One without a weight is not in any group's trace and keeps its width (a
    group it normalises cannot lose a channel, and is left whole, named)."""
    if getattr(norm, "weight", None) is not None:
        norm.normalized_shape = (*norm.normalized_shape[:-1], norm.weight.shape[-1])


def rotary_fixed(model: nn.Module, module: nn.Module) -> dict[str, str]:
    """What an attention of timm's rotary models (EVA, ``AttentionRope``) keeps whole: head dims
    where the model turns them in pairs with a rotary position embedding or normalises them
    (qk-norm); heads too where the rotary embedding has frequencies per head
    (``rope_type="mixed"``), and both under grouped-query attention."""
    # the modules' own dicts: nn.Module's getattr raises and catches on every module without one
    rotary = [m for m in model.modules() if m._modules.get("rope") is not None]
    fixed = {"head_dim": "the rotary position embedding turns head dims in pairs"} if rotary else qk_norm_fixed(module)
    if any(m.__dict__.get("rope_mixed", False) for m in rotary):
        fixed["heads"] = "the rotary position embedding has frequencies per head"
    if getattr(module, "num_kv_groups", 1) > 1:
        fixed = dict.fromkeys(("heads", "head_dim"), "grouped-query attention shares key/value heads")
    return fixed


def rope_attention_trace(self, x, rope=None, attn_mask=None, is_causal=False):
    """timm ``AttentionRope`` for the tracer: its own forward without the rotary embedding (see
    ``eva_attention_trace``)."""
    return type(self).forward(self, x, None, attn_mask, is_causal)


def value_heads(qkv: torch.Tensor, layout: Layout, axis: int, width: int | None = None) -> torch.Tensor:
    """The values of every head (``width`` channels from the start of its third copy: one head dim,
    unless given), sliced off a fused qkv's output on ``axis`` (where the tracer
    takes channels: the last of a 3-d tensor, the second of a 4-d one) and concatenated
    (``concat_channels``), as attention hands them to its output projection. That is the whole of
    how channels flow through attention, written without the reshapes the tracer cannot follow;
    queries and keys only weight the tokens, which moves no channel and counts no MACs (the
    counter counts layers)."""
    starts, dim = layout.channels()[2, :, 0].tolist(), width or layout.head_dim
    return concat_channels([qkv[(slice(None),) * axis + (slice(start, start + dim),)] for start in starts], axis)


def maxxvit_attention_trace(self, x: torch.Tensor, shared_rel_pos: torch.Tensor | None = None) -> torch.Tensor:
    """timm MaxViT/CoAtNet ``AttentionCl`` and ``Attention2d`` for the tracer. Their qkv ``view``
    reads to it as a flatten, through which it maps channels again and again (the walk never
    ends), and it infers the widths around a reshape of a 4-d tensor from the layers nearby (a
    Linear on windows ``[batch, h, w, channels]`` reshapes its input to 2-d). So here windows
    are flattened to ``[batch, tokens, channels]`` first, and the values go to the output
    projection as ``value_heads`` has them. The relative position bias is computed, so that its
    MLP's MACs count, but not traced: its per-head parameters are cut with the heads."""
    nchw = isinstance(self.qkv, nn.Conv2d)
    windows = x.shape[:-1]
    qkv = self.qkv(x if nchw else x.flatten(1, -2))
    if self.rel_pos is not None:
        self.rel_pos.get_bias()
    x = self.proj(value_heads(qkv, Layout(self.num_heads, self.dim_head, 3, self.head_first), 1 if nchw else 2))
    return self.proj_drop(x if nchw else x.reshape(*windows, -1))


def rel_pos_head_params(module: nn.Module) -> tuple[tuple[str, int], ...]:
    """The per-head parameters of an attention's relative position bias ``rel_pos`` (MaxViT, GC
    ViT): a table with a column per head (``RelPosBias``), a table with a slice per head first
    (``RelPosBiasTf``), or an MLP with an output per head (``RelPosMlp``)."""
    rel = module.rel_pos
    if rel is None:
        return ()
    if isinstance(rel, RelPosMlp):
        fc2 = rel.mlp.fc2
        return (("rel_pos.mlp.fc2.weight", 0),) + ((("rel_pos.mlp.fc2.bias", 0),) if fc2.bias is not None else ())
    return (("rel_pos.relative_position_bias_table", 0 if isinstance(rel, RelPosBiasTf) else 1),)


def fix_maxxvit_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """timm ``AttentionCl``/``Attention2d``: ``num_heads``, ``dim_head`` and ``scale``, and the
    head count its relative position bias reshapes to (and its MLP's output width)."""
    module.num_heads = len(heads)
    module.dim_head = len(dims)
    rescale_queries(module, len(dims), heads_first=module.head_first)
    if module.rel_pos is not None:
        fix_rel_pos(module.rel_pos, len(heads))


def fix_rel_pos(rel: nn.Module, heads: int) -> None:
    """A timm relative position bias (``RelPosBias``, ``RelPosBiasTf``, ``RelPosMlp``) with ``heads``
    heads: the head count it reshapes to (and its MLP's output width); its tables are cut with the
    heads (``AttentionSpec.head_params``)."""
    if hasattr(rel, "num_heads"):
        rel.num_heads = heads
    if isinstance(rel, RelPosMlp):
        rel.mlp.fc2.out_features = heads
    heads_at = 0 if isinstance(rel, RelPosBiasTf) else -1  # [heads, h, w], else [area, area, heads]
    shape = list(rel.bias_shape)
    shape[heads_at] = heads
    rel.bias_shape = tuple(shape)


QKV = ("q_proj", "k_proj", "v_proj")


def _register_defaults() -> None:
    from timm.layers import attention as timm_attention
    from timm.layers import mlp as timm_mlp

    from timm.models import maxxvit, swin_transformer

    register_attention(timm_attention.Attention, AttentionSpec(qkv="qkv", fixup=fix_timm_attention, fixed=lambda model, m: qk_norm_fixed(m)))
    register_trace_forward(timm_attention.Attention, timm_attention_trace)
    register_attention(
        swin_transformer.WindowAttention,
        AttentionSpec(qkv="qkv", fixup=fix_window_attention, head_params=(("relative_position_bias_table", 1),)),
    )
    register_trace_forward(swin_transformer.PatchMerging, patch_merging_forward)
    register_attention(
        EvaAttention,
        AttentionSpec(qkv="qkv", fixup=fix_eva_attention, separate=QKV, fixed=rotary_fixed, pruned=PrunedEvaAttention),
    )
    register_trace_forward(EvaAttention, eva_attention_trace)
    register_attention(timm_attention.AttentionRope, AttentionSpec(qkv="qkv", fixup=fix_rope_attention, separate=QKV, fixed=rotary_fixed))
    register_trace_forward(timm_attention.AttentionRope, rope_attention_trace)
    register_attention(
        BeitAttention,
        AttentionSpec(qkv="qkv", fixup=fix_beit_attention, head_params=beit_head_params, fixed=beit_fixed, pruned=PrunedBeitAttention),
    )
    register_trace_forward(BeitAttention, beit_attention_trace)
    maxxvit_spec = AttentionSpec(qkv="qkv", fixup=fix_maxxvit_attention, head_params=rel_pos_head_params, heads_first="head_first")
    for cls in (maxxvit.AttentionCl, maxxvit.Attention2d):
        register_attention(cls, maxxvit_spec)
        register_trace_forward(cls, maxxvit_attention_trace)
    from timm.layers import norm as timm_norm

    for name in ("RmsNorm", "RmsNorm2d", "SimpleNorm", "SimpleNorm2d"):
        for cls in (getattr(timm_norm, name, None), getattr(timm_norm, name + "Fp32", None)):
            if cls is not None:
                register_resize(cls, resize_norm)
    if hasattr(nn, "RMSNorm"):
        register_resize(nn.RMSNorm, resize_norm)
    for name in ("Mlp", "SwiGLU", "ConvMlp", "GlobalResponseNormMlp"):
        cls = getattr(timm_mlp, name, None)
        if cls is not None:
            register_mlp(cls)
    register_mlp(timm_mlp.GatedMlp, gated=lambda mlp: None if isinstance(mlp.gate, nn.Identity) else "fc1")  # gMLP's spatial gate halves fc1
    register_mlp(timm_mlp.GluMlp, gated="fc1")
    register_trace_forward(timm_mlp.GluMlp, glu_mlp_trace)

    from . import _zoo

    _zoo.register()


_register_defaults()


def classifier_modules(model: nn.Module) -> list[nn.Module]:
    """The classifier as the model itself declares it (timm ``get_classifier``, DeiT's
    ``head_dist``; torchvision's ``fc``/``classifier``). Outputs of these are never pruned."""
    found: list[nn.Module] = []
    if hasattr(model, "get_classifier"):
        heads = model.get_classifier()
        found += list(heads) if isinstance(heads, (tuple, list)) else [heads]
    for attr in ("head_dist", "fc", "classifier"):
        sub = getattr(model, attr, None)
        if isinstance(sub, nn.Module):
            found.append(sub)
    leaves = []
    for head in found:
        leaves += [m for m in head.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return leaves
