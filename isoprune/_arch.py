"""Architecture knowledge as registries keyed by module type (looked up along the MRO).

Three things the dependency graph cannot tell by itself:
- which modules are multi-head attention, where their fused qkv projection lives, and how to fix
  their attributes after heads or head dims are removed;
- which modules are transformer MLPs (their hidden width is the ``mlp`` kind);
- which modules are the classifier, so it is never pruned at its output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ._errors import IsopruneError


@dataclass(frozen=True)
class AttentionSpec:
    """How one attention type is laid out: ``qkv`` is a Linear whose output is
    ``[3, num_heads, head_dim]`` flattened; ``fixup(module, heads, dims)`` makes the module's
    attributes agree with its pruned weights (``heads``/``dims`` are the kept indices)."""

    qkv: str
    fixup: Callable[[nn.Module, list[int], list[int]], None]

    def layout(self, module: nn.Module) -> tuple[int, int]:
        return int(module.num_heads), int(module.head_dim)


_ATTENTION: dict[type, AttentionSpec] = {}
_MLP: set[type] = set()


def register_attention(cls: type, spec: AttentionSpec) -> None:
    _ATTENTION[cls] = spec


def register_mlp(cls: type) -> None:
    _MLP.add(cls)


def _lookup(registry, module: nn.Module):
    for cls in type(module).__mro__:
        if cls in registry:
            return registry[cls] if isinstance(registry, dict) else cls
    return None


def attention_spec(module: nn.Module) -> AttentionSpec | None:
    return _lookup(_ATTENTION, module)


def is_mlp(module: nn.Module) -> bool:
    return _lookup(_MLP, module) is not None


def fix_timm_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """timm ``Attention`` keeps ``num_heads``, ``head_dim``, ``attn_dim`` and ``scale`` in step.

    The fused path (``F.scaled_dot_product_attention``) always scales by ``1/sqrt(head_dim)``, so
    after removing head dims we set ``scale`` to the new value and fold the ratio to the old one
    into the query rows: fused and unfused paths then compute exactly what the unpruned model did.
    """
    old_scale = float(module.scale)
    module.num_heads = len(heads)
    module.head_dim = len(dims)
    module.attn_dim = len(heads) * len(dims)
    module.scale = len(dims) ** -0.5
    factor = old_scale / module.scale
    if math.isclose(factor, 1.0):
        return
    if not isinstance(module.q_norm, nn.Identity):
        raise IsopruneError(
            "head-dim pruning of attention with qk-norm is not supported",
            module=type(module).__name__,
            hint="set head_dim ratio to 0 for this model",
        )
    rows = slice(0, module.attn_dim)  # the query block comes first in qkv's output
    with torch.no_grad():
        module.qkv.weight[rows] *= factor
        if module.qkv.bias is not None:
            module.qkv.bias[rows] *= factor


def _register_defaults() -> None:
    from timm.layers import attention as timm_attention
    from timm.layers import mlp as timm_mlp

    register_attention(timm_attention.Attention, AttentionSpec(qkv="qkv", fixup=fix_timm_attention))
    for name in ("Mlp", "GluMlp", "SwiGLU", "GatedMlp", "ConvMlp"):
        cls = getattr(timm_mlp, name, None)
        if cls is not None:
            register_mlp(cls)


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
