"""Depth pruning: removing whole residual blocks from a stage.

The paper's ConvNeXt-T-sized model (4.2G) is ConvNeXt-B narrowed by 25% *and* shortened by 18
blocks of its third stage, the least important ones. A block can go when it maps its input to an
output of the same shape (a residual block without downsampling); the stage's container is then
rebuilt from the blocks that stay. Block importance is the criterion's per-element score averaged
within each parameter tensor, then over the block's tensors, so blocks of any size compare fairly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import _trace
from ._errors import IsopruneError
from ._importance import Importance, element_scores


@dataclass
class DepthPlan:
    """Which children of ``container`` (a Sequential or ModuleList of blocks) stay."""

    container: str
    blocks: int
    keep: list[int]

    @property
    def removed(self) -> list[int]:
        return [i for i in range(self.blocks) if i not in set(self.keep)]


def _container(model: nn.Module, path: str) -> nn.Module:
    try:
        container = model.get_submodule(path)
    except AttributeError:
        container = None
    if not isinstance(container, (nn.Sequential, nn.ModuleList)):
        stacks = [n for n, m in model.named_modules() if isinstance(m, (nn.Sequential, nn.ModuleList)) and len(m) > 2]
        raise IsopruneError(
            f"no block container {path!r} in {type(model).__name__}",
            hint=f"name a Sequential/ModuleList of blocks, e.g. {', '.join(stacks[:4])}",
        )
    return container


def shape_preserving(skeleton: nn.Module, inputs, path: str) -> list[bool]:
    """Per child of the container: does it map its input to an output of the same shape?"""
    container = _container(skeleton, path)
    same: dict[int, bool] = {}

    def hook(index):
        def record(module, args, output):
            ok = bool(args) and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor)
            same[index] = ok and args[0].shape == output.shape

        return record

    handles = [child.register_forward_hook(hook(i)) for i, child in enumerate(container)]
    try:
        with torch.no_grad():
            _trace.forward(skeleton, inputs)
    finally:
        for h in handles:
            h.remove()
    return [same.get(i, False) for i in range(len(container))]


def block_scores(model: nn.Module, path: str, criterion: Importance, stats: dict | None) -> torch.Tensor:
    scores = []
    with torch.no_grad():
        for block in _container(model, path):
            per_tensor = [element_scores(criterion, p, stats).double().mean() for p in block.parameters()]
            scores.append(torch.stack(per_tensor).mean() if per_tensor else torch.tensor(float("inf")))
    return torch.stack(scores).cpu()


def choose_depth(model, skeleton, inputs, depth: dict[str, int], criterion, stats) -> list[DepthPlan]:
    """Keep all but the ``depth[path]`` lowest-scored removable blocks of each container."""
    plans = []
    for path, n_remove in depth.items():
        if not isinstance(n_remove, int) or n_remove < 0:
            raise IsopruneError(f"depth for {path!r} must be a whole number of blocks, not {n_remove!r}")
        removable = shape_preserving(skeleton, inputs, path)
        candidates = [i for i, ok in enumerate(removable) if ok]
        most = len(candidates) - (len(candidates) == len(removable))  # a stage keeps one block
        if n_remove > most:
            raise IsopruneError(
                f"cannot remove {n_remove} block{'s' if n_remove != 1 else ''} from {path}: {len(candidates)} of its {len(removable)} keep their shape",
                hint=f"remove at most {most}",
            )
        scores = block_scores(model, path, criterion, stats)
        ranked = sorted(candidates, key=lambda i: (float(scores[i]), i))
        dropped = set(ranked[:n_remove])
        plans.append(DepthPlan(path, len(removable), [i for i in range(len(removable)) if i not in dropped]))
    return plans


def check_depth(model: nn.Module, plans: list[DepthPlan]) -> None:
    for p in plans:
        container = _container(model, p.container)
        if len(container) != p.blocks or not p.keep or any(not 0 <= i < p.blocks for i in p.keep):
            raise IsopruneError(
                f"{p.container} has {len(container)} blocks; the plan expects {p.blocks} and keeps {p.keep}",
                hint="apply the plan to the unpruned model it was made for",
            )


def apply_depth(model: nn.Module, plans: list[DepthPlan]) -> None:
    """Rebuild each container from the blocks it keeps (children are renumbered from 0)."""
    check_depth(model, plans)
    for p in plans:
        container = _container(model, p.container)
        parent_name, _, attr = p.container.rpartition(".")
        parent = model.get_submodule(parent_name)
        kept = [container[i] for i in p.keep]
        setattr(parent, attr, nn.Sequential(*kept) if isinstance(container, nn.Sequential) else nn.ModuleList(kept))


def inside(name: str, plans: list[DepthPlan]) -> bool:
    """Is ``name`` a layer of a block that the depth plans remove?"""
    return any(name.startswith(f"{p.container}.{i}.") for p in plans for i in p.removed)
