"""Attention and blocks of further timm families, registered with ``_arch``'s registries as
timm's own ``Attention`` and Swin's are:

- attention: CaiT, TNT, PVT-v2, Twins, ConViT, SwinV2-CR, Swin V2, XCiT, DaViT, VOLO, GC ViT,
  MetaFormer, LeViT, EfficientFormer(-V2), TinyViT, Visformer, FastViT, Hiera, NesT, BoTNet, HaloNet, ViT
  with a relative position bias, CrossViT's cross attention, differential attention, timm's
  attention pooling (SigLIP's head, CLIP's ResNets'), ResNeSt's split attention, SKNet's selective kernel, global
  context blocks, CSATv2's spatial attention; FocalNet's modulation; multi-query attention
  (MobileNetV4's and V5's); EfficientViT's attention (MIT's multi-scale linear attention, MSRA's
  cascaded group attention); MViTv2's pooling attention; Gemma-4's vision tower; iFormer's and
  SHViT's single-head attention; CoaT's factorized attention, with its position encoding shared by
  a stage's blocks; EfficientViM's hidden-state mixer (its state dims a kind of channel); the
  LambdaResNets' lambda layers;
- blocks that split their channels at the widths they were built with: InceptionNeXt, MambaOut,
  Res2Net (and DLA's), ReXNet, DPN, FasterNet, MixNet, CSPNet;
- timm's blur pooling, ECA's gate, EvoNorm's sample variants, Qwen3-VL's projector, and the
  token-mixing blocks of MLP-Mixer, ResMLP and gMLP.

Each attention gets a ``Pruned`` subclass that a module becomes once its model is pruned: the
same module, with a forward that follows its widths (timm's reshapes to the input's width, which
holds only while nothing is pruned). The pruned forwards apply the module's ``scale`` as it was
built, so removing head dims changes nothing else. Where the tracer cannot follow an attention's
reshapes, or per-head parameters would join its trace, a trace forward tells it how channels flow.
"""
from __future__ import annotations

import math
from functools import partial, partialmethod

import torch
import torch.nn.functional as F
from timm.models import (
    cait, coat, convit, cpubone, crossvit, cspnet, davit, deepseek_vit, dla, dpn, edgenext, efficientformer, efficientformer_v2, efficientvim,
    efficientvit_mit, efficientvit_msra,
    fasternet, fastvit, focalnet, gcvit, gemma4_vit, hiera, hieradet_sam2, iformer, inception_next, levit, lowformer, mambaout, metaformer,
    mlp_mixer, mobilevit, mvitv2, nest, nextvit, pvt_v2, qwen3_vit, res2net, rexnet, sequencer, shvit, tiny_vit, tnt, twins, visformer, volo, xcit,
)
from timm.layers import (
    CondConv2d, attention2d, attention_pool, attention_pool2d, blur_pool, bottleneck_attn, conv2d_same, diff_attention, eca, evo_norm, global_context,
    halo_attn, lambda_layer, mixed_conv2d, non_local_attn, resample_abs_pos_embed, selective_kernel, split_attn,
)
from timm.models import swin_transformer_v2 as swinv2
from timm.models import swin_transformer_v2_cr as swin_cr
from timm.models import vision_transformer, vision_transformer_relpos, vision_transformer_sam
from timm.models.csatv2 import SpatialAttention as CsatSpatialAttention  # timm.models.csatv2 is the model's entry point
from torch import nn
from torch_pruning.pruner import function

from ._arch import (
    AttentionSpec, Layout, attend, concat_channels, cut_qkv_biases, fix_rel_pos, fix_timm_attention, fix_window_attention, flatten_channels, fused_qkv,
    held, mix_tokens, patch_merging_forward, post_norm_patch_merging_forward, project, qk_norm_fixed, register_attention, register_mlp,
    register_pruned, register_resize, register_runs, register_trace_forward, rel_pos_head_params, rescale_queries, root_first, rotary_fixed,
    split_channels, split_heads, value_heads,
)
from ._cut import cut_module


def qkv_attention_forward(self, x: torch.Tensor) -> torch.Tensor:
    """A pruned attention with a fused qkv (ConViT's ``MHSA``, DaViT's ``WindowAttention``)."""
    q, k, v = split_heads(self.qkv(x), self.num_heads, 3)
    return project(self, attend(self, q, k, v).transpose(1, 2).flatten(2))


def qkv_values_trace(self, x: torch.Tensor, *args) -> torch.Tensor:
    """An attention with a fused qkv on ``[batch, tokens, channels]``, for the tracer: the values
    go to the output projection as ``value_heads`` has them."""
    return project(self, _values(self, self.qkv(x)))


