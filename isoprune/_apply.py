"""Applying a plan: the one place a model is mutated."""
from __future__ import annotations

import weakref
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from . import _arch, _trace
from ._errors import IsopruneError, on_command_line
from ._depth import DepthPlan, apply_depth, check_depth, inside
from ._groups import Analysis, Op, analyse, cut_ops, removed_outputs, run_ops, unit_channels
from ._importance import member_tensors
from ._plan import PruningPlan, plan


def _removed(analysis: Analysis, pruning: PruningPlan) -> dict[int, list[int]]:
    """Root-channel indices to remove, per Torch-Pruning group of the analysis. A traced group
    holds one group's units, an attention's heads and head dims, or both (a parallel block's MLP
    hidden units and its attention)."""
    by_source: dict[int, dict] = {}
    for g in pruning.groups:
        by_source.setdefault(analysis.source[g.id], {})[g.kind] = g
    removed = {}
    for src, kinds in by_source.items():
        drop = []
        if "heads" in kinds:
            heads, dims = kinds.pop("heads"), kinds.pop("head_dim")
            gone = torch.ones(heads.channels, dims.channels, dtype=torch.bool)
            gone[torch.as_tensor(heads.keep, dtype=torch.long)[:, None], torch.as_tensor(dims.keep, dtype=torch.long)] = False
            drop = analysis.attention[heads.owner].channels()[:, gone].flatten().tolist()
        for g in kinds.values():
            kept = set(g.keep)
            drop += unit_channels(g.channels, g.blocks, [u for u in range(g.channels) if u not in kept], g.offset)
        if drop:
            removed[src] = sorted(drop)
    return removed


def _attention_kept(pruning: PruningPlan) -> dict[str, dict[str, list[int]]]:
    """The heads and head dims kept by every attention module the plan cuts, by owner."""
    attention: dict[str, dict] = {}
    for g in pruning.groups:
        if g.kind in ("heads", "head_dim") and len(g.keep) < g.channels:
            attention.setdefault(g.owner, {})
    for g in pruning.groups:
        if g.owner in attention:
            attention[g.owner][g.kind] = g.keep
    return attention


def _fixup(model: nn.Module, pruning: PruningPlan, ops: list[Op]) -> None:
    """Settle the cut model and fix up every attention module whose heads it cut. A group of heads
    has one owner, but several attentions may be in it (CoaT's blocks of a stage, coupled by a
    position encoding they share): the others lost the same output channels of their first
    projection as the owner did, and keep what it keeps."""
    removed = removed_outputs(ops)
    _arch.settle(model, removed)
    kept = _attention_kept(pruning)
    attentions = {name: (m, spec) for name, m in model.named_modules() if (spec := _arch.attention_spec(m)) is not None}
    cut = {name: tuple(removed.get(f"{name}.{spec.projections(m)[0]}", ())) for name, (m, spec) in attentions.items()}
    by_cut = {(type(attentions[owner][0]), cut[owner]): keep for owner, keep in kept.items()}
    for name, (module, spec) in attentions.items():
        keep = kept.get(name) or (by_cut.get((type(module), cut[name])) if cut[name] else None)
        if keep is not None:
            _arch.cut_heads(module, spec, keep["heads"])
            spec.fixup(module, keep["heads"], keep["head_dim"])


