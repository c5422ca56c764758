"""Architecture knowledge as registries keyed by module type (looked up along the MRO).

Three things the dependency graph cannot tell by itself:
- which modules are multi-head attention, where their fused qkv projection lives, which of their
  parameters hold one slice per head, and how to fix their attributes after heads or head dims
  are removed;
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
    ``[3, num_heads, head_dim]`` flattened, and the module keeps ``num_heads``. ``head_params`` names
    parameters that hold one slice per head (``(name, dim)``, e.g. Swin's relative position bias
    table); the tracer leaves them out and they are cut with the heads. ``fixup(module, heads, dims)``
    makes the module's other attributes agree with its pruned weights (kept indices)."""

    qkv: str
    fixup: Callable[[nn.Module, list[int], list[int]], None]
    head_params: tuple[tuple[str, int], ...] = ()

    def layout(self, module: nn.Module) -> tuple[int, int]:
        heads = int(module.num_heads)
        return heads, module.get_submodule(self.qkv).out_features // (3 * heads)


_ATTENTION: dict[type, AttentionSpec] = {}
_MLP: set[type] = set()
_TRACE_FORWARD: dict[type, Callable] = {}


def register_attention(cls: type, spec: AttentionSpec) -> None:
    _ATTENTION[cls] = spec


def register_mlp(cls: type) -> None:
    _MLP.add(cls)


def register_trace_forward(cls: type, forward: Callable) -> None:
    """Trace ``cls`` with ``forward`` instead of its own: the same numbers, written with ops whose
    channel mapping the tracer follows (it loses channels through reshape-permute-flatten)."""
    _TRACE_FORWARD[cls] = forward


def _lookup(registry, module: nn.Module):
    for cls in type(module).__mro__:
        if cls in registry:
            return registry[cls] if isinstance(registry, dict) else cls
    return None


def attention_spec(module: nn.Module) -> AttentionSpec | None:
    return _lookup(_ATTENTION, module)


def is_mlp(module: nn.Module) -> bool:
    return _lookup(_MLP, module) is not None


def trace_forward(module: nn.Module) -> Callable | None:
    return _lookup(_TRACE_FORWARD, module)


def head_params(model: nn.Module) -> list[nn.Parameter]:
    """Every per-head parameter of the registered attention modules (kept out of the trace)."""
    found = []
    for m in model.modules():
        spec = attention_spec(m)
        if spec is not None:
            found += [getattr(m, name) for name, _ in spec.head_params]
    return found


def cut_heads(module: nn.Module, spec: AttentionSpec, heads: list[int]) -> None:
    """Keep only the ``heads`` slices of the module's per-head parameters."""
    for name, dim in spec.head_params:
        param = getattr(module, name)
        if param.shape[dim] == len(heads):
            continue
        kept = param.data.index_select(dim, torch.as_tensor(heads, device=param.device))
        setattr(module, name, nn.Parameter(kept.contiguous(), requires_grad=param.requires_grad))


def _rescale_queries(module: nn.Module, qkv: nn.Linear, old_scale: float, head_dim: int) -> None:
    """The fused path (``F.scaled_dot_product_attention``) always scales by ``1/sqrt(head_dim)``, so
    after removing head dims we set ``scale`` to the new value and fold the ratio to the old one
    into the query rows: fused and unfused paths then compute exactly what the unpruned model did."""
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
    rows = slice(0, qkv.out_features // 3)  # the query block comes first in qkv's output
    with torch.no_grad():
        qkv.weight[rows] *= factor
        if qkv.bias is not None:
            qkv.bias[rows] *= factor


def fix_timm_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """timm ``Attention`` keeps ``num_heads``, ``head_dim``, ``attn_dim`` and ``scale`` in step."""
    old_scale = float(module.scale)
    module.num_heads = len(heads)
    module.head_dim = len(dims)
    module.attn_dim = len(heads) * len(dims)
    _rescale_queries(module, module.qkv, old_scale, len(dims))


def fix_window_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """timm Swin ``WindowAttention``: ``num_heads`` and ``scale``; the head dim is read from qkv."""
    old_scale = float(module.scale)
    module.num_heads = len(heads)
    _rescale_queries(module, module.qkv, old_scale, len(dims))


def patch_merging_forward(self, x: torch.Tensor) -> torch.Tensor:
    """timm Swin ``PatchMerging`` as a concatenation of the four 2x2 neighbours, in the order its
    reshape-permute-flatten lays them out (``[w, h, C]``, channels innermost), so the tracer maps
    channel ``c`` of the input to ``c, C+c, 2C+c, 3C+c`` of the norm and the reduction. The tracer
    takes dim 1 of a 4-d tensor for channels, so the slicing and concatenation run channels-first."""
    _, height, width, _ = x.shape
    x = nn.functional.pad(x, (0, 0, 0, width % 2, 0, height % 2)).permute(0, 3, 1, 2)
    x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], dim=1)
    return self.reduction(self.norm(x.permute(0, 2, 3, 1)))


def _register_defaults() -> None:
    from timm.layers import attention as timm_attention
    from timm.layers import mlp as timm_mlp

    from timm.models import swin_transformer

    register_attention(timm_attention.Attention, AttentionSpec(qkv="qkv", fixup=fix_timm_attention))
    register_attention(
        swin_transformer.WindowAttention,
        AttentionSpec(qkv="qkv", fixup=fix_window_attention, head_params=(("relative_position_bias_table", 1),)),
    )
    register_trace_forward(swin_transformer.PatchMerging, patch_merging_forward)
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