def _values(self, qkv: torch.Tensor) -> torch.Tensor:
    """The values of a fused ``[batch, tokens, 3 * channels]`` qkv, as ``value_heads`` has them."""
    return value_heads(qkv, Layout(self.num_heads, qkv.shape[-1] // (3 * self.num_heads), 3), 2)


def fix_num_heads(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """``num_heads``: all the module keeps of its widths (its forward reads the rest from its layers)."""
    module.num_heads = len(heads)


def fix_head_dims(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """``num_heads`` and ``head_dim``; ``scale`` stays as built (the pruned forward applies it)."""
    module.num_heads, module.head_dim = len(heads), len(dims)


def fix_scaled_head_dims(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """``num_heads`` and ``head_dim``, which timm's forward reshapes to (Visformer, SAM's ViT), and
    ``scale`` (``rescale_queries``: timm's fused path scales by the head dim it finds)."""
    fix_head_dims(module, heads, dims)
    rescale_queries(module, len(dims))


# CaiT: talking heads in the self-attention blocks, class attention in the last ones


def talking_head_attention_forward(self, x: torch.Tensor) -> torch.Tensor:
    """A pruned CaiT ``TalkingHeadAttn``'s forward."""
    q, k, v = split_heads(self.qkv(x), self.num_heads, 3)
    attn = (q * self.scale) @ k.transpose(-2, -1)
    attn = self.proj_l(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).softmax(dim=-1)
    attn = self.attn_drop(self.proj_w(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    return project(self, (attn @ v).transpose(1, 2).flatten(2))


def talking_head_attention_trace(self, x: torch.Tensor) -> torch.Tensor:
    """CaiT ``TalkingHeadAttn`` for the tracer (``qkv_values_trace``). The talking-heads layers
    (``proj_l`` before the softmax, ``proj_w`` after it) mix the heads' attention maps, not
    channels: they run on a stand-in map, so that their MACs count, and are cut with the heads."""
    batch, tokens, _ = x.shape
    self.proj_w(self.proj_l(x.new_zeros(batch, tokens, tokens, self.num_heads)))
    return qkv_values_trace(self, x)


def fix_talking_head_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """CaiT ``TalkingHeadAttn``: ``num_heads`` and the talking-heads layers' widths."""
    fix_num_heads(module, heads, dims)
    for layer in (module.proj_l, module.proj_w):
        layer.in_features = layer.out_features = len(heads)


TALKING_HEADS = tuple((f"{layer}.{param}", dim) for layer in ("proj_l", "proj_w") for param, dim in (("weight", 0), ("weight", 1), ("bias", 0)))
"""The per-head parameters of CaiT's ``TalkingHeadAttn``: each talking-heads layer maps heads to heads."""


def class_attention_forward(self, x: torch.Tensor, names: tuple[str, str, str] = ("q", "k", "v")) -> torch.Tensor:
    """A pruned CaiT ``ClassAttn``'s forward (and CrossViT's ``CrossAttention``'s, whose query,
    key and value layers are ``names``): the class token attends to every token."""
    q, k, v = (self.get_submodule(name) for name in names)
    q, k, v = (split_heads(t, self.num_heads) for t in (q(x[:, :1]), k(x), v(x)))
    return project(self, attend(self, q, k, v).transpose(1, 2).flatten(2))


def class_attention_trace(self, x: torch.Tensor, names: tuple[str, str, str] = ("q", "k", "v")) -> torch.Tensor:
    """CaiT ``ClassAttn`` (and CrossViT's ``CrossAttention``) for the tracer: the class token's
    query, every token's key and value, each projection run on what timm runs it on, so that its
    MACs count. The query and key of a head dim go with its value (a head dim is removed from all
    three), so the three are added channel by channel into the output projection: the coupling
    the tracer needs, without the reshapes it cannot follow."""
    q, k, v = (self.get_submodule(name) for name in names)
    return project(self, (q(x[:, 0]) + k(x)[:, 0] + v(x)[:, 0]).unsqueeze(1))


class PrunedTalkingHeadAttn(cait.TalkingHeadAttn):
    forward = talking_head_attention_forward


class PrunedClassAttn(cait.ClassAttn):
    forward = class_attention_forward


CROSS_ATTENTION = ("wq", "wk", "wv")
"""CrossViT's ``CrossAttention``: CaiT's class attention, across its two branches' tokens."""


class PrunedCrossAttention(crossvit.CrossAttention):
    forward = partialmethod(class_attention_forward, names=CROSS_ATTENTION)


# TNT


def _tnt_patches(pixel_embed: torch.Tensor, batch: int, patches: int) -> torch.Tensor:
    """TNT's pixel embedding ``[batch * patches, pixels, channels]`` as ``[batch, patches, pixels *
    channels]``, pixel-major as timm's reshape lays it, written as a concatenation of channels: the
    tracer mapped a pixel channel through the reshape onto one of the patch projection's inputs,
    not one a pixel, and left the pixel embedding whole."""
    return concat_channels([pixel_embed[:, i] for i in range(pixel_embed.shape[1])], -1).reshape(batch, patches, -1)


def tnt_trace(self, x: torch.Tensor) -> torch.Tensor:
    """timm ``TNT`` for the tracer: its own forward, the patches projected from ``_tnt_patches``."""
    batch = x.shape[0]
    pixel_embed = self.pixel_embed(x, self.pixel_pos)
    patch_embed = self.norm2_proj(self.proj(self.norm1_proj(_tnt_patches(pixel_embed, batch, self.num_patches))))
    patch_embed = self.pos_drop(torch.cat((self.cls_token.expand(batch, -1, -1), patch_embed), dim=1) + self.patch_pos)
    for block in self.blocks:
        pixel_embed, patch_embed = block(pixel_embed, patch_embed)
    return self.forward_head(self.norm(patch_embed))


def tnt_block_trace(self, pixel_embed: torch.Tensor, patch_embed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm TNT ``Block`` for the tracer: its own computation, with the pixel embedding's
    projection added to every patch token but the class token by padding it with a zero token in
    front, where timm concatenates the class token and the sum along the tokens (the tracer reads
    a concatenation on the second axis as one of channels, and cannot tell their widths). The
    patches are projected from ``_tnt_patches``."""
    pixel_embed = pixel_embed + self.attn_in(self.norm_in(pixel_embed))
    pixel_embed = pixel_embed + self.mlp_in(self.norm_mlp_in(pixel_embed))
    batch, tokens, _ = patch_embed.shape
    if self.norm2_proj is None:
        inner = self.proj(_tnt_patches(self.norm1_proj(pixel_embed), batch, tokens - 1))
    else:
        inner = self.norm2_proj(self.proj(self.norm1_proj(_tnt_patches(pixel_embed, batch, tokens - 1))))
    patch_embed = patch_embed + F.pad(inner, (0, 0, 1, 0))
    patch_embed = patch_embed + self.attn_out(self.norm_out(patch_embed))
    return pixel_embed, patch_embed + self.mlp(self.norm_mlp(patch_embed))


def tnt_attention_trace(self, x: torch.Tensor) -> torch.Tensor:
    """timm TNT ``Attention`` (inner and outer) for the tracer: as ConViT's ``GPSA`` (``gpsa_trace``),
    queries and keys (``qk``) added channel by channel to the values into the output projection.
    timm's forward reads its head dim from ``head_dim`` and its scale from ``scale``, which stay
    in step with its layers once ``fix_head_dims`` has set them."""
    qk, v = self.qk(x), self.v(x)
    width = v.shape[-1]
    return project(self, qk[..., :width] + qk[..., width:] + v)


def resize_pixel_embed(module: nn.Module, cut) -> None:
    """TNT's ``PixelEmbed`` reshapes to the pixel embedding's width (``in_dim``): its convolution's."""
    module.in_dim = module.proj.out_channels


# PVT-v2 and Twins: keys and values from a spatially reduced map; Twins' attention within windows


def _reduced_tokens(self, x: torch.Tensor, size) -> torch.Tensor:
    """The tokens keys and values are computed from in PVT-v2's and Twins' spatial-reduction
    attention: ``x`` itself, or ``x`` as a feature map (average pooled, for PVT-v2's linear
    attention), reduced by a strided convolution, normalised (and activated, linear attention)."""
    if self.sr is None:
        return x
    batch, _, channels = x.shape
    x = x.permute(0, 2, 1).reshape(batch, channels, *size)
    pool, act = getattr(self, "pool", None), getattr(self, "act", None)
    x = self.norm(self.sr(x if pool is None else pool(x)).flatten(2).permute(0, 2, 1))  # as wide as sr's output
    return x if act is None else act(x)


def _query_kv_attention(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Attention with a ``q`` projection of ``queries`` and a fused ``kv`` of ``keys``."""
    q = split_heads(self.q(queries), self.num_heads)
    k, v = split_heads(self.kv(keys), self.num_heads, 2)
    return project(self, attend(self, q, k, v).transpose(1, 2).flatten(2))


def _query_kv_trace(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """For the tracer: ``q``'s channels and the keys' and values' halves of ``kv``, token for
    token, added channel by channel into the output projection (see ``class_attention_trace``)."""
    width = q.shape[-1]
    return project(self, q + kv[..., :width] + kv[..., width:])


def reduction_attention_forward(self, x: torch.Tensor, size) -> torch.Tensor:
    """A pruned spatial-reduction attention's forward (PVT-v2 ``Attention``, Twins ``GlobalSubSampleAttn``)."""
    return _query_kv_attention(self, x, _reduced_tokens(self, x, size))


def reduction_attention_trace(self, x: torch.Tensor, size) -> torch.Tensor:
    """A spatial-reduction attention for the tracer: each projection run on what timm runs it
    on, and the queries, keys and values of a head dim added channel by channel into the output
    projection (see ``class_attention_trace``); keys and values of the first reduced token only,
    since the reduction leaves fewer tokens than there are queries."""
    return _query_kv_trace(self, self.q(x), self.kv(_reduced_tokens(self, x, size))[:, :1])


def fix_reduction_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """PVT-v2 ``Attention``, Twins ``GlobalSubSampleAttn``: ``num_heads`` (and PVT-v2's ``head_dim``)."""
    fix_num_heads(module, heads, dims)
    if hasattr(module, "head_dim"):
        module.head_dim = len(dims)


def _padded_size(self, size) -> tuple[int, int]:
    """Twins ``LocallyGroupedAttn``'s map's height and width, padded to whole windows of ``ws x ws``."""
    return tuple(-(-side // self.ws) * self.ws for side in size)


def locally_grouped_attention_trace(self, x: torch.Tensor, size) -> torch.Tensor:
    """Twins ``LocallyGroupedAttn`` for the tracer: ``qkv_values_trace`` with ``qkv`` run over as
    many tokens as the padded map holds, as the forward runs it (the counter counts tokens, not
    where they lie), and the output projection over the map's own."""
    height, width = _padded_size(self, size)
    padded = F.pad(x, (0, 0, 0, height * width - x.shape[1]))
    return project(self, _values(self, self.qkv(padded))[:, : x.shape[1]])


def locally_grouped_attention_forward(self, x: torch.Tensor, size) -> torch.Tensor:
    """A pruned Twins ``LocallyGroupedAttn``'s forward: attention within windows of ``ws x ws``
    tokens (the map zero-padded to whole windows)."""
    batch, tokens, channels = x.shape
    height, width = size
    ws = self.ws
    padded_height, padded_width = _padded_size(self, size)
    x = F.pad(x.view(batch, height, width, channels), (0, 0, 0, padded_width - width, 0, padded_height - height))
    rows, cols = padded_height // ws, padded_width // ws
    x = x.reshape(batch, rows, ws, cols, ws, channels).transpose(2, 3)
    q, k, v = self.qkv(x).reshape(batch, rows * cols, ws * ws, 3, self.num_heads, -1).permute(3, 0, 1, 4, 2, 5)
    x = attend(self, q, k, v).transpose(2, 3).reshape(batch, rows, cols, ws, ws, -1)
    x = x.transpose(2, 3).reshape(batch, rows * ws, cols * ws, -1)
    return project(self, x[:, :height, :width].reshape(batch, tokens, -1))


class PrunedPvtAttention(pvt_v2.Attention):
    forward = reduction_attention_forward


class PrunedGlobalSubSampleAttn(twins.GlobalSubSampleAttn):
    forward = reduction_attention_forward


class PrunedLocallyGroupedAttn(twins.LocallyGroupedAttn):
    forward = locally_grouped_attention_forward


# Differential attention (timm's ``DiffAttention``, ViT ``attn_layer='diff'``): each head's query and
# key are two half-width sub-heads, whose attention maps are subtracted (weighed by a learnt lambda)
# before they weigh the head's values, which are as wide as both halves


def _differential(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask, is_causal: bool) -> torch.Tensor:
    """Differential attention ``[batch, heads, tokens, 2 * head_dim]`` from queries and keys
    ``[batch, 2 * heads, tokens, head_dim]`` (a head's two sub-heads side by side) and values
    ``[batch, heads, tokens, 2 * head_dim]``, as timm computes it (the fused path)."""
    q, k = self.q_norm(q), self.k_norm(k)
    batch, _, tokens, dim = q.shape
    q, k = (t.reshape(batch, -1, 2, tokens, dim).unbind(2) for t in (q, k))
    dropout = self.attn_drop_p if self.training else 0.0
    first, second = (F.scaled_dot_product_attention(q[i], k[i], v, attn_mask=attn_mask, dropout_p=dropout, is_causal=is_causal) for i in (0, 1))
    return self.sub_norm(first - self._compute_lambda().type_as(first) * second) * (1 - self.lambda_init)


def diff_attention_forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
    """A pruned ``DiffAttention``'s forward: timm's, with its output as wide as its heads (timm
    reshapes it to the input's width)."""
    batch, tokens, _ = x.shape
    q, k, v = self.qkv(x).chunk(3, dim=2)
    q, k = (t.reshape(batch, tokens, 2 * self.num_heads, -1).transpose(1, 2) for t in (q, k))
    v = v.reshape(batch, tokens, self.num_heads, -1).transpose(1, 2)
    x = _differential(self, q, k, v, attn_mask, is_causal).transpose(1, 2).flatten(2)
    return project(self, self.norm(x))


def diff_attention_trace(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``DiffAttention`` for the tracer: a head's values (as wide as its two sub-heads) go to the
    output projection through its optional norm, as ``value_heads`` has them; its sub-norm and
    lambdas are over head dims, which stay (``diff_attention_fixed``)."""
    qkv = self.qkv(x)
    return project(self, self.norm(value_heads(qkv, Layout(self.num_heads, qkv.shape[-1] // (3 * self.num_heads), 3), 2)))


def diff_attention_fixed(model: nn.Module, module: nn.Module) -> dict[str, str]:
    return {"head_dim": "differential attention normalises each head over its head dims and weighs its sub-heads with lambdas over them"}


class PrunedDiffAttention(diff_attention.DiffAttention):
    forward = diff_attention_forward


# ViT with a relative position bias (vit_relpos): timm's attention, plus a bias per head from
# its own table or MLP, or one the model shares across blocks (vit_srelpos)


def rel_pos_attention_forward(self, x: torch.Tensor, shared_rel_pos: torch.Tensor | None = None) -> torch.Tensor:
    """A pruned ``RelPosAttention``'s forward."""
    q, k, v = split_heads(self.qkv(x), self.num_heads, 3)
    bias = self.rel_pos.get_bias() if self.rel_pos is not None else shared_rel_pos
    return project(self, attend(self, self.q_norm(q), self.k_norm(k), v, bias).transpose(1, 2).flatten(2))


def rel_pos_attention_trace(self, x: torch.Tensor, shared_rel_pos: torch.Tensor | None = None) -> torch.Tensor:
    """``RelPosAttention`` for the tracer (``qkv_values_trace``): the bias is computed, so that
    its MLP's MACs count, but not traced; its per-head parameters are cut with the heads."""
    if self.rel_pos is not None:
        self.rel_pos.get_bias()
    return qkv_values_trace(self, x)


def fix_rel_pos_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    fix_timm_attention(module, heads, dims)
    if module.rel_pos is not None:
        fix_rel_pos(module.rel_pos, len(heads))


def rel_pos_attention_fixed(model: nn.Module, module: nn.Module) -> dict[str, str]:
    fixed = qk_norm_fixed(module)
    if module.rel_pos is None and getattr(model, "shared_rel_pos", None) is not None:
        fixed["heads"] = "the model shares one relative position bias per head across its blocks"
    return fixed


class PrunedRelPosAttention(vision_transformer_relpos.RelPosAttention):
    forward = rel_pos_attention_forward


# SAM's ViT and SAM 2's Hiera: attention on a map ``[batch, height, width, channels]`` (SAM's with
# relative position tables over head dims); timm's forwards read their widths from their layers,
# but ``num_heads`` and the scale


def map_attention_values_trace(self, x: torch.Tensor) -> torch.Tensor:
    """SAM ViT's ``Attention`` and SAM 2's ``MultiScaleAttention`` for the tracer: their values
    (``value_heads``), max-pooled on the map where SAM 2 pools its queries (the tokens it answers),
    each channel on its own. The tracer does not follow SAM 2's reshapes of the heads on the map,
    and left every qkv whole; SAM's relative position tables (``[positions, head_dim]``) join the
    queries through timm's einsum, and would join the qkv's group."""
    batch, height, width, _ = x.shape
    heads = self.num_heads
    v = value_heads(self.qkv(x.reshape(batch, height * width, -1)), Layout(heads, self.qkv.out_features // (3 * heads), 3), 2)
    if getattr(self, "q_pool", None) is not None:
        v = self.q_pool(v.transpose(1, 2).reshape(batch, -1, height, width))
        height, width = v.shape[2:]
        v = v.flatten(2).transpose(1, 2)
    return project(self, v).view(batch, height, width, -1)


def sam_attention_fixed(model: nn.Module, module: nn.Module) -> dict[str, str]:
    if module.use_rel_pos:
        return {"head_dim": "the relative position tables hold head dims"}
    return rotary_fixed(model, module)


def fix_multiscale_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """``num_heads``, ``dim_out`` and ``scale`` (``rescale_queries``); timm's forward reads the rest
    from its layers."""
    module.num_heads, module.dim_out = len(heads), len(heads) * len(dims)
    rescale_queries(module, len(dims))


# MViTv2: attention whose queries, keys and values are pooled (a depthwise convolution, shared by
# every head, then a norm, over head dims) before they attend, with a relative position table over
# head dims; its output has as many tokens as its pooled queries


def multiscale_vit_attention_trace(self, x: torch.Tensor, feat_size) -> torch.Tensor:
    """MViTv2's ``MultiScaleAttention`` for the tracer: each head's values (``value_heads``) into
    the output projection, at as many tokens as the pooled queries. The pooling layers, which hold
    head dims and no head, run on stand-ins of what timm hands them (every head's ``[head_dim,
    height, width]`` map), so that their MACs count and no group holds them (nor their norms). The
    tracer mapped channels through timm's reshapes onto ones the pooling lacks, and left every
    attention whole. Unshared pooling (over all channels: no timm config builds it): timm's own."""
    if self.unshared:
        return type(self).forward(self, x, feat_size)
    batch, heads, head_dim = x.shape[0], self.num_heads, self.head_dim
    stand_in = x.new_zeros(batch * heads, head_dim, *feat_size)
    sizes = [list(feat_size if pool is None else pool(stand_in).shape[2:]) for pool in (self.pool_q, self.pool_k, self.pool_v)]
    values = value_heads(self.qkv(x), Layout(heads, head_dim, 3), 2)
    return self.proj(values[:, : self.has_cls_token + sizes[0][0] * sizes[0][1]]), sizes[0]


def mvit_fixed(model: nn.Module, module: nn.Module) -> dict[str, str]:
    return {"head_dim": "its pooling convolutions, norms and relative position tables are over head dims, shared by every head"}


# Gemma-4's vision tower: attention with separate query, key and value layers (each in a wrapper
# that may clamp), queries and keys normalised over head dims and rotated by a 2-d RoPE


def gemma4_attention_trace(self, x: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Gemma-4's attention for the tracer: each query and key channel added to its value channel,
    into the output projection (the RoPE and norms move no channel between heads). The tracer
    could not follow the RoPE's split halves, and no Gemma-4 model traced. Where keys and values
    are shared by several queries' heads (no timm config does that): timm's own forward."""
    if self.num_kv_heads != self.num_heads:
        return type(self).forward(self, x, rope_cos, rope_sin, attn_mask)
    return self.proj_drop(self.o_proj(self.q_proj(x) + self.k_proj(x) + self.v_proj(x)))


def fix_gemma4_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """``num_heads`` and ``head_dim``, which timm's forward reshapes to, and ``num_kv_heads`` where
    each head has its own keys and values."""
    if module.num_kv_heads == module.num_heads:
        module.num_kv_heads = len(heads)
    fix_head_dims(module, heads, dims)


def gemma4_attention_fixed(model: nn.Module, module: nn.Module) -> dict[str, str]:
    fixed = {"head_dim": "its queries and keys are rotated and normalised over head dims"}
    if module.num_kv_heads != module.num_heads:
        fixed["heads"] = "its keys and values are shared by several queries' heads"
    return fixed


# Hiera: attention within mask units (or global), its queries max-pooled over ``q_stride`` tokens;
# its head count is ``heads``; the tracer follows timm's forward, which reshapes to ``dim_out``


def fix_mask_unit_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """Hiera ``MaskUnitAttention``: ``heads``, ``head_dim`` and ``dim_out``, which its forward
    reshapes to, and ``scale`` (``rescale_queries``)."""
    module.heads, module.head_dim, module.dim_out = len(heads), len(dims), len(heads) * len(dims)
    rescale_queries(module, len(dims))


# timm's attention pooling (SigLIP's and PE's MAP head): a learnt latent query attends to the tokens


def latent_attention_pool_forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """A pruned timm ``AttentionPoolLatent``'s forward (timm reshapes the attention's output to its
    input's width). The tracer follows timm's own."""
    if self.pos_embed is not None:
        x = x + self.pos_embed.unsqueeze(0).to(x.dtype)
    k, v = split_heads(self.kv(x), self.num_heads, 2)
    q, k = self.q_norm(split_heads(self.q(self.latent.expand(x.shape[0], -1, -1)), self.num_heads)), self.k_norm(k)
    x = project(self, attend(self, q, k, v, attn_mask).transpose(1, 2).flatten(2))
    if self.mlp is not None:
        x = x + self.mlp(self.norm(x))
    if self.pool == "token":
        return x[:, 0]
    return x.mean(1) if self.pool == "avg" else x


class PrunedAttentionPoolLatent(attention_pool.AttentionPoolLatent):
    forward = latent_attention_pool_forward


def latent_pool_fixed(model: nn.Module, module: nn.Module) -> dict[str, str]:
    if not isinstance(module.q, nn.Linear):
        return dict.fromkeys(("heads", "head_dim"), "its latent is its query, with no query layer")
    return qk_norm_fixed(module)


def attention_pool_2d_forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
    """A pruned timm ``AttentionPool2d``'s forward (CLIP's ResNets pool their map with it; timm
    reshapes its projections to the head dim it was built with). The tracer follows timm's own."""
    batch, _, height, width = x.shape
    x = x.flatten(2).transpose(1, 2)
    first = x.mean(1, keepdim=True) if self.cls_token is None else self.cls_token.expand(batch, -1, -1)
    pos_embed = resample_abs_pos_embed(self.pos_embed.unsqueeze(0), (height, width), old_size=self.feat_size, num_prefix_tokens=1)
    x = torch.cat([first, x], dim=1) + pos_embed
    if self.qkv is None:
        q, k, v = (split_heads(layer(x), self.num_heads) for layer in (self.q, self.k, self.v))
    else:
        q, k, v = split_heads(self.qkv(x), self.num_heads, 3)
    x = self.drop(attend(self, q, k, v).transpose(1, 2).flatten(2))
    return self._pool(x if pre_logits else self.proj(x), height, width)


class PrunedAttentionPool2d(attention_pool2d.AttentionPool2d):
    forward = attention_pool_2d_forward


def fix_attention_pool_2d(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """``fix_head_dims``, and the width of the attention's output, which ``reset`` builds a new
    classifier for (and which is the pool's output where it has no projection)."""
    fix_head_dims(module, heads, dims)
    module.embed_dim = len(heads) * len(dims)
    if isinstance(module.proj, nn.Identity):
        module.out_features = module.embed_dim


# ConViT: gated positional self-attention, then plain multi-head self-attention


def _gpsa_positions(self, batch: int, tokens: int) -> torch.Tensor:
    """GPSA's positional scores before the softmax ``[batch, heads, tokens, tokens]``, from the
    relative positions of the patches (computed again when the token count changes, as timm does)."""
    if self.rel_indices is None or self.rel_indices.shape[1] != tokens:
        self.rel_indices = self.get_rel_indices(tokens)
    return self.pos_proj(self.rel_indices.expand(batch, -1, -1, -1)).permute(0, 3, 1, 2)


def gpsa_attention(self, x: torch.Tensor) -> torch.Tensor:
    """A pruned ConViT ``GPSA``'s attention map: content and position scores, each a softmax,
    mixed per head by its gate."""
    batch, tokens, _ = x.shape
    q, k = split_heads(self.qk(x), self.num_heads, 2)
    content = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
    gate = torch.sigmoid(self.gating_param.view(1, -1, 1, 1))
    attn = (1.0 - gate) * content + gate * _gpsa_positions(self, batch, tokens).softmax(dim=-1)
    return self.attn_drop(attn / attn.sum(dim=-1, keepdim=True))


def gpsa_forward(self, x: torch.Tensor) -> torch.Tensor:
    """A pruned ConViT ``GPSA``'s forward."""
    v = split_heads(self.v(x), self.num_heads)
    return project(self, (self.get_attention(x) @ v).transpose(1, 2).flatten(2))


def gpsa_trace(self, x: torch.Tensor) -> torch.Tensor:
    """ConViT ``GPSA`` for the tracer: the queries and keys of a head dim (``qk``,
    ``[(q, k), heads, head_dim]``) added channel by channel to its values into the output
    projection (see ``class_attention_trace``). The positional scores only weight the tokens:
    computed, so that their MACs count, and cut with the heads."""
    _gpsa_positions(self, x.shape[0], x.shape[1])
    qk, v = self.qk(x), self.v(x)
    width = v.shape[-1]
    return project(self, qk[..., :width] + qk[..., width:] + v)


def fix_gpsa(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """ConViT ``GPSA``: ``num_heads`` and the positional projection's width."""
    fix_num_heads(module, heads, dims)
    module.pos_proj.out_features = len(heads)


GPSA_HEADS = (("pos_proj.weight", 0), ("pos_proj.bias", 0), ("gating_param", 0))
"""The per-head parameters of ConViT's ``GPSA``: a positional score and a gate per head."""


class PrunedGPSA(convit.GPSA):
    forward = gpsa_forward
    get_attention = gpsa_attention


class PrunedMHSA(convit.MHSA):
    forward = qkv_attention_forward


# SwinV2-CR: cosine attention within windows, position bias from an MLP with an output per head


def _cosine_attention(self, q, k, v, bias: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Swin V2's attention within windows: cosine similarity of queries and keys, scaled per
    head, plus the position ``bias``, shifted windows masked; into the output projection."""
    windows, _, tokens, _ = q.shape
    attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
    attn = attn * torch.clamp(self.logit_scale.reshape(1, -1, 1, 1), max=math.log(1.0 / 0.01)).exp() + bias
    if mask is not None:
        per_image = mask.shape[0]
        attn = attn.view(windows // per_image, per_image, self.num_heads, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, self.num_heads, tokens, tokens)
    attn = self.attn_drop(attn.softmax(dim=-1))
    return project(self, (attn @ v).transpose(1, 2).flatten(2))


def cosine_window_attention_forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """A pruned SwinV2-CR ``WindowMultiHeadAttention``'s forward."""
    q, k, v = split_heads(self.qkv(x), self.num_heads, 3)
    return _cosine_attention(self, q, k, v, self._relative_positional_encodings(), mask)


def cosine_window_attention_trace(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """SwinV2-CR ``WindowMultiHeadAttention`` for the tracer (``qkv_values_trace``); the position
    bias MLP runs, so that its MACs count, and its outputs are cut with the heads."""
    self._relative_positional_encodings()
    return qkv_values_trace(self, x)


def fix_cosine_window_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """SwinV2-CR ``WindowMultiHeadAttention``: ``num_heads`` and the bias MLP's output width."""
    fix_num_heads(module, heads, dims)
    module.meta_mlp.fc2.out_features = len(heads)


def cosine_fixed(model: nn.Module, module: nn.Module) -> dict[str, str]:
    """SwinV2-CR's head dims stay whole in every model."""
    return {"head_dim": "cosine attention normalises queries and keys over head dims"}


COSINE_HEADS = (("logit_scale", 0), ("meta_mlp.fc2.weight", 0), ("meta_mlp.fc2.bias", 0))
"""The per-head parameters of SwinV2-CR's attention: a logit scale and a bias MLP output per head."""


class PrunedWindowMultiHeadAttention(swin_cr.WindowMultiHeadAttention):
    forward = cosine_window_attention_forward


# Swin V2 (timm's ``swin_transformer_v2``): the same attention, its q and v biases apart from
# its qkv, its position bias from an MLP (``cpb_mlp``) over a table of coordinates


def _swinv2_position_bias(self) -> torch.Tensor:
    """``[heads, tokens, tokens]``, as timm computes it."""
    table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
    tokens = self.window_size[0] * self.window_size[1]
    return 16 * torch.sigmoid(table[self.relative_position_index.view(-1)].view(tokens, tokens, -1).permute(2, 0, 1))


def swinv2_window_attention_forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """A pruned Swin V2 ``WindowAttention``'s forward."""
    q, k, v = fused_qkv(self, x, trace=False)
    return _cosine_attention(self, q, k, v, _swinv2_position_bias(self), mask)


def swinv2_window_attention_trace(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Swin V2 ``WindowAttention`` for the tracer (``qkv_values_trace``, its qkv called as a
    module: timm's ``F.linear`` on its weight hides it); the position bias MLP runs, so that its
    MACs count, and its outputs are cut with the heads, as are the q and v biases."""
    _swinv2_position_bias(self)
    return qkv_values_trace(self, x)


def fix_swinv2_window_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """Swin V2 ``WindowAttention``: its q/k/v biases, ``num_heads`` and the bias MLP's width."""
    cut_qkv_biases(module, heads, dims)
    fix_num_heads(module, heads, dims)
    module.cpb_mlp[-1].out_features = len(heads)


SWINV2_HEADS = (("logit_scale", 0), ("cpb_mlp.2.weight", 0))
"""The per-head parameters of Swin V2's attention: a logit scale and a bias MLP output per head."""


class PrunedSwinV2WindowAttention(swinv2.WindowAttention):
    forward = swinv2_window_attention_forward


# XCiT (and EdgeNeXt, whose cross-covariance attention is XCiT's): attention across the head dims
# of each head (XCiT's class attention is CaiT's)


def cross_covariance_attention_forward(self, x: torch.Tensor) -> torch.Tensor:
    """A pruned XCiT ``XCA``'s forward: queries and keys normalised over the tokens, attention
    between the head dims of each head (scaled by its temperature), applied to the values."""
    q, k, v = split_heads(self.qkv(x), self.num_heads, 3).transpose(-1, -2)  # [batch, heads, head_dim, tokens]
    q, k = F.normalize(q, dim=-1) * self.temperature, F.normalize(k, dim=-1)
    dropout = self.attn_drop.p if self.training else 0.0
    x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=1.0)
    return project(self, x.permute(0, 3, 1, 2).flatten(2))


class PrunedXCA(xcit.XCA):
    forward = cross_covariance_attention_forward


class PrunedCrossCovarianceAttn(edgenext.CrossCovarianceAttn):
    forward = cross_covariance_attention_forward


def _split_transpose_block(self, x: torch.Tensor, trace: bool) -> torch.Tensor:
    """EdgeNeXt's ``SplitTransposeBlock``: its channels split into scales as Res2Net's
    (``chained_scales``; timm chunks into equal parts), then cross-covariance attention and an MLP
    on the tokens. The tracer mapped timm's chunk onto channels the layers do not have, and left
    each stage's stream whole."""
    shortcut = x
    x = chained_scales(x, self.convs, trace)
    batch, channels, height, width = x.shape
    x = x.flatten(2).transpose(1, 2)
    if self.pos_embd is not None:
        x = x + self.pos_embd((batch, height, width)).flatten(2).transpose(1, 2)
    x = x + self.drop_path(self.gamma_xca * self.xca(self.norm_xca(x)))
    x = self.mlp(self.norm(x.reshape(batch, height, width, channels)))
    if self.gamma is not None:
        x = self.gamma * x
    return shortcut + self.drop_path(x.permute(0, 3, 1, 2))


class PrunedSplitTransposeBlock(edgenext.SplitTransposeBlock):
    forward = partialmethod(_split_transpose_block, trace=False)


# EfficientViT's (MIT) lightweight multi-scale linear attention: a fused qkv laid out a head at a
# time ([query, key, value] each ``dim`` wide), aggregated by a depthwise and a grouped 1x1
# convolution (a group a head's query, key or value), ReLU linear attention on each


def _lite_mla_scales(self, qkv: torch.Tensor) -> list[torch.Tensor]:
    return [qkv, *(op(qkv) for op in self.aggreg)]


def lite_mla_trace(self, x: torch.Tensor) -> torch.Tensor:
    """EfficientViT's ``LiteMLA`` for the tracer: on the qkv and on each aggregation of it, each
    head's query, key and value added channel by channel, into the output projection. A head dim
    is then one channel of every head's query, key and value, and of each grouped convolution's
    every group (the tracer mapped timm's reshape onto channels the projection lacks, and left
    each qkv whole). Heads stay: the grouped convolutions hold as many groups. Without an
    aggregation (which holds the head count once pruned), timm's own forward."""
    if not self.aggreg:
        return type(self).forward(self, x)
    heads = self.aggreg[0][1].groups // 3
    pieces = []
    for t in _lite_mla_scales(self, self.qkv(x)):
        dim = t.shape[1] // (3 * heads)  # [heads, 3, dim]: a head's query, key and value side by side
        for h in range(heads):
            q, k, v = (t.narrow(1, (3 * h + i) * dim, dim) for i in range(3))
            pieces.append(self.kernel_func(q) + self.kernel_func(k) + v)
    return self.proj(concat_channels(pieces, 1))


def lite_mla_forward(self, x: torch.Tensor) -> torch.Tensor:
    """A pruned ``LiteMLA``'s forward: timm's, with each scale's head dim read from its width
    (timm reshapes every scale to the ``dim`` it was built with)."""
    batch, _, height, width = x.shape
    heads = self.aggreg[0][1].groups // 3
    outs = []
    for t in _lite_mla_scales(self, self.qkv(x)):
        q, k, v = t.reshape(batch, heads, -1, height * width).transpose(-1, -2).chunk(3, dim=-1)
        q, k, v = self.kernel_func(q), self.kernel_func(k), F.pad(v, (0, 1), mode="constant", value=1.0)
        if v.device.type != "meta":
            with torch.autocast(device_type=v.device.type, enabled=False):
                out = self._attn(q, k, v)
        else:
            out = self._attn(q, k, v)
        outs.append(out.transpose(-1, -2).reshape(batch, -1, height, width))
    return self.proj(torch.cat(outs, 1))


class PrunedLiteMLA(efficientvit_mit.LiteMLA):
    forward = lite_mla_forward


def _padded_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """A map ``[..., height, width]`` padded on the right and at the bottom to whole multiples of
    ``size``, as timm pads a map it cuts into windows (the map itself where it has them)."""
    height, width = x.shape[-2:]
    return F.pad(x, (0, -width % size, 0, -height % size)) if height % size or width % size else x


# EfficientViT's (MSRA) cascaded group attention: the map's channels split a part a head, each head
# with its own qkv layer on its part plus the previous head's output; queries through a depthwise
# convolution; values a whole number of times as wide as queries and keys; within windows


def _cascaded_heads(self, x: torch.Tensor, trace: bool) -> tuple[tuple[torch.Tensor, ...], list[tuple[int, int]]]:
    """Each head's input part (the map split at its qkv layer's width; timm chunks it into equal
    parts) and its key and value widths, read from its layers."""
    sizes = [qkv.conv.in_channels for qkv in self.qkvs]
    parts = split_channels(x, sizes) if trace else x.split(sizes, 1)
    return parts, _cascaded_widths(self)


def _cascaded_widths(self) -> list[tuple[int, int]]:
    return [(dws.conv.out_channels, qkv.conv.out_channels - 2 * dws.conv.out_channels) for qkv, dws in zip(self.qkvs, self.dws)]


def cascaded_group_attention_trace(self, x: torch.Tensor) -> torch.Tensor:
    """EfficientViT's ``CascadedGroupAttention`` for the tracer: each head's query (through its
    depthwise convolution) and key added to its first values, channel by channel, the next head's
    input part added to its values, and every head's values into the output projection. A query
    and key channel go together, with a value channel (any would do), and the other value
    channels go one by one: each head keeps its own widths. The tracer mapped channels through
    timm's reshapes onto tokens, and left every attention whole. Where the values are narrower
    than the keys, timm's own forward (they stay whole)."""
    if any(value < key for key, value in _cascaded_widths(self)):
        return type(self).forward(self, x)
    parts, widths = _cascaded_heads(self, x, trace=True)
    out, pieces = None, []  # the output projection takes every head's pieces (the tracer maps no concatenation of concatenations)
    for i, (qkv, dws, (key, value)) in enumerate(zip(self.qkvs, self.dws, widths)):
        feat = parts[i] if i == 0 else out + parts[i]
        projected = qkv(feat)
        q, k = dws(projected.narrow(1, 0, key)), projected.narrow(1, key, key)
        head = [projected.narrow(1, 2 * key, key) + q + k] + ([projected.narrow(1, 3 * key, value - key)] if value > key else [])
        out = concat_channels(head, 1) if len(head) > 1 else head[0]
        pieces += head
    return self.proj(concat_channels(pieces, 1))


def cascaded_group_attention_forward(self, x: torch.Tensor) -> torch.Tensor:
    """A pruned ``CascadedGroupAttention``'s forward: timm's, each head's widths read from its
    layers (timm splits at the widths it was built with), its scale as built."""
    batch, _, height, width = x.shape
    parts, widths = _cascaded_heads(self, x, trace=False)
    bias = self.get_attention_biases(x.device)
    outs = []
    for i, (qkv, dws, (key, value)) in enumerate(zip(self.qkvs, self.dws, widths)):
        feat = parts[i] if i == 0 else outs[-1] + parts[i]
        q, k, v = qkv(feat).split([key, key, value], 1)
        q, k, v = (dws(q) * self.scale).flatten(2), k.flatten(2), v.flatten(2)
        attn = (q.transpose(-2, -1) @ k + bias[i]).softmax(dim=-1)
        outs.append((v @ attn.transpose(-2, -1)).view(batch, value, height, width))
    return self.proj(torch.cat(outs, 1))


class PrunedCascadedGroupAttention(efficientvit_msra.CascadedGroupAttention):
    forward = cascaded_group_attention_forward


def local_window_attention_trace(self, x: torch.Tensor) -> torch.Tensor:
    """EfficientViT's ``LocalWindowAttention`` for the tracer: the map padded to whole windows, as
    timm pads it, and attended as one (the tracer does not follow timm's window partition; each
    layer inside counts the same MACs on the padded map as on its windows), then cropped."""
    height, width = x.shape[2:]
    return self.attn(_padded_to(x, self.attn.resolution))[:, :, :height, :width]


# DaViT: attention across the head dims of each head (channel attention), and within windows


def channel_attention_forward(self, x: torch.Tensor) -> torch.Tensor:
    """A pruned DaViT ``ChannelAttention``'s forward: keys against values across the head dims of
    each head, applied to the queries."""
    q, k, v = split_heads(self.qkv(x), self.num_heads, 3)
    attn = ((k * self.scale).transpose(-1, -2) @ v).softmax(dim=-1)
    return project(self, (q @ attn.transpose(-1, -2)).transpose(1, 2).flatten(2))


class PrunedChannelAttention(davit.ChannelAttention):
    forward = channel_attention_forward


def channel_attention_v2_forward(self, x: torch.Tensor) -> torch.Tensor:
    """A pruned DaViT ``ChannelAttentionV2``'s forward (the ``_fl`` models): queries against keys
    across the head dims of each of its ``groups`` (its heads), applied to the values; scaled by
    the token count, or (without ``dynamic_scale``) by the head dim it was built with."""
    q, k, v = split_heads(self.qkv(x), self.groups, 3)
    q = q * (x.shape[1] if self.dynamic_scale else self.head_dim) ** -0.5
    attn = (q.transpose(-1, -2) @ k).softmax(dim=-1)
    return self.proj((attn @ v.transpose(-1, -2)).permute(0, 3, 1, 2).flatten(2))


class PrunedChannelAttentionV2(davit.ChannelAttentionV2):
    forward = channel_attention_v2_forward


def fix_channel_attention_v2(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """``groups``, its head count; ``head_dim`` stays as built (the scale, without ``dynamic_scale``)."""
    module.groups = len(heads)


class PrunedDavitWindowAttention(davit.WindowAttention):
    forward = qkv_attention_forward


def _joined_unmapped(out: torch.Tensor, side: torch.Tensor, dim: int) -> torch.Tensor:
    """For the tracer, ``out`` with ``side`` joined to it along ``dim`` as a part of no channels (a
    marked concatenation). The tracer follows only what reaches the output: the layers making
    ``side`` are reached, and cut with whatever feeds them, but none of their outputs is coupled
    to anything."""
    shape = list(out.shape)
    shape[dim] = 0
    return concat_channels([out, side[..., :0].mean(tuple(range(1, side.dim())), keepdim=True).expand(shape)], dim)


# VOLO: outlook attention on [batch, height, width, channels], then self-attention, then class attention


def outlook_attention_forward(self, x: torch.Tensor) -> torch.Tensor:
    """A pruned VOLO ``OutlookAttention``'s forward: each position's ``k x k`` neighbourhood of
    values weighted by attention computed from the (pooled) position itself, ``k^4`` weights a
    head, then folded back onto the map; as wide as the values, not the input."""
    batch, height, width, _ = x.shape
    v = self.v(x).permute(0, 3, 1, 2)
    channels, window = v.shape[1], self.kernel_size**2
    rows, cols = math.ceil(height / self.stride), math.ceil(width / self.stride)
    v = self.unfold(v).reshape(batch, self.num_heads, channels // self.num_heads, window, rows * cols).permute(0, 1, 4, 3, 2)
    attn = self.attn(self.pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
    attn = attn.reshape(batch, rows * cols, self.num_heads, window, window).permute(0, 2, 1, 3, 4)
    attn = self.attn_drop((attn * self.scale).softmax(dim=-1))
    x = (attn @ v).permute(0, 1, 4, 3, 2).reshape(batch, channels * window, rows * cols)
    x = F.fold(x, output_size=(height, width), kernel_size=self.kernel_size, padding=self.padding, stride=self.stride)
    return project(self, x.permute(0, 2, 3, 1))


def outlook_attention_trace(self, x: torch.Tensor) -> torch.Tensor:
    """VOLO ``OutlookAttention`` for the tracer: a value channel goes to the output projection's
    input of the same position (unfolding, weighting and folding move tokens, not channels). The
    attention weights are computed as timm computes them, and joined to the output as a part of
    no channels (``_joined_unmapped``): the layer making them is cut with the embedding at its
    input; ``fix_outlook_attention`` cuts its outputs with the heads."""
    weights = self.attn(self.pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
    return _joined_unmapped(project(self, self.v(x)), weights, -1)


def fix_outlook_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """VOLO ``OutlookAttention``: the attention weights of removed heads (``k^4`` a head), and
    ``num_heads``. Zeroing a head's values zeroes what it adds, so ``zero_out`` needs no more."""
    per = module.attn.out_features // module.num_heads  # rows a head, head after head
    gone = [h * per + i for h in range(module.num_heads) if h not in set(heads) for i in range(per)]
    cut_module(function.prune_linear_out_channels, module.attn, gone, 0)
    fix_num_heads(module, heads, dims)


def map_attention_forward(self, x: torch.Tensor) -> torch.Tensor:
    """A pruned VOLO ``Attention``'s forward: self-attention over a ``[batch, height, width,
    channels]`` map's positions (``qkv_attention_forward``)."""
    batch, height, width, _ = x.shape
    return qkv_attention_forward(self, x.flatten(1, 2)).reshape(batch, height, width, -1)


def map_attention_trace(self, x: torch.Tensor) -> torch.Tensor:
    """VOLO ``Attention`` for the tracer: ``qkv_values_trace`` over the map's positions."""
    batch, height, width, _ = x.shape
    return qkv_values_trace(self, x.flatten(1, 2)).reshape(batch, height, width, -1)


def volo_class_attention_forward(self, x: torch.Tensor) -> torch.Tensor:
    """A pruned VOLO ``ClassAttention``'s forward: the class token's query against every
    token's key and value (a fused ``kv``)."""
    return _query_kv_attention(self, x[:, :1], x)


def volo_class_attention_trace(self, x: torch.Tensor) -> torch.Tensor:
    """VOLO ``ClassAttention`` for the tracer: the class token's query, every token's keys
    and values (those of the first go on)."""
    return _query_kv_trace(self, self.q(x[:, :1]), self.kv(x)[:, :1])


class PrunedOutlookAttention(volo.OutlookAttention):
    forward = outlook_attention_forward


class PrunedVoloAttention(volo.Attention):
    forward = map_attention_forward


class PrunedVoloClassAttention(volo.ClassAttention):
    forward = volo_class_attention_forward


# GC ViT: window attention with a relative position bias; every other block takes its queries from
# the stage's global context (the stage's residual stream through its global block, one map an
# image), shared by those blocks, and computes keys and values only


def _global_queries(x: torch.Tensor, q_global: torch.Tensor) -> torch.Tensor:
    """The global queries of ``x``'s windows, ``[windows, tokens, channels]``: timm orders the
    windows image by image, so each image's map is repeated for each of its windows."""
    return q_global.repeat_interleave(x.shape[0] // q_global.shape[0], dim=0).reshape(*x.shape[:2], -1)


def global_context_attention_forward(self, x: torch.Tensor, q_global: torch.Tensor | None = None) -> torch.Tensor:
    """A pruned GC ViT ``WindowAttentionGlobal``'s forward. With global queries its ``qkv`` holds
    keys as wide as the queries (the stage's embedding, cut in a run a head: ``global_key_runs``),
    then values, whose heads keep their width."""
    qkv = self.qkv(x)
    if self.use_global and q_global is not None:
        queries = _global_queries(x, q_global)
        width = queries.shape[-1]
        q, k, v = (split_heads(t, self.num_heads) for t in (queries, qkv[..., :width], qkv[..., width:]))
    else:
        q, k, v = split_heads(qkv, self.num_heads, 3)
    return project(self, attend(self, q, k, v, self.rel_pos.get_bias()).transpose(1, 2).flatten(2))


def global_context_attention_trace(self, x: torch.Tensor, q_global: torch.Tensor | None = None) -> torch.Tensor:
    """GC ViT ``WindowAttentionGlobal`` for the tracer: ``qkv_values_trace`` where it computes its
    own queries. With global queries, the values go to the output projection; the keys, matched
    channel for channel with the queries, are added to them and to the output (the residual stream
    the queries come from), so that they are cut with the embedding."""
    if not (self.use_global and q_global is not None):
        return qkv_values_trace(self, x)
    kv = self.qkv(x)
    width = q_global.shape[-1]
    return project(self, kv[..., width:]) + kv[..., :width] + _global_queries(x, q_global)


def global_key_runs(module: nn.Module) -> dict[str, int]:
    """The keys of a ``WindowAttentionGlobal`` with global queries, a run a head: removing the same
    positions of every run keeps the heads of the queries (the stage's embedding) equal in width.
    Such an attention is not cut by head, since every global block of the stage shares its queries;
    its values keep their width (they share ``qkv`` with the keys, whose group is the embedding's)."""
    return {"qkv": module.num_heads} if module.use_global else {}


def fix_global_context_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """GC ViT ``WindowAttentionGlobal`` computing its own queries: ``num_heads``, ``head_dim``,
    ``scale``, and its relative position bias's head count."""
    fix_window_attention(module, heads, dims)
    module.head_dim = len(dims)
    fix_rel_pos(module.rel_pos, len(heads))


class PrunedWindowAttentionGlobal(gcvit.WindowAttentionGlobal):
    forward = global_context_attention_forward


# FocalNet: one 1x1 convolution makes the queries, the context and one gate per focal level and
# for the global context; each gate is one channel, broadcast over every channel of the context


def _focal_modulation(self, x: torch.Tensor, trace: bool) -> torch.Tensor:
    """FocalNet ``FocalModulation`` at any widths: the queries are as wide as ``h``'s outputs (they
    multiply them), the context as its inputs, and the gates follow. Traced, the gates are detached:
    the tracer would couple each to every context channel it scales, so the walk would not end.
    They are read by position, so they must keep every channel; out of the trace, no group holds
    them (the queries' is rooted at ``h``, the context's at the last focal layer)."""
    x = self.f(x)
    queries, width = self.h.out_channels, self.h.in_channels
    q, ctx, gates = x[:, :queries], x[:, queries : queries + width], x[:, queries + width :]
    if trace:
        gates = gates.detach()
    ctx_all = 0
    for level, focal_layer in enumerate(self.focal_layers):
        ctx = focal_layer(ctx)
        ctx_all = ctx_all + ctx * gates[:, level : level + 1]
    ctx_all = ctx_all + self.act(ctx.mean((2, 3), keepdim=True)) * gates[:, self.focal_level :]
    if self.normalize_modulator:
        ctx_all = ctx_all / (self.focal_level + 1)
    return self.proj_drop(self.proj(self.norm(q * self.h(ctx_all))))


class PrunedFocalModulation(focalnet.FocalModulation):
    forward = partialmethod(_focal_modulation, trace=False)


# MetaFormer (PoolFormer, ConvFormer, CAFormer): a scale per channel viewed at the width it was
# built with; CAFormer's attention reshapes its output to the input's width


def resize_scale(module: nn.Module, cut) -> None:
    """MetaFormer's ``Scale`` views its parameter as ``shape``: its width, then ones for NCHW maps."""
    module.shape = (module.scale.shape[0], *module.shape[1:])


def fix_metaformer_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """``num_heads``, ``head_dim`` and ``attention_dim``; ``scale`` stays as built."""
    module.num_heads, module.head_dim = len(heads), len(dims)
    module.attention_dim = len(heads) * len(dims)


class PrunedMetaFormerAttention(metaformer.Attention):
    forward = qkv_attention_forward


# InceptionNeXt and MambaOut: channels split at fixed sizes, which a pruned block reads from its layers


def _inception_dwconv(self, x: torch.Tensor, trace: bool) -> torch.Tensor:
    """InceptionNeXt's ``InceptionDWConv2d`` at any widths: the channels each depthwise branch
    keeps go through it, the rest (the first) pass unchanged. For the tracer, the split and the
    concatenation are marked as ones of channels, with their widths."""
    branches = (self.dwconv_hw, self.dwconv_w, self.dwconv_h)
    widths = [conv.in_channels for conv in branches]
    sizes = (x.shape[1] - sum(widths), *widths)
    kept, *parts = split_channels(x, sizes) if trace else x.split(sizes, dim=1)
    out = [kept, *(conv(part) for conv, part in zip(branches, parts))]
    return concat_channels(out, 1) if trace else torch.cat(out, 1)


def metanext_block_trace(self, x: torch.Tensor) -> torch.Tensor:
    """InceptionNeXt's ``MetaNeXtBlock`` for the tracer: its layer scale broadcast over the map
    without the reshape Torch-Pruning reads as one of channels (it coupled one channel to four)."""
    out = self.mlp(self.norm(self.token_mixer(x)))
    if self.gamma is not None:
        out = out * self.gamma[:, None, None]
    return x + self.drop_path(out)


def _gated_conv_block(self, x: torch.Tensor, trace: bool) -> torch.Tensor:
    """MambaOut's ``GatedConvBlock`` (``[batch, height, width, channels]``) at any widths: ``fc1``
    makes the gates and as many values, of which the last go through the depthwise convolution.
    For the tracer, the map is a sequence of tokens (Torch-Pruning reads the reshape a linear
    layer makes of a 4-d input as one of channels, and coupled one hidden unit to two), with the
    channels moved to dim 1 where they are split and concatenated, both marked: a hidden unit is
    then one gate and the value in the same position (as in a ``GluMlp``)."""
    hidden, conv = self.fc2.in_features, self.conv.in_channels
    sizes = (hidden, hidden - conv, conv)
    if trace:
        height, width = x.shape[1:3]
        gates, values, convolved = split_channels(self.fc1(self.norm(x).flatten(1, 2)).transpose(1, 2), sizes)
        convolved = self.conv(convolved.unflatten(2, (height, width))).flatten(2)
        out = self.fc2((self.act(gates) * concat_channels([values, convolved], 1)).transpose(1, 2)).unflatten(1, (height, width))
    else:
        gates, values, convolved = self.fc1(self.norm(x)).split(sizes, dim=-1)
        convolved = self.conv(convolved.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        out = self.fc2(self.act(gates) * torch.cat((values, convolved), dim=-1))
    return x + self.drop_path(self.ls(out))


class PrunedInceptionDWConv2d(inception_next.InceptionDWConv2d):
    forward = partialmethod(_inception_dwconv, trace=False)


class PrunedGatedConvBlock(mambaout.GatedConvBlock):
    forward = partialmethod(_gated_conv_block, trace=False)


def chained_scales(x: torch.Tensor, convs, trace: bool, *, chained: bool = True, rest: bool = True, after=None, last=None) -> torch.Tensor:
    """Res2Net's scales (its bottleneck's, DLA's, EdgeNeXt's split blocks'): ``x`` split at the
    input widths of ``convs`` (timm splits at the widths it was built with), each part through its
    convolution (then ``after(i, output)``), after the previous one's output is added where
    ``chained``; the channels left over (where ``rest``) as they are, or through ``last``; all
    concatenated. For the tracer, the split and the concatenation are marked."""
    sizes = [conv.in_channels for conv in convs]
    if rest:
        sizes.append(x.shape[1] - sum(sizes))
    parts = split_channels(x, sizes) if trace else x.split(sizes, 1)
    outs = []
    for i, conv in enumerate(convs):
        out = conv(parts[i] if i == 0 or not chained else outs[-1] + parts[i])
        outs.append(out if after is None else after(i, out))
    if rest:
        outs.append(parts[-1] if last is None else last(parts[-1]))
    return concat_channels(outs, 1) if trace else torch.cat(outs, 1)


def _res2net_scales(self, x: torch.Tensor, trace: bool) -> torch.Tensor:
    """Res2Net's hidden channels (its bottleneck's and DLA's) in scales (``chained_scales``), each
    normalised after its convolution, not chained in a stage's first block, the last pooled there."""
    return chained_scales(self.relu(self.bn1(self.conv1(x))), self.convs, trace, chained=not self.is_first, rest=self.scale > 1,
                          after=lambda i, out: self.relu(self.bns[i](out)), last=self.pool)


def _res2net_block(self, x: torch.Tensor, trace: bool) -> torch.Tensor:
    """Res2Net's bottleneck (``_res2net_scales``)."""
    shortcut = x
    out = self.bn3(self.conv3(self.drop_block(_res2net_scales(self, x, trace))))
    if self.se is not None:
        out = self.se(out)
    if self.drop_path is not None:
        out = self.drop_path(out)
    if self.downsample is not None:
        shortcut = self.downsample(x)
    return self.relu(out + shortcut)


class PrunedBottle2neck(res2net.Bottle2neck):
    forward = partialmethod(_res2net_block, trace=False)


def _dla_res2net_block(self, x: torch.Tensor, shortcut: torch.Tensor | None = None, children=None, *, trace: bool) -> torch.Tensor:
    """DLA's Res2Net bottleneck (``_res2net_scales``), its shortcut given by the tree it sits in."""
    out = self.bn3(self.conv3(_res2net_scales(self, x, trace)))
    return self.relu(out + (x if shortcut is None else shortcut))


class PrunedDlaBottle2neck(dla.DlaBottle2neck):
    forward = partialmethod(_dla_res2net_block, trace=False)


# LeViT (and EfficientFormer, laid out alike): a head's values are a whole number of times as wide
# as its query and key, and each head is laid out whole ([query, key, values] in the fused qkv;
# [key, values] in the downsampling kv)


def _levit_layout(self, projected: torch.Tensor, axis: int) -> Layout:
    return Layout(self.num_heads, self.key_dim, projected.shape[axis] // (self.num_heads * self.key_dim), heads_first=True)


def levit_attention_trace(self, x: torch.Tensor) -> torch.Tensor:
    """LeViT's attention (and EfficientFormer's, laid out alike) for the tracer: each head's values
    into the output projection."""
    axis = 1 if getattr(self, "use_conv", False) else 2
    qkv = self.qkv(x)
    return self.proj(value_heads(qkv, _levit_layout(self, qkv, axis), axis, self.val_dim))


def levit_downsample_trace(self, x: torch.Tensor) -> torch.Tensor:
    """LeViT's downsampling attention for the tracer: each head's query added to its key and to
    each query-wide slice of its values, channel by channel, and those into the output projection
    (the keys and values of the first token only: the queries are subsampled)."""
    axis = 1 if self.use_conv else 2
    q, kv = self.q(x), self.kv(x)
    kv = kv[:, :, :1, :1] if self.use_conv else kv[:, :1]
    queries = _levit_layout(self, q, axis).channels()[0, :, 0].tolist()  # where each head's query starts
    keys_values = _levit_layout(self, kv, axis).channels()[:, :, 0].T.tolist()  # per head: its key's start, its values' slices'
    pick = lambda t, start: t.narrow(axis, start, self.key_dim)  # noqa: E731
    pieces = [pick(q, query) + pick(kv, starts[0]) + pick(kv, value) for query, starts in zip(queries, keys_values) for value in starts[1:]]
    return self.proj(concat_channels(pieces, axis))


def levit_subsample_trace(self, x: torch.Tensor) -> torch.Tensor:
    """LeViT's subsampling of the queries' tokens for the tracer: the kept tokens picked by index
    (the tracer reads timm's strided slice of the token map as one of channels, and drops every
    other channel through it)."""
    if self.pool is not None:
        return type(self).forward(self, x)
    rows, cols = self.resolution
    kept = torch.arange(rows * cols, device=x.device).view(rows, cols)[:: self.stride, :: self.stride].flatten()
    return x.index_select(1, kept)


def fix_levit_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """LeViT's attention: the widths its forward reads (the values keep their ratio to the keys),
    and no attention bias cached at the old head count."""
    ratio = module.val_dim // module.key_dim
    module.num_heads, module.key_dim, module.val_dim = len(heads), len(dims), ratio * len(dims)
    module.key_attn_dim, module.val_attn_dim = module.key_dim * module.num_heads, module.val_dim * module.num_heads
    module.attention_bias_cache = {}


def levit_fixed(model: nn.Module, module: nn.Module) -> dict[str, str]:
    if module.val_dim % module.key_dim:
        return dict.fromkeys(("heads", "head_dim"), "its values are not a whole number of times as wide as its keys")
    return {}


# Sequencer: bidirectional LSTMs along the columns and along the rows of a [batch, height, width,
# channels] map, their outputs concatenated (``LSTM2d``); ``_cut.LSTMCut`` cuts their hidden units


def rnn2d_trace(self, x: torch.Tensor) -> torch.Tensor:
    """Sequencer's ``RNN2dBase`` for the tracer. timm reshapes each LSTM's output back to the map
    before it concatenates them, and the tracer read the reshape of the rows' LSTM as mapping its
    outputs onto twice as many channels (the concatenation's). Here both LSTMs run along the rows
    (the tracer follows channels, which do not care in what order the tokens come, and an LSTM's
    MACs are counted per token), their outputs are joined as they return them in a marked
    concatenation, and the map is made once after it."""
    batch, height, width, channels = x.shape
    rows = x.reshape(-1, width, channels)
    parts = [lstm(rows)[0] for lstm, used in ((self.rnn_v, self.with_vertical), (self.rnn_h, self.with_horizontal)) if used]
    x = concat_channels(parts, 2) if len(parts) == 2 and self.union == "cat" else sum(parts)
    x = x.reshape(batch, height, width, -1)
    return self.fc(x) if self.fc is not None else x


def lstm_trace(self, x: torch.Tensor, hx=None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``nn.LSTM`` for the tracer: a linear map of its inputs onto its outputs (both directions'),
    so that the tracer takes it for one layer, as it does a real LSTM. On the meta device torch
    runs an LSTM step by step, gate by gate, and the tracer followed every step as ops of their own."""
    directions, width = 1 + self.bidirectional, self.proj_size or self.hidden_size
    batch = () if x.dim() == 2 else (x.shape[0 if self.batch_first else 1],)
    state = x.new_zeros(self.num_layers * directions, *batch, width)
    return F.linear(x, x.new_zeros(directions * width, x.shape[-1])), (state, state)


def resize_rnn2d(module: nn.Module, cut) -> None:
    """``input_size``, ``hidden_size`` and ``output_size``, as its LSTMs now have them."""
    lstm = next(m for m in (module.rnn_v, module.rnn_h) if isinstance(m, nn.LSTM))
    module.input_size, module.hidden_size = lstm.input_size, lstm.hidden_size
    module.output_size = lstm.hidden_size * (1 + lstm.bidirectional)


# CondConv EfficientNets: each block's convolutions mix their experts' kernels with weights its
# routing layer computes from the block's pooled input; ``_cut.CondConvCut`` cuts them


def cond_conv_trace(self, x: torch.Tensor, routing_weights: torch.Tensor) -> torch.Tensor:
    """timm's ``CondConv2d`` for the tracer: a convolution at its widths (on a kernel of zeros,
    so that the tracer reads it as one layer, whose parameters are the module's), its routing
    weights ``held`` (they weigh experts, not channels)."""
    conv = conv2d_same if self.dynamic_padding else F.conv2d
    weight = x.new_zeros(self.weight_shape)
    return conv(x + held(routing_weights), weight, None, self.stride, self.padding, self.dilation, self.groups)


# BAT's bilinear attention transform (``bat_resnext``): two matrices a group of channels, made from
# the map by a reduction and two convolutions, mix its rows and its columns


def bilinear_attention_trace(self, x: torch.Tensor) -> torch.Tensor:
    """timm's ``BilinearAttnTransform`` for the tracer: its layers that make the matrices run (so
    that their inputs are cut with the map's channels and their MACs count) and are ``held`` (their
    outputs weigh positions, a group at a time, and stay whole); the map's channels, each mixed
    only within itself, go on to the output. The forward splits them into its groups evenly: the
    layer before keeps them in runs (``bilinear_attention_runs``)."""
    reduced = self.conv1(x)
    rows = self.conv_p(F.adaptive_max_pool2d(reduced, (self.block_size, 1)))
    cols = self.conv_q(F.adaptive_max_pool2d(reduced, (1, self.block_size)))
    return self.conv2(x + held(reduced) + held(rows) + held(cols))


def bilinear_attention_runs(module: nn.Module) -> dict[str, int]:
    """BAT's ``BatNonLocalAttn``: the channels its first layer makes fall in the transform's groups."""
    return {"conv1.conv": module.ba.groups}


# Parallel ViT blocks (ViT-22B's): one projection holds an MLP's hidden units, then queries, keys and
# values; attention (plain or differential) and MLP run side by side and are added to the stream together


def _parallel_attention(self, qkv: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
    q, k, v = split_heads(qkv, self.num_heads, 3)
    return attend(self, self.q_norm(q), self.k_norm(k), v, attn_mask, is_causal)


def _parallel_differential_attention(self, qkv: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
    """As ``DiffAttention`` (``_differential``): a head's query and key are two sub-heads."""
    q, k, v = qkv.chunk(3, dim=-1)
    q, k = (split_heads(t, 2 * self.num_heads) for t in (q, k))
    return _differential(self, q, k, split_heads(v, self.num_heads), attn_mask, is_causal)


def _parallel_block(self, x: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool, trace: bool, attention=_parallel_attention) -> torch.Tensor:
    """timm ``ParallelScalingBlock``'s (and ``DiffParallelScalingBlock``'s) computation with its
    attention as wide as its heads (timm reshapes it to the stream's width). For the tracer
    (``trace``), the values of every head go to the output as ``value_heads`` has them,
    ``Layout.offset`` past the hidden units."""
    y = self.in_proj(self.in_norm(x))
    hidden = self.in_split[0]
    x_mlp = y[..., :hidden] if self.mlp_bias is None else y[..., :hidden] + self.mlp_bias
    x_mlp = self.mlp_drop(self.mlp_act(x_mlp))
    if trace:
        x_attn = value_heads(y, Layout(self.num_heads, (y.shape[-1] - hidden) // (3 * self.num_heads), 3, offset=hidden), 2)
    else:
        x_attn = attention(self, y[..., hidden:], attn_mask, is_causal).transpose(1, 2).flatten(2)
    if self.out_proj is not None:
        out = self.out_proj(concat_channels([x_attn, x_mlp], 2) if trace else torch.cat((x_attn, x_mlp), dim=-1))
    else:
        out = self.attn_out_proj(x_attn) + self.mlp_out_proj(x_mlp)
    return x + self.drop_path(self.ls(out))


def parallel_block_trace(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
    return _parallel_block(self, x, attn_mask, is_causal, trace=True)


def parallel_block_forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
    return _parallel_block(self, x, attn_mask, is_causal, trace=False)


def differential_parallel_block_forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
    return _parallel_block(self, x, attn_mask, is_causal, trace=False, attention=_parallel_differential_attention)


class PrunedParallelScalingBlock(vision_transformer.ParallelScalingBlock):
    forward = parallel_block_forward


class PrunedDiffParallelScalingBlock(vision_transformer.DiffParallelScalingBlock):
    forward = differential_parallel_block_forward


def fix_differential_parallel_block(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """``in_split`` (hidden units, then queries, keys and values) and ``num_heads``; its head dims
    stay (``diff_attention_fixed``)."""
    width = len(heads) * len(dims)
    module.in_split = [module.in_proj.out_features - 3 * width, width, width, width]
    module.num_heads = len(heads)


def fix_parallel_block(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """As ``fix_differential_parallel_block``, and ``head_dim`` and ``scale`` (``rescale_queries``, on
    the query rows of ``in_proj``)."""
    fix_differential_parallel_block(module, heads, dims)
    module.head_dim = len(dims)
    hidden, width = module.in_split[:2]
    rescale_queries(module, len(dims), query=module.in_proj, rows=slice(hidden, hidden + width))


# MobileViTv2's separable self-attention: one query channel scores the tokens, each key channel is
# pooled by those scores and weighs its value channel


def linear_self_attention_trace(self, x: torch.Tensor) -> torch.Tensor:
    """MobileViTv2's ``LinearSelfAttention`` for the tracer. Its query, one channel, scores every
    token; the tracer coupled it to all of the keys' channels it multiplies, and from them to the
    values and on, until the walk diverged. The scores are taken detached: a key's channel is then
    coupled to its value's (``offset`` of ``Group``: the query channel stays, keys and values go
    in pairs). timm's models call it on one input (its cross-attention is not traced)."""
    query, key, value = split_channels(self.qkv_proj(x), [1, self.embed_dim, self.embed_dim])
    context = (key * F.softmax(query.detach(), dim=-1)).sum(dim=-1, keepdim=True)
    return self.out_drop(self.out_proj(F.relu(value) * context))


def resize_linear_self_attention(module: nn.Module, cut) -> None:
    """``embed_dim``, which timm's forward splits the queries, keys and values by."""
    module.embed_dim = module.out_proj.in_channels


# CSATv2's spatial attention: the map's mean and maximum over its channels, pooled to 7x7, through
# a convolution and a one-channel transformer, upsampled and multiplied into the map


def channel_statistics_attention_trace(self, x: torch.Tensor) -> torch.Tensor:
    """CSATv2's ``SpatialAttention`` for the tracer: its own forward, detached. It weighs each
    position from statistics over all channels, and none of its layers holds a channel of the map;
    multiplied in, the tracer coupled its one channel to all the map's and left the stream of every
    stage with such blocks whole."""
    return CsatSpatialAttention.forward(self, x).detach()


# EfficientViM's hidden-state mixer (HSM-SSD): the tokens contracted into state dims (a state dim is
# a channel of each of the input-dependent B, C and dt, a depthwise convolution over the three, and
# of the learned A), the channels mixed on the states by a gated projection, then read back out to
# the tokens through C


def hidden_state_mixer_trace(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """EfficientViM's ``HSMSSD`` for the tracer. The map's channels go through the projections
    on the states as they do in timm's forward (the states the contraction with the tokens made
    detached, so that no state dim is coupled to a channel), and the state dims through B, C, dt
    and A added channel by channel (``split_channels``). That sum joins the output as a part of
    no channels (``_joined_unmapped``): the layers that make it are cut with the map at their
    inputs, and their outputs with no other layer's. The tracer read timm's reshape of the
    tokens into states as channels mapped onto thousands, and left almost every group whole; and
    it reads the reshapes inside ``@`` as mapping channels where one width is a multiple of the
    other, so the products are ``bmm``."""
    batch, _, height, width = x.shape
    tokens = x.flatten(2)
    b, c, dt = split_channels(self.dw(self.BCdt_proj(tokens).reshape(batch, -1, height, width)).flatten(2), 3)
    states = b + c + dt + self.A.view(1, -1, 1)
    h, z = split_channels(self.hz_proj(torch.bmm(tokens, states.detach().transpose(-2, -1))), 2)
    h = self.out_proj(h * self.act(z) + h * self.D)
    return _joined_unmapped(torch.bmm(h, states.detach()), states, 1).reshape(batch, -1, height, width), h


def resize_hidden_state_mixer(module: nn.Module, cut) -> None:
    """``state_dim`` and ``d_inner``, at which timm's forward splits its projections."""
    module.state_dim, module.d_inner = module.A.shape[0], module.out_proj.conv.in_channels


# Global context blocks (GCNet; timm's gcresnet, gcresnext, gc_efficientnetv2): attention pooling
# of the map (a 1x1 convolution to one channel, a softmax over positions), then channel MLPs that
# scale or shift every position


def global_context_trace(self, x: torch.Tensor) -> torch.Tensor:
    """timm ``GlobalContext`` for the tracer. Its attention is one channel, weighing every
    channel at each position; multiplied in, the tracer coupled that channel to all of them (the
    walk through timm's reshapes did not end). Here the weights are detached where they pool the
    map, and the attention layer's output joins the context as one more channel, split off again
    unused: its inputs are cut with the map's channels, its one output stays."""
    if self.conv_attn is not None:
        weights = self.conv_attn(x).flatten(2).softmax(dim=-1)
        context = (x.flatten(2) * weights.detach()).sum(-1, keepdim=True)
        context, _ = split_channels(concat_channels([context, weights.sum(-1, keepdim=True)], 1), [x.shape[1], 1])
        context = context.unsqueeze(-1)
    else:
        context = x.mean(dim=(2, 3), keepdim=True)
    if self.mlp_scale is not None:
        x = x * self.gate(self.mlp_scale(context))
    if self.mlp_add is not None:
        x = x + self.mlp_add(context)
    return x


# Qwen3-VL's vision encoder: its projector ('merger') concatenates each k x k block of tokens'
# channels, row by row, and maps them to the language model's width


def qwen_merger_trace(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
    """``Qwen3VitPatchMerger`` for the tracer: the block's tokens concatenated channels-first as
    ``[(0, 0), (0, 1), ..., (k-1, k-1)]`` (what timm's reshape-permute lays out, channels
    innermost), so that channel ``c`` of the embedding maps to ``c, C+c, ...``."""
    k = self.merge_size
    x = self.norm(x).permute(0, 3, 1, 2)
    x = concat_channels([x[:, :, i::k, j::k] for i in range(k) for j in range(k)], 1).flatten(2).transpose(1, 2)
    x = self.act(self.fc1(x))
    return x if pre_logits else self.fc2(x)


# DeepSeek's vision encoder: its projector ('aligner') takes each r x r block of tokens' channels
# channel-major, ``[c, i, j]``, as ``F.unfold`` lays them out


def deepseek_aligner_trace(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
    """``DeepseekVitAligner`` for the tracer: timm's unshuffle, its last reshape made in two, to
    ``[batch, blocks, channels, r * r]`` and then a marked flatten of the channels, channel ``c``
    to ``c * r * r`` up to ``(c + 1) * r * r - 1`` (the tracer read timm's one reshape as keeping
    each channel where it was)."""
    r = self.downsample_ratio
    batch, height, width, channels = x.shape
    x = F.pad(x.permute(0, 3, 1, 2), (0, -width % r, 0, -height % r))
    h, w = x.shape[2] // r, x.shape[3] // r
    x = x.reshape(batch, channels, h, r, w, r).permute(0, 2, 4, 1, 3, 5).reshape(batch, h * w, channels, r * r)
    x = self.act(self.fc1(flatten_channels(x)))
    return x if pre_logits else self.fc2(x)


# FastViT's attention (its SA/MA models' last stages, MobileCLIP's MCi): a ViT attention run on the
# feature map, flattened to tokens and back


def fastvit_attention_forward(self, x: torch.Tensor) -> torch.Tensor:
    """A pruned FastViT ``Attention``'s forward (timm reshapes its output to its input's width)."""
    batch, _, height, width = x.shape
    x = qkv_attention_forward(self, x.flatten(2).transpose(1, 2))
    return x.transpose(1, 2).reshape(batch, -1, height, width)


def fastvit_attention_trace(self, x: torch.Tensor) -> torch.Tensor:
    """FastViT's ``Attention`` for the tracer (``qkv_values_trace`` on the flattened map)."""
    batch, _, height, width = x.shape
    return qkv_values_trace(self, x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(batch, -1, height, width)


class PrunedFastVitAttention(fastvit.Attention):
    forward = fastvit_attention_forward


# Bottleneck and halo attention (timm's BoTNet and HaloNet blocks): attention on the feature map
# with a relative position embedding over head dims (which stay), the values' heads reshaped into
# the output; halo attention's queries come from their own layer, its keys and values from a layer
# that lays them out a head at a time


def bottleneck_attention_trace(self, x: torch.Tensor) -> torch.Tensor:
    """timm ``BottleneckAttn`` for the tracer: its values (the last part of its qkv, a head at a
    time) are its output. Where they are wider than the queries, which then stay whole
    (``map_attention_fixed``), a unit is a channel of every head's values: each head's with the
    sum of all heads' added (the qkv's group then has its queries and keys first, coupled to
    nothing, and its values in a run per head after them)."""
    _, values = split_channels(self.qkv(x), [2 * self.dim_out_qk, self.dim_out_v])
    if self.dim_head_qk != self.dim_head_v:
        heads = split_channels(values, self.num_heads)
        values = concat_channels([head + sum(heads) for head in heads], 1)
    return self.pool(values)


def resize_bottleneck_values(module: nn.Module, cut) -> None:
    """``dim_out_v`` and ``dim_head_v`` where the values are wider than the queries (their head
    dims cut by the qkv's group; where as wide, ``fix_map_attention`` sets the widths)."""
    if module.dim_head_qk != module.dim_head_v:
        module.dim_out_v = module.qkv.out_channels - 2 * module.dim_out_qk
        module.dim_head_v = module.dim_out_v // module.num_heads


def halo_attention_trace(self, x: torch.Tensor) -> torch.Tensor:
    """timm ``HaloAttn`` for the tracer: each head's values, with its queries and keys added
    channel by channel (see ``class_attention_trace``) at the queries' positions, as its output
    (onto as many of its values where the widths differ: then nothing is cut by head)."""
    q, kv = self.q(x), self.kv(x)[:, :, :: self.block_stride, :: self.block_stride]
    qk, v = self.dim_head_qk, self.dim_head_v
    pieces, paired = [], min(qk, v)
    for h in range(self.num_heads):
        start = h * (qk + v)
        pieces.append(q.narrow(1, h * qk, paired) + kv.narrow(1, start, paired) + kv.narrow(1, start + qk, paired))
        if v > paired:
            pieces.append(kv.narrow(1, start + qk + paired, v - paired))
    return self.pool(concat_channels(pieces, 1))


def fix_map_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """``BottleneckAttn``, ``HaloAttn``: the head count and the widths their forwards reshape to."""
    module.num_heads = len(heads)
    module.dim_out_qk, module.dim_out_v = len(heads) * module.dim_head_qk, len(heads) * module.dim_head_v


def map_attention_fixed(model: nn.Module, module: nn.Module) -> dict[str, str]:
    if module.dim_head_qk != module.dim_head_v:
        return dict.fromkeys(("heads", "head_dim"), "its values' heads are not as wide as its queries'")
    return {"head_dim": "its relative position embedding is over head dims"}


# Lambda layers (timm's LambdaResNets): every head's queries against one key and one value shared
# by all heads; the key's softmax over positions sums the values into a linear map (the content
# lambda), and a 3-d convolution over the values (or a relative position embedding) makes a
# position lambda at each position. The output holds every head's answer, head-major over the values


def lambda_layer_trace(self, x: torch.Tensor) -> torch.Tensor:
    """timm's ``LambdaLayer`` for the tracer: its output is a copy of the values for every head
    (channel ``h * dim_v + v`` answers with value ``v``), and a channel of every head's query, of
    the key and of the position lambda are coupled to each other and end inside the layer
    (``held(..., cut=True)``). The qkv's group holds both in runs: a unit is one such query-key
    channel with ``dim_v / dim_qk`` values. The convolution runs on a stand-in for the values,
    laid out as timm's forward lays them out, so that its MACs count and its input is coupled to
    no channel. timm's reshapes mapped the values onto positions, and every lambda layer was left
    whole."""
    batch, _, height, width = x.shape
    heads, dim = self.num_heads, self.dim_qk
    root_first(self.qkv)
    q, k, v = split_channels(self.qkv(x), [heads * dim, dim, self.dim_v])
    q, v = self.norm_q(q), self.norm_v(v)
    units = k + sum(q.narrow(1, h * dim, dim) for h in range(heads))
    if self.conv_lambda is not None:
        units = units + self.conv_lambda(v.new_zeros(batch, 1, height, width, v.shape[1])).mean(-1)
    else:
        units = units + self.pos_emb[0, 0, :, None, None]
    copies = [v * 1 for _ in range(heads)]  # a node each: the tracer maps a concatenation's parts by node
    return self.pool(concat_channels(copies, 1) + held(units, cut=True))


def lambda_layer_forward(self, x: torch.Tensor) -> torch.Tensor:
    """A pruned ``LambdaLayer``: the same lambdas at its widths (timm reshapes its output to its
    input's width)."""
    batch, _, height, width = x.shape
    q, k, v = self.qkv(x).split([self.num_heads * self.dim_qk, self.dim_qk, self.dim_v], dim=1)
    q = self.norm_q(q).flatten(2).unflatten(1, (self.num_heads, self.dim_qk))  # [batch, heads, dim_qk, positions]
    k = k.flatten(2).softmax(dim=-1)
    v = self.norm_v(v)
    out = torch.einsum("bhkn,bkv->bhvn", q, torch.einsum("bkn,bvn->bkv", k, v.flatten(2)))
    if self.conv_lambda is not None:
        position = self.conv_lambda(v.permute(0, 2, 3, 1).unsqueeze(1)).flatten(2, 3)  # [batch, dim_qk, positions, dim_v]
    else:
        embedding = self.pos_emb[self.rel_pos_indices[0], self.rel_pos_indices[1]]  # [positions, positions, dim_qk]
        position = torch.einsum("nmk,bvm->bknv", embedding, v.flatten(2))
    out = out + torch.einsum("bhkn,bknv->bhvn", q, position)
    return self.pool(out.reshape(batch, -1, height, width))


class PrunedLambdaLayer(lambda_layer.LambdaLayer):
    forward = lambda_layer_forward


def resize_lambda_layer(module: nn.Module, cut) -> None:
    """The query-key and value widths, which the forward splits and reshapes to."""
    module.dim_qk = module.norm_q.num_features // module.num_heads
    module.dim_v = module.norm_v.num_features


# LowFormer and CPUBone: attention on a strided depthwise convolution of the map, a 1x1
# convolution laying out its heads a head at a time (``[heads, (q, k, v), head_dim]``), upsampled back


def _conv_attention(self, x: torch.Tensor, trace: bool) -> torch.Tensor:
    """LowFormer's and CPUBone's ``ConvAttention`` at any widths (timm reshapes to the ones it was
    built with), at the scale it was built with; for the tracer, its values (``value_heads``)."""
    height, width = x.shape[-2:]
    if getattr(self, "small_kernels", False) and self.att_stride > 1:
        x = _padded_to(x, self.att_stride)  # CPUBone's reduced projection rounds down
    qkv = self.pwise(self.conv_proj(x))
    batch, _, rows, cols = qkv.shape
    if trace:
        values = value_heads(qkv, Layout(self.num_heads, self.head_dim, 3, True), 1)
    else:
        q, k, v = qkv.reshape(batch, self.num_heads, -1, rows * cols).transpose(-1, -2).chunk(3, dim=-1)
        values = F.scaled_dot_product_attention(q, k, v, scale=self.scale).transpose(-1, -2).reshape(batch, -1, rows, cols)
    return self.upsampling(self.o_proj(values))[..., :height, :width]


class PrunedLowFormerAttention(lowformer.ConvAttention):
    forward = partialmethod(_conv_attention, trace=False)


class PrunedCPUBoneAttention(cpubone.ConvAttention):
    forward = partialmethod(_conv_attention, trace=False)


def fix_conv_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """``fix_head_dims``, and the width of the attention's output."""
    fix_head_dims(module, heads, dims)
    module.o_proj_inpdim = len(heads) * len(dims)


# Next-ViT: attention with separate query, key and value layers, its keys and values from tokens
# average-pooled ``sr_ratio``^2 at a time


def efficient_attention_forward(self, x: torch.Tensor) -> torch.Tensor:
    """A pruned Next-ViT ``EfficientAttention``'s forward (timm reshapes to the head dim it was
    built with, and its output to its input's width). The tracer follows timm's own."""
    q = split_heads(self.q(x), self.num_heads)
    if self.sr is not None:
        x = self.norm(self.sr(x.transpose(1, 2))).transpose(1, 2)
    k, v = split_heads(self.k(x), self.num_heads), split_heads(self.v(x), self.num_heads)
    return project(self, attend(self, q, k, v).transpose(1, 2).flatten(2))


class PrunedEfficientAttention(nextvit.EfficientAttention):
    forward = efficient_attention_forward


# NesT: attention within image blocks (``[batch, blocks, tokens, channels]``), its output laid out
# head dim first (``[head_dim, heads]``) where its values are heads first


def nest_attention_trace(self, x: torch.Tensor) -> torch.Tensor:
    """NesT's ``Attention`` for the tracer: the blocks' tokens flattened, each value channel to the
    output projection where timm's transpose puts it (head dim first). The tracer could not follow
    timm's reshapes, and left every qkv whole."""
    qkv = self.qkv(x.flatten(1, 2))
    width = qkv.shape[-1] // 3
    head_dim = width // self.num_heads
    values = concat_channels([qkv[:, :, 2 * width + d : 3 * width : head_dim] for d in range(head_dim)], 2)  # a head dim of every head
    return self.proj_drop(self.proj(values)).reshape(*x.shape[:-1], -1)


def nest_attention_forward(self, x: torch.Tensor) -> torch.Tensor:
    """A pruned NesT ``Attention``'s forward: timm's, its head dim read from the qkv's width (timm
    takes it from the input's) and its scale as built."""
    batch, blocks, tokens, _ = x.shape
    q, k, v = self.qkv(x).reshape(batch, blocks, tokens, 3, self.num_heads, -1).permute(3, 0, 4, 1, 2, 5)  # [batch, heads, blocks, tokens, head_dim]
    x = attend(self, q, k, v)
    return self.proj_drop(self.proj(x.permute(0, 2, 3, 4, 1).flatten(3)))


class PrunedNestAttention(nest.Attention):
    forward = nest_attention_forward


# MobileNetV4's and V5's multi-query attention: every head's query (queries possibly pooled) against
# one key and one value shared by all heads (possibly from a strided map), on the feature map


def multi_query_attention_trace(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """timm's ``MultiQueryAttention2d`` for the tracer: each head's query added to the key and the
    value (of the first token: they may come from a strided map), channel by channel, and those
    into the output. A unit is then one head dim: a channel of every head's query, of the key, of
    the value and of the output's every head (the heads, all answered by one key and value, stay).
    The tracer mapped channels through timm's reshapes onto tokens, and left every one whole.
    Where the values are not as wide as the keys, timm's own forward (they stay whole)."""
    if self.key_dim != self.value_dim:
        return type(self).forward(self, x, attn_mask)
    root_first(self.query.proj)
    q, k, v = self.query(x), self.key(x)[:, :, :1, :1], self.value(x)[:, :, :1, :1]
    pieces = [q.narrow(1, h * self.key_dim, self.key_dim) + k + v for h in range(self.num_heads)]
    return self.output(concat_channels(pieces, 1))


def resize_multi_query_attention(module: nn.Module, cut) -> None:
    """``key_dim`` and ``value_dim``, which timm's forward reshapes to, and ``scale``
    (``rescale_queries``: timm's fused path scales by the key width it finds)."""
    module.key_dim, module.value_dim = module.key.proj.out_channels, module.value.proj.out_channels
    rescale_queries(module, module.key_dim, query=module.query.proj)


# EfficientFormer-V2: attention on the feature map with separate query, key and value layers (the
# values a whole number of times as wide, LeViT's way), a bias per head, talking heads, and a
# depthwise convolution of the values added to the output; its downsampling attention alike, its
# queries (and the values' convolution) strided, without talking heads


def _efficientformerv2_heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Each head's query and key added to each query-wide slice of its values, channel by channel
    (see ``levit_downsample_trace``)."""
    pick = lambda t, start: t.narrow(1, start, self.key_dim)  # noqa: E731
    pieces = [pick(q, h * self.key_dim) + pick(k, h * self.key_dim) + pick(v, h * self.d + s) for h in range(self.num_heads)
              for s in range(0, self.d, self.key_dim)]
    return concat_channels(pieces, 1)


def efficientformerv2_attention_trace(self, x: torch.Tensor) -> torch.Tensor:
    """EfficientFormer-V2's ``Attention2d`` for the tracer (``_efficientformerv2_heads``, plus the
    values' depthwise convolution); the talking heads run on a stand-in map, so that their MACs
    count, and are cut with the heads. The queries root the group (the depthwise convolution, met
    first, would root it otherwise, and a group is cut by head from an attention's projection)."""
    if self.stride_conv is not None:
        x = self.stride_conv(x)
    q, k, v = self.q(x), self.k(x), self.v(x)
    root_first(self.q.conv)
    self.talking_head2(self.talking_head1(q.new_zeros(q.shape[0], self.num_heads, self.N, self.N)))
    x = _efficientformerv2_heads(self, q, k, v) + self.v_local(v)
    if self.upsample is not None:
        x = self.upsample(x)
    return self.proj(self.act(x))


def efficientformerv2_downsample_trace(self, x: torch.Tensor) -> torch.Tensor:
    """EfficientFormer-V2's ``Attention2dDownsample`` for the tracer (``_efficientformerv2_heads`` on
    the keys and values of the first token only: the queries are strided, plus the values' strided
    depthwise convolution). The tracer mapped channels through timm's reshapes onto tokens, and
    left the stage's last downsampling whole."""
    q, k, v = self.q(x), self.k(x), self.v(x)
    root_first(self.q.proj.conv)
    corner = lambda t: t[:, :, :1, :1]  # noqa: E731
    x = _efficientformerv2_heads(self, q, corner(k), corner(v)) + self.v_local(v)
    return self.proj(self.act(x))


def _paired_values(values: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> list[torch.Tensor]:
    """For the tracer, the values of an attention whose queries and keys are narrower: the first of
    them with each query and key channel added, channel by channel (a value channel goes with
    them; any would do), and the rest on their own, as pieces to concatenate (iFormer, SHViT: their
    values a part of a marked split)."""
    paired, width = q.shape[1], values.shape[1]
    if width == paired:
        return [values + q + k]
    first, rest = split_channels(values, [paired, width - paired])
    return [first + q + k, rest]


# iFormer: single-head attention on the feature map, its query and key layers (1x1 convolutions with
# a BN) narrower than its values, which a gate of their width multiplies (the values and the gate
# are the two halves of one layer's sigmoid)


def single_head_modulation_trace(self, x: torch.Tensor) -> torch.Tensor:
    """iFormer's ``SHMA`` for the tracer: the query and key added, channel by channel, to the first
    of the values (those pair one with each query channel; the rest go on their own), gated, into
    the output projection. The map is padded to whole windows where timm partitions it (each 1x1
    layer counts the same MACs on the padded map as on its windows). The tracer mapped channels
    through timm's flatten onto tokens, and left every attention whole. Where the query is wider
    than the values (no timm config builds one), timm's own forward: the attention stays whole."""
    height, width = x.shape[2:]
    if self.q.c.out_channels > self.v_gate.c.out_channels // 2:
        return type(self).forward(self, x)
    if self.window_size:
        x = _padded_to(x, self.window_size)
    v, gate = split_channels(self.gate_act(self.v_gate(x)), 2)
    pieces = _paired_values(v, self.q(x), self.k(x))
    v = concat_channels(pieces, 1) if len(pieces) > 1 else pieces[0]
    return self.proj(v * gate)[:, :, :height, :width]


def resize_single_head_modulation(module: nn.Module, cut) -> None:
    """``scale`` (``rescale_queries``, folded into the query's BN: timm's fused path scales by the
    query width it finds)."""
    rescale_queries(module, module.q.c.out_channels, query=module.q.bn)


# SHViT: single-head attention on the first channels of the map (the rest pass by it), its query
# and key narrower than its values, its output concatenated with the channels that passed by


def _single_head_self_attention(self, x: torch.Tensor, trace: bool) -> torch.Tensor:
    """SHViT's ``SHSA`` at any widths (timm splits the map, the qkv and the values at the ones it
    was built with), read from its layers. For the tracer, the query and key added, channel by
    channel, to the first of the values (the rest go on their own), with marked splits and
    concatenation; the tracer could not follow timm's reshape, and no SHViT traced."""
    split, cat = (split_channels, concat_channels) if trace else (lambda t, sizes: t.split(sizes, 1), torch.cat)
    x1, x2 = split(x, [self.qkv.c.in_channels, x.shape[1] - self.qkv.c.in_channels])
    qkv = self.qkv(self.pre_norm(x1))
    values = self.proj[1].c.in_channels - x2.shape[1]
    paired = (qkv.shape[1] - values) // 2
    q, k, v = split(qkv, [paired, paired, values])
    if trace:
        return self.proj(cat([*_paired_values(v, q, k), x2], 1))
    attn = ((q.flatten(2).transpose(-2, -1) @ k.flatten(2)) * self.scale).softmax(dim=-1)
    x1 = (v.flatten(2) @ attn.transpose(-2, -1)).reshape(v.shape)
    return self.proj(cat([x1, x2], 1))


class PrunedSHSA(shvit.SHSA):
    forward = partialmethod(_single_head_self_attention, trace=False)


# CoaT: factorized attention (each head's keys, softmaxed over the tokens, contracted with its
# values, then its queries with that) plus a convolutional relative position encoding (the values'
# image tokens through a depthwise convolution, a window size for each run of heads, times the
# queries), which is one module a stage, shared by its blocks' attention


def _image_of(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The image tokens of ``[batch, 1 + height * width, channels]`` as a map."""
    return x[:, 1:].transpose(1, 2).reshape(x.shape[0], x.shape[2], *size)


def _class_token_joined(x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """For the tracer, ``x``'s class token and the map ``image`` as tokens, joined by padding
    each to the other's tokens and adding: Torch-Pruning reads timm's concatenation of tokens (dim
    1 of ``[batch, tokens, channels]``) as one of channels, and failed to find the class token's
    width (no CoaT with parallel blocks traced)."""
    image = image.flatten(2).transpose(1, 2)
    return F.pad(x[:, :1], (0, 0, 0, image.shape[1])) + F.pad(image, (0, 0, 1, 0))


def factor_attention_trace(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """CoaT's ``FactorAttnConvRelPosEnc`` for the tracer. A head dim is one channel of the queries,
    the keys and the values (the queries meet the keys in the factorized attention and the
    encoded values in the position encoding), so the three are added channel by channel into the
    output projection, with the values' image tokens through the position encoding's convolutions
    (marked splits and concatenation). Those convolutions, shared by a stage's blocks, couple their
    heads and head dims: every block of a stage loses the same ones. Its qkv roots the group
    (``root_first``), which is then cut by head."""
    root_first(self.qkv)
    qkv = self.qkv(x)
    width = qkv.shape[-1] // 3
    q, k, v = qkv[..., :width], qkv[..., width : 2 * width], qkv[..., 2 * width :]
    convs, sizes = zip(*((conv, n) for conv, n in zip(self.crpe.conv_list, self.crpe.channel_splits) if n))  # a window may have lost its heads
    encoded = concat_channels([conv(part) for conv, part in zip(convs, split_channels(_image_of(v, size), sizes))], 1)
    return project(self, q + k + v + F.pad(encoded.flatten(2).transpose(1, 2), (0, 0, 1, 0)))


def factor_attention_forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A pruned ``FactorAttnConvRelPosEnc``: timm reshapes to the input's width."""
    batch, tokens, _ = x.shape
    q, k, v = split_heads(self.qkv(x), self.num_heads, 3)
    factored = q @ (k.softmax(dim=2).transpose(-1, -2) @ v)
    x = self.scale * factored + self.crpe(q, v, size=size)
    return project(self, x.transpose(1, 2).reshape(batch, tokens, -1))


class PrunedFactorAttnConvRelPosEnc(coat.FactorAttnConvRelPosEnc):
    forward = factor_attention_forward


def conv_rel_pos_enc_forward(self, q: torch.Tensor, v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A pruned ``ConvRelPosEnc``: a window whose heads are all gone is passed by (its convolution
    has no channels left)."""
    batch, heads, _, head_dim = q.shape
    image = v[:, :, 1:].transpose(-1, -2).reshape(batch, heads * head_dim, *size)
    parts = image.split(self.channel_splits, dim=1)
    encoded = torch.cat([conv(part) if part.shape[1] else part for conv, part in zip(self.conv_list, parts)], dim=1)
    encoded = encoded.reshape(batch, heads, head_dim, -1).transpose(-1, -2)
    return F.pad(q[:, :, 1:] * encoded, (0, 0, 1, 0))


class PrunedConvRelPosEnc(coat.ConvRelPosEnc):
    forward = conv_rel_pos_enc_forward


def resize_conv_rel_pos_enc(module: nn.Module, cut) -> None:
    """``head_splits``, ``channel_splits`` and ``window``: the heads each window's convolution
    keeps (a head is gone where all its channels are), and their channels."""
    for i, (heads, width) in enumerate(zip(module.head_splits, module.channel_splits)):
        if heads:
            gone = torch.isin(torch.arange(width), torch.tensor(cut(f"conv_list.{i}"), dtype=torch.long))
            module.head_splits[i] = heads - int(gone.view(heads, -1).all(dim=1).sum())
    module.channel_splits = [conv.out_channels for conv in module.conv_list]
    module.window = dict(zip(module.window, module.head_splits))


def conv_pos_enc_trace(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """CoaT's ``ConvPosEnc`` (a depthwise convolution added to the image tokens) for the tracer."""
    image = _image_of(x, size)
    return _class_token_joined(x, self.proj(image) + image)


def coat_trace(self, x: torch.Tensor):
    """CoaT for the tracer. With parallel blocks, its head aggregates the last three scales' class
    tokens (or mean tokens) with a ``Conv1d`` that takes the scales as its channels, which the
    tracer coupled to the features' channels. A channel of the three goes with the others, so they
    are added channel by channel into the classifier; the ``Conv1d`` runs on a stand-in, so that its
    MACs count."""
    features = self.forward_features(x)
    if not isinstance(features, list):  # CoaT-Lite's last scale, or the intermediate features
        return features if isinstance(features, dict) else self.forward_head(features)
    pooled = [f[:, 1:].mean(dim=1) if self.global_pool == "avg" else f[:, 0] for f in features]
    self.aggregate(pooled[0].new_zeros(pooled[0].shape[0], len(pooled), pooled[0].shape[1]))
    return self.head(self.head_drop(sum(pooled)))


def fix_efficientformerv2_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """The widths ``Attention2d`` and ``Attention2dDownsample`` read (the values keep their ratio
    to the keys), the talking heads' widths, and no attention bias cached at the old head count."""
    ratio = module.d // module.key_dim
    module.num_heads, module.key_dim = len(heads), len(dims)
    module.d = ratio * module.key_dim
    module.dh = module.d * module.num_heads
    for layer in (getattr(module, "talking_head1", None), getattr(module, "talking_head2", None)):
        if layer is not None:
            layer.in_channels = layer.out_channels = len(heads)
    module.attention_bias_cache = {}


def efficientformerv2_fixed(model: nn.Module, module: nn.Module) -> dict[str, str]:
    if module.d % module.key_dim:
        return dict.fromkeys(("heads", "head_dim"), "its values are not a whole number of times as wide as its keys")
    return {}


TALKING_HEADS_2D = tuple((f"{layer}.{param}", dim) for layer in ("talking_head1", "talking_head2") for param, dim in (("weight", 0), ("weight", 1), ("bias", 0)))
"""EfficientFormer-V2's talking heads: 1x1 convolutions that map heads to heads."""


# Visformer: attention on the feature map, its qkv and output projection 1x1 convolutions


def visformer_attention_trace(self, x: torch.Tensor) -> torch.Tensor:
    """Visformer's attention for the tracer: each head's values into the output projection, on
    the map (the tracer maps channels through timm's reshape onto ones the projection lacks)."""
    return project(self, value_heads(self.qkv(x), Layout(self.num_heads, self.head_dim, 3), 1))


# TinyViT: window attention, pre-normed inside, laid out a head at a time ([query, key, value] in
# the fused qkv), with an attention bias per head


def tiny_vit_attention_trace(self, x: torch.Tensor) -> torch.Tensor:
    """TinyViT's attention for the tracer: each head's values into the output projection (the
    tracer maps channels through timm's view and split as if nothing moved)."""
    qkv = self.qkv(self.norm(x))
    return self.proj(value_heads(qkv, Layout(self.num_heads, self.key_dim, 3, heads_first=True), 2))


def fix_tiny_vit_attention(module: nn.Module, heads: list[int], dims: list[int]) -> None:
    """The widths TinyViT's attention reads, no attention bias cached at the old head count, and
    ``scale`` (``rescale_queries``: timm's fused path scales by the head dim)."""
    module.num_heads, module.key_dim = len(heads), len(dims)
    module.val_dim = module.key_dim
    module.out_dim = module.val_dim * module.num_heads
    module.attention_bias_cache = {}
    rescale_queries(module, len(dims), heads_first=True)


def tiny_vit_fixed(model: nn.Module, module: nn.Module) -> dict[str, str]:
    if module.val_dim != module.key_dim:
        return dict.fromkeys(("heads", "head_dim"), "its values are not as wide as its keys")
    return {}


def rexnet_block_trace(self, x: torch.Tensor) -> torch.Tensor:
    """ReXNet's block for the tracer: its input added to the first of its wider outputs, written
    as a marked split and concatenation (Torch-Pruning's mapping of timm's slices never ends)."""
    shortcut = x
    if self.conv_exp is not None:
        x = self.conv_exp(x)
    x = self.conv_dw(x)
    if self.se is not None:
        x = self.se(x)
    x = self.conv_pwl(self.act_dw(x))
    if not self.use_shortcut:
        return x
    if self.drop_path is not None:
        x = self.drop_path(x)
    kept, new = split_channels(x, [shortcut.shape[1], x.shape[1] - shortcut.shape[1]])
    return concat_channels([kept + shortcut, new], 1)


def resize_rexnet_block(module: nn.Module, cut) -> None:
    """ReXNet's block: the input width its forward adds the shortcut at, and its output width."""
    module.in_channels = (module.conv_exp or module.conv_dw).conv.in_channels
    module.out_channels = module.conv_pwl.conv.out_channels


def dual_path_trace(self, x: torch.Tensor) -> torch.Tensor:
    """DPN's block for the tracer: the residual and dense paths split off its input (or its
    projection) and off its last layer's output (DPN-b has a layer for each) with marked splits,
    and the output concatenated with a marked concatenation. timm splits at the residual width
    ``num_1x1_c``, which a pruned block keeps up to date (``resize_dual_path_block``)."""
    proj = self.c1x1_w_s1 or self.c1x1_w_s2
    x_s = x if proj is None else proj(x)
    residual, dense = split_channels(x_s, [self.num_1x1_c, x_s.shape[1] - self.num_1x1_c])
    x = self.c1x1_c(self.c3x3_b(self.c1x1_a(x)))
    if self.b:
        out_residual, out_dense = self.c1x1_c1(x), self.c1x1_c2(x)
    else:
        out_residual, out_dense = split_channels(x, [self.num_1x1_c, x.shape[1] - self.num_1x1_c])
    return concat_channels([residual + out_residual, dense, out_dense], 1)


def resize_dual_path_block(module: nn.Module, cut) -> None:
    """DPN's block: the residual width its forward splits at, and the dense increment. DPN-b has
    a layer for each; otherwise one layer makes both, the residual channels first, and the width
    is the residual channels it kept."""
    if module.b:
        module.num_1x1_c, module.inc = module.c1x1_c1.out_channels, module.c1x1_c2.out_channels
    else:
        module.num_1x1_c -= sum(i < module.num_1x1_c for i in cut("c1x1_c.conv"))
        module.inc = module.c1x1_c.conv.out_channels - module.num_1x1_c


def partial_conv_trace(self, x: torch.Tensor) -> torch.Tensor:
    """FasterNet's partial convolution for the tracer: the channels it convolves split off the
    others with a marked split, and the two concatenated again."""
    convolved, kept = split_channels(x, [self.dim_conv3, x.shape[1] - self.dim_conv3])
    return concat_channels([self.partial_conv3(convolved), kept], 1)


def resize_partial_conv_block(module: nn.Module, cut) -> None:
    """FasterNet's block: its partial convolution splits the block's input at the convolution's
    width and passes the rest as it is (the block's width, its MLP's output)."""
    mixing = module.spatial_mixing
    mixing.dim_conv3 = mixing.partial_conv3.in_channels
    mixing.dim_untouched = module.mlp[-1].out_channels - mixing.dim_conv3


def mixed_conv_trace(self, x: torch.Tensor) -> torch.Tensor:
    """MixNet's mixed convolution for the tracer: each part of the channels through its own
    convolution (a kernel size each), split and concatenated with marks."""
    parts = split_channels(x, self.splits)
    return concat_channels([conv(part) for conv, part in zip(self.values(), parts)], 1)


def resize_mixed_conv(module: nn.Module, cut) -> None:
    """MixNet's mixed convolution: the parts it splits its input in, its convolutions' widths."""
    convs = list(module.values())
    module.splits = [conv.in_channels for conv in convs]
    module.in_channels, module.out_channels = sum(module.splits), sum(conv.out_channels for conv in convs)


def resize_blur_pool(module: nn.Module, cut) -> None:
    """timm's ``BlurPool2d`` holds one copy of its filter per channel it was built for; every
    copy is the same, so a pruned one keeps a single copy and spreads it over its input's channels."""
    if module.channels is not None:
        module.channels, module.filt = None, module.filt[:1]


# CSPNet: a cross stage splits its expanded channels in halves, one through its blocks and one
# around them; a pruned stage splits them where its blocks' first layer says


def _cross_stage(self, x: torch.Tensor, trace: bool) -> torch.Tensor:
    """CSPNet's ``CrossStage``: the first part around the blocks, the second through them and
    their transition, the two concatenated."""
    x = self.conv_exp(self.conv_down(x))
    through = self.blocks[0].conv1.conv.in_channels
    sizes = [x.shape[1] - through, through]
    around, inner = split_channels(x, sizes) if trace else x.split(sizes, 1)
    parts = [around, self.conv_transition_b(self.blocks(inner)).contiguous()]
    return self.conv_transition(concat_channels(parts, 1) if trace else torch.cat(parts, 1))


def _cross_stage3(self, x: torch.Tensor, trace: bool) -> torch.Tensor:
    """CSPNet's ``CrossStage3``: the first part through the blocks, the second around them."""
    x = self.conv_exp(self.conv_down(x))
    through = self.blocks[0].conv1.conv.in_channels
    sizes = [through, x.shape[1] - through]
    inner, around = split_channels(x, sizes) if trace else x.split(sizes, 1)
    parts = [self.blocks(inner), around]
    return self.conv_transition(concat_channels(parts, 1) if trace else torch.cat(parts, 1))


class PrunedCrossStage(cspnet.CrossStage):
    forward = partialmethod(_cross_stage, trace=False)


class PrunedCrossStage3(cspnet.CrossStage3):
    forward = partialmethod(_cross_stage3, trace=False)


# ResNeSt: split attention sums a convolution's radix splits, and weighs each with its own slice
# of the attention, laid out [cardinality, radix, channels]


def _softmax_weighed(parts: list[torch.Tensor], logits: list[torch.Tensor]) -> torch.Tensor:
    """``sum_i parts[i] * softmax(logits)[i]``, the softmax across the parts written elementwise:
    the tracer reads timm's reshape to ``[..., parts, channels]`` as one of channels."""
    scores = [logit.exp() for logit in logits]
    total = sum(scores[1:], scores[0])
    return sum(part * score / total for part, score in zip(parts, scores))


def split_attention_trace(self, x: torch.Tensor) -> torch.Tensor:
    """ResNeSt's split attention for the tracer: the radix splits and the attention's slices
    taken with marked splits (the tracer reads timm's reshapes as ones of channels), each split
    weighed with its slices' softmax over the radix, written elementwise."""
    if self.radix == 1:
        return type(self).forward(self, x)
    x = self.act0(self.drop(self.bn0(self.conv(x))))
    splits = split_channels(x, self.radix)
    gap = sum(splits[1:], splits[0]).mean((2, 3), keepdim=True)
    pieces = split_channels(self.fc2(self.act1(self.bn1(self.fc1(gap)))), self.rsoftmax.cardinality * self.radix)
    return _softmax_weighed(splits, [concat_channels(list(pieces[r :: self.radix]), 1) for r in range(self.radix)])


# SKNet: a selective kernel runs its paths (kernel sizes) on its input (or each on a part of
# it) and weighs them per channel with a softmax over the paths, laid out [paths, channels]


def _selective_kernel(self, x: torch.Tensor, trace: bool) -> torch.Tensor:
    """timm ``SelectiveKernel``, its input split where its paths' widths say (timm splits it in
    equal parts); for the tracer the split and the attention's slices are marked, and the softmax
    over the paths is written elementwise."""
    if trace:
        root_first(self.paths[0].conv)
    if self.split_input:
        sizes = [path.conv.in_channels for path in self.paths]
        parts = split_channels(x, sizes) if trace else x.split(sizes, 1)
        paths = [path(part) for path, part in zip(self.paths, parts)]
    else:
        paths = [path(x) for path in self.paths]
    if not trace:
        stacked = torch.stack(paths, dim=1)
        return torch.sum(stacked * self.attn(stacked), dim=1)
    attn = self.attn
    gap = sum(paths[1:], paths[0]).mean((2, 3), keepdim=True)
    return _softmax_weighed(paths, split_channels(attn.fc_select(attn.act(attn.bn(attn.fc_reduce(gap)))), self.num_paths))


class PrunedSelectiveKernel(selective_kernel.SelectiveKernel):
    forward = partialmethod(_selective_kernel, trace=False)


# ECA: a gate per channel, from a 1-d convolution that slides along the channels' means


def channel_conv_gate_trace(self, x: torch.Tensor) -> torch.Tensor:
    """ECA's and CECA's gate for the tracer, computed as timm does but detached: the tracer reads
    the views that put the channels on the 1-d convolution's length axis and back as one channel
    mapped onto all, and left each network's stage widths whole. Each channel passes through the
    gate as it is, and the gate's layers, whose weights hold no channel, stay as they are. A pruned
    gate's kernel slides over the kept channels only, so channels that met a removed one have new
    neighbours: it does not compute what a zeroed one does."""
    y = x.mean((2, 3))[:, None]
    if isinstance(self, eca.CecaModule):
        y = F.pad(y, (self.padding, self.padding), mode="circular")
    y = self.conv(y)
    if getattr(self, "conv2", None) is not None:
        y = self.conv2(self.act(y))
    return x * self.gate(y).view(x.shape[0], -1, 1, 1).detach()


# EvoNorm's sample variants (S0, S0a, S1, S2 and theirs): a norm that divides each channel by a
# statistic of its group of channels


def evo_norm_trace(self, x: torch.Tensor) -> torch.Tensor:
    """An EvoNorm S layer for the tracer: its weights, channel by channel, without the statistic
    it divides by, which the tracer reads through timm's reshape to ``[groups, channels / groups]``
    as channels mapped onto others (it left every layer before such a norm whole). The statistic
    holds no weight; the groups it is taken over keep equal widths instead (``evo_norm_runs``)."""
    shape = (1, -1, 1, 1)
    if getattr(self, "v", None) is not None:
        x = x * (x * self.v.view(shape)).sigmoid()
    return x * self.weight.view(shape) + self.bias.view(shape)


def evo_norm_runs(module: nn.Module) -> dict[str, int]:
    """An EvoNorm S layer's groups: each keeps as many channels as the others, as a GroupNorm's."""
    return {"weight": module.groups}


# MLP-Mixer, ResMLP, gMLP: layers that mix tokens, run on the transposed map


def mixer_block_trace(self, x: torch.Tensor) -> torch.Tensor:
    x = x + self.drop_path(mix_tokens(self.mlp_tokens, self.norm1(x)))
    return x + self.drop_path(self.mlp_channels(self.norm2(x)))


def res_block_trace(self, x: torch.Tensor) -> torch.Tensor:
    x = x + self.drop_path(self.ls1 * mix_tokens(self.linear_tokens, self.norm1(x)))
    return x + self.drop_path(self.ls2 * self.mlp_channels(self.norm2(x)))


def spatial_gating_trace(self, x: torch.Tensor) -> torch.Tensor:
    """gMLP's gate: its halves split as channels, the gating half mixed over the tokens."""
    u, v = split_channels(x.transpose(1, 2), 2)
    return u.transpose(1, 2) * mix_tokens(self.proj, self.norm(v.transpose(1, 2)))


def register() -> None:
    register_attention(
        cait.TalkingHeadAttn,
        AttentionSpec(qkv="qkv", fixup=fix_talking_head_attention, head_params=TALKING_HEADS, pruned=PrunedTalkingHeadAttn),
    )
    register_trace_forward(cait.TalkingHeadAttn, talking_head_attention_trace)
    register_attention(cait.ClassAttn, AttentionSpec(qkv="qkv", separate=("q", "k", "v"), fixup=fix_num_heads, pruned=PrunedClassAttn))
    register_trace_forward(cait.ClassAttn, class_attention_trace)
    register_attention(
        attention_pool.AttentionPoolLatent,
        AttentionSpec(qkv="qkv", separate=("q", "kv"), fixup=fix_head_dims, fixed=latent_pool_fixed, pruned=PrunedAttentionPoolLatent),
    )
    register_attention(vision_transformer_sam.Attention, AttentionSpec(qkv="qkv", fixup=fix_scaled_head_dims, fixed=sam_attention_fixed))
    register_attention(hieradet_sam2.MultiScaleAttention, AttentionSpec(qkv="qkv", fixup=fix_multiscale_attention))
    register_attention(mvitv2.MultiScaleAttention, AttentionSpec(qkv="qkv", fixup=fix_multiscale_attention, fixed=mvit_fixed))
    register_trace_forward(mvitv2.MultiScaleAttention, multiscale_vit_attention_trace)
    register_attention(
        gemma4_vit.Gemma4Attention,
        AttentionSpec(qkv="qkv", separate=("q_proj.linear", "k_proj.linear", "v_proj.linear"), fixup=fix_gemma4_attention, fixed=gemma4_attention_fixed),
    )
    register_trace_forward(gemma4_vit.Gemma4Attention, gemma4_attention_trace)
    register_mlp(gemma4_vit.Gemma4GatedMlp)
    for cls in (vision_transformer_sam.Attention, hieradet_sam2.MultiScaleAttention):
        register_trace_forward(cls, map_attention_values_trace)
    register_attention(
        attention_pool2d.AttentionPool2d,
        AttentionSpec(qkv="qkv", separate=("q", "k", "v"), fixup=fix_attention_pool_2d, pruned=PrunedAttentionPool2d),
    )
    register_attention(
        vision_transformer_relpos.RelPosAttention,
        AttentionSpec(qkv="qkv", fixup=fix_rel_pos_attention, head_params=rel_pos_head_params, fixed=rel_pos_attention_fixed,
                      pruned=PrunedRelPosAttention),
    )
    register_trace_forward(vision_transformer_relpos.RelPosAttention, rel_pos_attention_trace)
    register_attention(
        diff_attention.DiffAttention,
        AttentionSpec(qkv="qkv", fixup=fix_num_heads, fixed=diff_attention_fixed, pruned=PrunedDiffAttention),
    )
    register_trace_forward(diff_attention.DiffAttention, diff_attention_trace)
    register_attention(
        tiny_vit.Attention,
        AttentionSpec(qkv="qkv", fixup=fix_tiny_vit_attention, head_params=(("attention_biases", 0),), fixed=tiny_vit_fixed, heads_first=True),
    )
    register_trace_forward(tiny_vit.Attention, tiny_vit_attention_trace)
    register_mlp(tiny_vit.NormMlp)
    register_trace_forward(qwen3_vit.Qwen3VitPatchMerger, qwen_merger_trace)
    register_trace_forward(deepseek_vit.DeepseekVitAligner, deepseek_aligner_trace)
    register_trace_forward(global_context.GlobalContext, global_context_trace)
    register_trace_forward(CsatSpatialAttention, channel_statistics_attention_trace)
    register_trace_forward(efficientvim.HSMSSD, hidden_state_mixer_trace)
    register_resize(efficientvim.HSMSSD, resize_hidden_state_mixer)
    register_attention(fastvit.Attention, AttentionSpec(qkv="qkv", fixup=fix_head_dims, pruned=PrunedFastVitAttention))
    register_trace_forward(fastvit.Attention, fastvit_attention_trace)
    register_mlp(fastvit.ConvMlp)
    register_attention(bottleneck_attn.BottleneckAttn, AttentionSpec(qkv="qkv", fixup=fix_map_attention, fixed=map_attention_fixed))
    register_trace_forward(bottleneck_attn.BottleneckAttn, bottleneck_attention_trace)
    register_resize(bottleneck_attn.BottleneckAttn, resize_bottleneck_values)
    register_attention(
        halo_attn.HaloAttn, AttentionSpec(qkv="qkv", separate=("q", "kv"), heads_first=True, fixup=fix_map_attention, fixed=map_attention_fixed)
    )
    register_trace_forward(halo_attn.HaloAttn, halo_attention_trace)
    register_trace_forward(lambda_layer.LambdaLayer, lambda_layer_trace)
    register_pruned(lambda_layer.LambdaLayer, PrunedLambdaLayer)
    register_resize(lambda_layer.LambdaLayer, resize_lambda_layer)
    register_attention(
        efficientformer_v2.Attention2d,
        AttentionSpec(qkv="qkv", separate=("q.conv", "k.conv", "v.conv"), heads_first=True, query_dim=lambda m: m.key_dim,
                      head_params=(("attention_biases", 0), *TALKING_HEADS_2D), fixup=fix_efficientformerv2_attention,
                      fixed=efficientformerv2_fixed),
    )
    register_trace_forward(efficientformer_v2.Attention2d, efficientformerv2_attention_trace)
    register_attention(
        efficientformer_v2.Attention2dDownsample,
        AttentionSpec(qkv="qkv", separate=("q.proj.conv", "k.conv", "v.conv"), heads_first=True, query_dim=lambda m: m.key_dim,
                      head_params=(("attention_biases", 0),), fixup=fix_efficientformerv2_attention, fixed=efficientformerv2_fixed),
    )
    register_trace_forward(efficientformer_v2.Attention2dDownsample, efficientformerv2_downsample_trace)
    register_mlp(efficientformer_v2.ConvMlpWithNorm)
    register_attention(visformer.Attention, AttentionSpec(qkv="qkv", fixup=fix_scaled_head_dims))
    register_mlp(visformer.SpatialMlp)
    register_trace_forward(visformer.Attention, visformer_attention_trace)
    register_attention(
        nextvit.EfficientAttention, AttentionSpec(qkv="qkv", separate=("q", "k", "v"), fixup=fix_head_dims, pruned=PrunedEfficientAttention)
    )
    register_attention(nest.Attention, AttentionSpec(qkv="qkv", fixup=fix_num_heads, pruned=PrunedNestAttention))
    register_trace_forward(nest.Attention, nest_attention_trace)
    register_trace_forward(attention2d.MultiQueryAttention2d, multi_query_attention_trace)
    register_resize(attention2d.MultiQueryAttention2d, resize_multi_query_attention)
    register_trace_forward(iformer.SHMA, single_head_modulation_trace)
    register_resize(iformer.SHMA, resize_single_head_modulation)
    register_trace_forward(shvit.SHSA, partial(_single_head_self_attention, trace=True))
    register_pruned(shvit.SHSA, PrunedSHSA)
    register_attention(coat.FactorAttnConvRelPosEnc, AttentionSpec(qkv="qkv", fixup=fix_num_heads, pruned=PrunedFactorAttnConvRelPosEnc))
    register_trace_forward(coat.FactorAttnConvRelPosEnc, factor_attention_trace)
    register_pruned(coat.ConvRelPosEnc, PrunedConvRelPosEnc)
    register_resize(coat.ConvRelPosEnc, resize_conv_rel_pos_enc)
    register_trace_forward(coat.ConvPosEnc, conv_pos_enc_trace)
    register_trace_forward(coat.CoaT, coat_trace)
    register_trace_forward(mobilevit.LinearSelfAttention, linear_self_attention_trace)
    register_resize(mobilevit.LinearSelfAttention, resize_linear_self_attention)
    register_attention(
        vision_transformer.ParallelScalingBlock,
        AttentionSpec(qkv="in_proj", fixup=fix_parallel_block, fixed=lambda model, m: qk_norm_fixed(m), pruned=PrunedParallelScalingBlock,
                      offset=lambda m: m.in_split[0]),
    )
    register_attention(
        vision_transformer.DiffParallelScalingBlock,
        AttentionSpec(qkv="in_proj", fixup=fix_differential_parallel_block, fixed=diff_attention_fixed, pruned=PrunedDiffParallelScalingBlock,
                      offset=lambda m: m.in_split[0]),
    )
    for cls in (vision_transformer.ParallelScalingBlock, vision_transformer.DiffParallelScalingBlock):
        register_trace_forward(cls, parallel_block_trace)
    for cls, pruned in ((lowformer.ConvAttention, PrunedLowFormerAttention), (cpubone.ConvAttention, PrunedCPUBoneAttention)):
        register_attention(cls, AttentionSpec(qkv="pwise", heads_first=True, fixup=fix_conv_attention, pruned=pruned))
        register_trace_forward(cls, partial(_conv_attention, trace=True))
    register_attention(hiera.MaskUnitAttention, AttentionSpec(qkv="qkv", fixup=fix_mask_unit_attention, heads_attr="heads"))
    register_attention(crossvit.CrossAttention, AttentionSpec(qkv="qkv", separate=CROSS_ATTENTION, fixup=fix_num_heads, pruned=PrunedCrossAttention))
    register_trace_forward(crossvit.CrossAttention, partial(class_attention_trace, names=CROSS_ATTENTION))
    register_trace_forward(tnt.Block, tnt_block_trace)
    register_trace_forward(tnt.TNT, tnt_trace)
    register_attention(tnt.Attention, AttentionSpec(qkv="qkv", separate=("qk", "v"), fixup=fix_head_dims))
    register_trace_forward(tnt.Attention, tnt_attention_trace)
    register_resize(tnt.PixelEmbed, resize_pixel_embed)
    for cls, pruned in ((pvt_v2.Attention, PrunedPvtAttention), (twins.GlobalSubSampleAttn, PrunedGlobalSubSampleAttn)):
        register_attention(cls, AttentionSpec(qkv="qkv", separate=("q", "kv"), fixup=fix_reduction_attention, pruned=pruned))
        register_trace_forward(cls, reduction_attention_trace)
    register_attention(twins.LocallyGroupedAttn, AttentionSpec(qkv="qkv", fixup=fix_num_heads, pruned=PrunedLocallyGroupedAttn))
    register_trace_forward(twins.LocallyGroupedAttn, locally_grouped_attention_trace)
    register_mlp(pvt_v2.MlpWithDepthwiseConv)
    register_attention(
        convit.GPSA, AttentionSpec(qkv="qkv", separate=("qk", "v"), fixup=fix_gpsa, head_params=GPSA_HEADS, pruned=PrunedGPSA)
    )
    register_trace_forward(convit.GPSA, gpsa_trace)
    register_attention(convit.MHSA, AttentionSpec(qkv="qkv", fixup=fix_num_heads, pruned=PrunedMHSA))  # traced as timm's Attention
    register_attention(
        swin_cr.WindowMultiHeadAttention,
        AttentionSpec(qkv="qkv", fixup=fix_cosine_window_attention, head_params=COSINE_HEADS, fixed=cosine_fixed,
                      pruned=PrunedWindowMultiHeadAttention),
    )
    register_trace_forward(swin_cr.WindowMultiHeadAttention, cosine_window_attention_trace)
    register_attention(
        swinv2.WindowAttention,
        AttentionSpec(qkv="qkv", fixup=fix_swinv2_window_attention, head_params=SWINV2_HEADS, fixed=cosine_fixed,
                      pruned=PrunedSwinV2WindowAttention),
    )
    register_trace_forward(swinv2.WindowAttention, swinv2_window_attention_trace)
    register_trace_forward(swinv2.PatchMerging, post_norm_patch_merging_forward)
    register_trace_forward(swin_cr.PatchMerging, patch_merging_forward)  # Swin's, as timm writes it again
    register_trace_forward(edgenext.SplitTransposeBlock, partial(_split_transpose_block, trace=True))
    register_pruned(edgenext.SplitTransposeBlock, PrunedSplitTransposeBlock)
    register_trace_forward(efficientvit_mit.LiteMLA, lite_mla_trace)
    register_pruned(efficientvit_mit.LiteMLA, PrunedLiteMLA)
    register_trace_forward(efficientvit_msra.CascadedGroupAttention, cascaded_group_attention_trace)
    register_pruned(efficientvit_msra.CascadedGroupAttention, PrunedCascadedGroupAttention)
    register_trace_forward(efficientvit_msra.LocalWindowAttention, local_window_attention_trace)
    for cls, pruned in ((xcit.XCA, PrunedXCA), (edgenext.CrossCovarianceAttn, PrunedCrossCovarianceAttn)):
        register_attention(cls, AttentionSpec(qkv="qkv", fixup=fix_num_heads, head_params=(("temperature", 0),), pruned=pruned))
        register_trace_forward(cls, qkv_values_trace)
    register_attention(
        davit.ChannelAttentionV2,
        AttentionSpec(qkv="qkv", fixup=fix_channel_attention_v2, heads_attr="groups", pruned=PrunedChannelAttentionV2),
    )  # traced as timm's Attention
    for cls, pruned in ((davit.ChannelAttention, PrunedChannelAttention), (davit.WindowAttention, PrunedDavitWindowAttention)):
        register_attention(cls, AttentionSpec(qkv="qkv", fixup=fix_num_heads, pruned=pruned))  # traced as timm's Attention
    register_attention(
        volo.OutlookAttention,
        AttentionSpec(qkv="v", separate=("v",), fixup=fix_outlook_attention, head_layers=("attn",), pruned=PrunedOutlookAttention),
    )
    register_trace_forward(volo.OutlookAttention, outlook_attention_trace)
    register_attention(volo.Attention, AttentionSpec(qkv="qkv", fixup=fix_num_heads, pruned=PrunedVoloAttention))
    register_trace_forward(volo.Attention, map_attention_trace)
    register_attention(
        volo.ClassAttention, AttentionSpec(qkv="qkv", separate=("q", "kv"), fixup=fix_reduction_attention, pruned=PrunedVoloClassAttention)
    )
    register_trace_forward(volo.ClassAttention, volo_class_attention_trace)
    register_attention(
        gcvit.WindowAttentionGlobal,
        AttentionSpec(qkv="qkv", fixup=fix_global_context_attention, head_params=rel_pos_head_params, runs=global_key_runs,
                      pruned=PrunedWindowAttentionGlobal),
    )
    register_trace_forward(gcvit.WindowAttentionGlobal, global_context_attention_trace)
    register_trace_forward(focalnet.FocalModulation, partial(_focal_modulation, trace=True))
    register_pruned(focalnet.FocalModulation, PrunedFocalModulation)
    register_resize(metaformer.Scale, resize_scale)
    register_trace_forward(inception_next.InceptionDWConv2d, partial(_inception_dwconv, trace=True))
    register_trace_forward(inception_next.MetaNeXtBlock, metanext_block_trace)
    register_pruned(inception_next.InceptionDWConv2d, PrunedInceptionDWConv2d)
    register_mlp(mambaout.GatedConvBlock, gated="fc1")
    register_trace_forward(mambaout.GatedConvBlock, partial(_gated_conv_block, trace=True))
    register_pruned(mambaout.GatedConvBlock, PrunedGatedConvBlock)
    levit_spec = dict(fixup=fix_levit_attention, head_params=(("attention_biases", 0),), fixed=levit_fixed, heads_first=True,
                      query_dim=lambda m: m.key_dim)
    register_attention(levit.Attention, AttentionSpec(qkv="qkv.linear", **levit_spec))
    register_attention(efficientformer.Attention, AttentionSpec(qkv="qkv", **levit_spec))
    register_trace_forward(efficientformer.Attention, levit_attention_trace)
    register_trace_forward(levit.Attention, levit_attention_trace)
    register_attention(levit.AttentionDownsample, AttentionSpec(qkv="qkv", separate=("q.ln.linear", "kv.linear"), **levit_spec))
    register_trace_forward(levit.AttentionDownsample, levit_downsample_trace)
    register_trace_forward(levit.Downsample, levit_subsample_trace)
    register_trace_forward(dpn.DualPathBlock, dual_path_trace)
    register_trace_forward(fasternet.Partial_conv3, partial_conv_trace)
    register_trace_forward(mixed_conv2d.MixedConv2d, mixed_conv_trace)
    register_resize(mixed_conv2d.MixedConv2d, resize_mixed_conv)
    register_resize(blur_pool.BlurPool2d, resize_blur_pool)
    register_resize(fasternet.MLPBlock, resize_partial_conv_block)
    register_resize(dpn.DualPathBlock, resize_dual_path_block)
    register_trace_forward(rexnet.LinearBottleneck, rexnet_block_trace)
    register_resize(rexnet.LinearBottleneck, resize_rexnet_block)
    register_trace_forward(res2net.Bottle2neck, partial(_res2net_block, trace=True))
    register_pruned(res2net.Bottle2neck, PrunedBottle2neck)
    register_trace_forward(dla.DlaBottle2neck, partial(_dla_res2net_block, trace=True))
    register_pruned(dla.DlaBottle2neck, PrunedDlaBottle2neck)
    register_trace_forward(cspnet.CrossStage, partial(_cross_stage, trace=True))
    register_pruned(cspnet.CrossStage, PrunedCrossStage)
    register_trace_forward(cspnet.CrossStage3, partial(_cross_stage3, trace=True))
    register_pruned(cspnet.CrossStage3, PrunedCrossStage3)
    register_trace_forward(split_attn.SplitAttn, split_attention_trace)
    register_trace_forward(selective_kernel.SelectiveKernel, partial(_selective_kernel, trace=True))
    register_pruned(selective_kernel.SelectiveKernel, PrunedSelectiveKernel)
    register_trace_forward(eca.EcaModule, channel_conv_gate_trace)
    register_trace_forward(eca.CecaModule, channel_conv_gate_trace)
    for cls in (evo_norm.EvoNorm2dS0, evo_norm.EvoNorm2dS1, evo_norm.EvoNorm2dS2):  # and their "a" subclasses
        register_trace_forward(cls, evo_norm_trace)
        register_runs(cls, evo_norm_runs)
    register_runs(nn.LSTM, lambda m: {"": 2} if m.bidirectional else {})
    register_trace_forward(sequencer.RNN2dBase, rnn2d_trace)
    register_trace_forward(nn.LSTM, lstm_trace)
    register_trace_forward(CondConv2d, cond_conv_trace)
    register_trace_forward(non_local_attn.BilinearAttnTransform, bilinear_attention_trace)
    register_runs(non_local_attn.BatNonLocalAttn, bilinear_attention_runs)
    register_resize(sequencer.RNN2dBase, resize_rnn2d)
    register_trace_forward(mlp_mixer.MixerBlock, mixer_block_trace)
    register_trace_forward(mlp_mixer.ResBlock, res_block_trace)
    register_trace_forward(mlp_mixer.SpatialGatingUnit, spatial_gating_trace)
    register_attention(metaformer.Attention, AttentionSpec(qkv="qkv", fixup=fix_metaformer_attention, pruned=PrunedMetaFormerAttention))