def _feature_width(model: nn.Module) -> int | None:
    """The width of the features a timm model hands its classifier (None where it cannot tell)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Linear):
        return head.in_features
    if isinstance(head, nn.modules.conv._ConvNd):
        return head.in_channels
    norm = next((m for m in (getattr(model, "fc_norm", None), getattr(model, "norm", None)) if isinstance(m, nn.LayerNorm)), None)
    return norm.normalized_shape[0] if norm is not None else None


def _fix_feature_width(model: nn.Module, before: int | None) -> None:
    """timm models remember their feature width (``num_features``, ``embed_dim``...), and
    ``reset_classifier`` and the DINO head build on it: set it to the pruned width."""
    head = getattr(model, "head", None)  # timm's classifier heads keep their own widths
    spec = _arch.attention_spec(head) if isinstance(head, nn.Module) else None
    if spec is not None:  # an attention pool as the head (CLIP's ResNets): it takes the features in, its fixup set its own width
        features = head.get_submodule(spec.projections(head)[0]).in_features
        for owner, attr, width in ((model, "num_features", features), (head, "in_features", features),
                                   (model, "head_hidden_size", getattr(head, "embed_dim", None))):
            if width is not None and hasattr(owner, attr):
                setattr(owner, attr, width)
        return
    after = _feature_width(model)
    if before is None or after is None or after == before:
        return
    owners = [model] + ([head] if isinstance(head, nn.Module) and not isinstance(head, (nn.Linear, nn.modules.conv._ConvNd)) else [])
    for owner in owners:
        for attr in ("num_features", "head_hidden_size", "embed_dim", "in_features"):
            if getattr(owner, attr, None) == before:
                setattr(owner, attr, after)


def _widths(model: nn.Module) -> dict[str, list[int]]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            out[name] = [m.in_features, m.out_features]
        elif isinstance(m, nn.modules.conv._ConvNd):
            out[name] = [m.in_channels, m.out_channels]
    return out


def _fingerprint(model: nn.Module) -> tuple:
    return tuple((n, tuple(p.shape)) for n, p in model.named_parameters())


def skeleton_apply(analysis: Analysis, draft: PruningPlan, depth_plans=()) -> PruningPlan:
    """Fill in the plan's exact outcome (widths, MACs, params) by pruning a copy of the skeleton.
    Layers of removed blocks have no width after."""
    if not hasattr(analysis, "before"):
        analysis.before = (*analysis.counts, _widths(analysis.skeleton))
    macs_before, params_before, widths_before = analysis.before
    skeleton = _trace.clone(analysis.skeleton)
    ops = cut_ops(analysis.graph, analysis.tp_groups, _removed(analysis, draft))
    run_ops(skeleton, ops)
    _fixup(skeleton, draft, ops)
    widths_after = _widths(skeleton)
    apply_depth(skeleton, depth_plans)
    macs_after, params_after = _trace.count(skeleton, analysis.inputs)  # a copy of our own: counted in place
    result = replace(
        draft,
        widths={n: {"before": w, "after": None if inside(n, depth_plans) else widths_after[n]} for n, w in widths_before.items()},
        macs={"before": macs_before, "after": macs_after},
        params={"before": params_before, "after": params_after},
    )
    result._ops = ops
    return result


def _check_fits(analysis: Analysis, pruning: PruningPlan, model: nn.Module) -> None:
    theirs = [(g.root, g.kind, g.channels, g.blocks, g.offset) for g in pruning.groups]
    ours = [(g.root, g.kind, g.channels, g.blocks, g.offset) for g in analysis.groups]
    if theirs != ours:
        if getattr(model, "isoprune_plan", None) is pruning:
            raise IsopruneError(f"this {type(model).__name__} was pruned by this plan already",
                                hint="apply a plan to a fresh copy of the model it was made for")
        raise IsopruneError(
            f"plan for {pruning.model} does not fit this {type(model).__name__}: {_misfit(theirs, ours)}",
            hint="apply the plan to the model it was made for (a plan made on a saved model: "
                 + ("give that directory as --model)" if on_command_line() else "to isoprune.load of that directory)"),
        )
    for g in pruning.groups:
        if not g.keep or any(not 0 <= k < g.channels for k in g.keep):
            raise IsopruneError("plan keeps no or out-of-range units", group=g.root, kind=g.kind)


def _misfit(theirs: list[tuple], ours: list[tuple]) -> str:
    """The first difference between a plan's groups and a model's (root, kind, channels, blocks,
    offset), in words."""
    for plan_group, model_group in zip(theirs, ours):
        if plan_group == model_group:
            continue
        (root, kind, channels, blocks, _), (here, here_kind, here_channels, here_blocks, _) = plan_group, model_group
        if (root, kind) != (here, here_kind):
            return f"the plan's group {root} ({kind}) is {here} ({here_kind}) here"
        if (channels, blocks) != (here_channels, here_blocks):
            return f"{root} ({kind}) has {here_channels * here_blocks} channels here, {channels * blocks} in the plan"
        return f"{root} ({kind}) is laid out otherwise here"
    return f"the plan has {len(theirs)} groups, this model {len(ours)}"


def _fitted(model: nn.Module, pruning: PruningPlan, example_inputs=None) -> Analysis:
    if example_inputs is None and pruning.input_size:
        example_inputs = _trace.meta_inputs(model, size=pruning.input_size)
    analysis = analyse(model, example_inputs, pruning.labels)
    _check_fits(analysis, pruning, model)
    return analysis


def _plan_ops(model: nn.Module, pruning: PruningPlan, example_inputs=None) -> list[Op]:
    source = getattr(pruning, "_source", None)
    if source is not None and source() is model and pruning._fingerprint == _fingerprint(model):
        return pruning._ops
    analysis = _fitted(model, pruning, example_inputs)
    return cut_ops(analysis.graph, analysis.tp_groups, _removed(analysis, pruning))


@_trace.gc_paused()
def fit(model: nn.Module, pruning: PruningPlan, example_inputs=None) -> PruningPlan:
    """A saved plan checked against ``model`` (an error if it was made for another structure) and
    re-measured on it: widths, MACs and params as this model will have them. The model is not
    touched; ``apply_plan`` on it then reuses this trace."""
    analysis = _fitted(model, pruning, example_inputs)
    depth_plans = [DepthPlan(**d) for d in pruning.depth]
    check_depth(model, depth_plans)
    return remember(skeleton_apply(analysis, pruning, depth_plans), model)


@_trace.gc_paused()
def apply_plan(model: nn.Module, pruning: PruningPlan, example_inputs=None) -> nn.Module:
    """Remove what the plan says, in place, and fix up attention attributes. Returns the model,
    with the plan as ``model.isoprune_plan``; a model pruned before keeps its earlier plans, in
    order, as ``model.isoprune_earlier`` (``save`` records them, ``load`` applies them all). A plan
    that removed nothing (the one a model trained whole is saved with) is not one of them."""
    cut_as(model, pruning, _plan_ops(model, pruning, example_inputs))
    pruning._source = pruning._ops = None  # the model has changed; the cached ops are stale
    previous = getattr(model, "isoprune_plan", None)
    if previous is not None and previous is not pruning and previous.removes_anything():  # pruned before: the plans that rebuild it, in order
        model.isoprune_earlier = [*getattr(model, "isoprune_earlier", []), previous]
    model.isoprune_plan = pruning
    return model


def cut_as(model: nn.Module, pruning: PruningPlan, ops: list[Op]) -> nn.Module:
    """Run the plan's ``ops`` on ``model`` (the model they were found on, or a copy of it), remove
    its blocks, and fix up what the cut leaves behind."""
    depth_plans = [DepthPlan(**d) for d in pruning.depth]
    check_depth(model, depth_plans)  # before anything changes: a misfit leaves the model whole
    width = _feature_width(model)
    with torch.no_grad():
        run_ops(model, ops)
    _fixup(model, pruning, ops)
    _fix_feature_width(model, width)
    apply_depth(model, depth_plans)
    return model


def zero_out(model: nn.Module, pruning: PruningPlan, example_inputs=None) -> nn.Module:
    """Zero, in place, every weight the plan would remove, keeping shapes (a soft preview of
    the width pruning; blocks the plan removes in depth are left as they are).

    Where no normalisation spans the removed channels, the zeroed model computes exactly what the
    pruned one does; LayerNorm over the embedding is the exception (its statistics change). An
    LSTM's removed hidden units are zeroed in every gate and in the recurrence (``member_tensors``):
    they stay at zero and move no other unit.
    """
    ops = _plan_ops(model, pruning, example_inputs)
    with torch.no_grad():
        for op in ops:
            for slot in member_tensors(model, op.name, param=op.param, out=op.out, dim=op.dim):
                _, positions = slot.positions(np.asarray(op.idxs, dtype=np.int64))
                slot.tensor.index_fill_(slot.dim, torch.from_numpy(positions).to(slot.tensor.device), 0.0)
        for owner, keep in _attention_kept(pruning).items():  # and the slices of removed heads
            module = model.get_submodule(owner)
            spec = _arch.attention_spec(module)
            gone = sorted(set(range(spec.heads(module))) - set(keep["heads"]))
            for name, dim in spec.per_head(module) if gone else ():
                param = module.get_parameter(name)
                param.index_fill_(dim, torch.as_tensor(gone, device=param.device), 0.0)
    return model


def remember(pruning: PruningPlan, model: nn.Module) -> PruningPlan:
    """Let ``apply_plan`` reuse the plan's trace when it is applied to this same, unchanged model."""
    pruning._source = weakref.ref(model)
    pruning._fingerprint = _fingerprint(model)
    return pruning


def prune(model: nn.Module, ratios, **kwargs) -> nn.Module:
    """Plan and apply in one step; returns the pruned model (the same object, pruned in place).
    Keyword arguments are those of ``plan``; the plan is kept as ``model.isoprune_plan``."""
    pruning = plan(model, ratios, **kwargs)
    return apply_plan(model, pruning, kwargs.get("example_inputs"))


