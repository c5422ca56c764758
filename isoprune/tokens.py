"""Token reduction while a ViT trains: SimPrune, EViT and ToMe on any timm ``VisionTransformer``.

Structural pruning (the rest of isoprune) makes a ViT narrower; token reduction makes it process
fewer tokens. :func:`apply` gives each transformer block a forward that runs the block's own,
unmodified attention (fused attention included) and MLP, and reduces the tokens between the two at
the chosen blocks. :func:`remove` deletes those forwards again, so the model is exactly what it was:
no parameter, buffer or state-dict key is ever added. Class and other prefix tokens are always kept;
eval mode runs unreduced unless ``in_eval=True``.

    pruner = isoprune.tokens.apply(model, "simprune", keep_rate=0.8)
    for step, (views, _) in enumerate(loader):      # views: two augmentations stacked, [A; B]
        pruner.progress = step / steps              # SimPrune's window and the keep-rate warm-up
        loss = criterion(model(views))
    isoprune.tokens.remove(model)

Methods (``keep_rate`` is the fraction of patch tokens each reducing block keeps):

* ``simprune``: the batch holds two views of the same images, ``[A; B]``. Each token of A is matched
  to its most similar token of B (cosine similarity, many-to-one, no bipartite matching), and matched
  pairs are dropped together from both views. The pairs are sorted by similarity; a window of
  ``(1 - keep_rate) * N`` pairs slides linearly with ``progress`` from the most dissimilar pairs
  (early) to the most similar ones (late). B drops the partners of A's dropped tokens; because the
  matching is many-to-one these can be fewer than A's, and B tops up with its tokens whose own best
  match ranks nearest the window, so both views keep the same number of tokens.
  :meth:`TokenPruner.follow` replays another model's choice (DINO: the teacher's) in this one.
  ``dynamic=True`` is the variant with no set keep rate: the window widens to ``candidates`` (half)
  of the pairs, and a small learned :class:`Gate` in each reducing block decides which of them to
  drop (see :class:`TokenPruner` for how it trains).
* ``evit``: keeps the tokens the class token attends to most (that attention row is computed from
  the block's own q/k, beside fused attention) and fuses the rest into one token, their average
  weighted by that attention.
* ``tome``: bipartite soft matching on the attention keys merges ``(1 - keep_rate) * N`` tokens by
  size-weighted average; later blocks use proportional attention (``log size`` as attention bias).

With gradient checkpointing, run a reduced forward's backward before the next reduced forward of the
same model: ToMe's token sizes and replayed choices are kept per block between the two.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import types
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from timm.models.vision_transformer import Block, ResPostBlock, VisionTransformer

from ._errors import IsopruneError
from ._trace import require_module

METHODS = ("none", "simprune", "evit", "tome")
_READS_QKV = ("evit", "tome")  # methods that read the attention's fused q/k/v projection

# the two residual branches of a block type: attention(block, x, bias) and mlp(block, x)
_Branches = tuple[Callable[[nn.Module, Tensor, Tensor | None], Tensor], Callable[[nn.Module, Tensor], Tensor]]
_BLOCKS: dict[type, _Branches] = {}


def register_block(cls: type, attention, mlp) -> None:
    """Teach token reduction a transformer block type by its two residual branches."""
    _BLOCKS[cls] = (attention, mlp)


register_block(
    Block,
    lambda b, x, bias: b.drop_path1(b.ls1(b.attn(b.norm1(x), attn_mask=bias))),
    lambda b, x: b.drop_path2(b.ls2(b.mlp(b.norm2(x)))),
)
register_block(
    ResPostBlock,
    lambda b, x, bias: b.drop_path1(b.norm1(b.attn(x, attn_mask=bias))),
    lambda b, x: b.drop_path2(b.norm2(b.mlp(x))),
)


def _branches(block: nn.Module) -> _Branches | None:
    return next((_BLOCKS[c] for c in type(block).__mro__ if c in _BLOCKS), None)


@dataclass(frozen=True)
class TokenConfig:
    """What to reduce, where and how fast. Mirrored one to one by the ``tokens:`` YAML section."""

    method: str = "simprune"
    keep_rate: float = 0.8
    blocks: tuple[int, ...] | None = None  # None: depth/4, depth/2, 3*depth/4
    warmup: float = 0.0  # fraction of training over which the keep rate falls (cosine) from 1 to keep_rate
    in_eval: bool = False  # also reduce in eval mode
    proportional: bool = True  # ToMe: proportional attention after a merge
    dynamic: bool = False  # SimPrune: a learned gate chooses what to drop within the candidate window
    candidates: float = 0.5  # dynamic: the window's share of the pairs (it replaces 1 - keep_rate)
    sparsity: float = 0.01  # dynamic: weight of the gate's mean keep probability in the loss (penalty())

    def __post_init__(self):
        for name in ("keep_rate", "warmup", "candidates", "sparsity"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise IsopruneError(f"{name} must be a number, not {value!r}")
        if self.method not in METHODS:
            raise IsopruneError(f"unknown token method {self.method!r}", hint=f"choose one of {', '.join(METHODS)}")
        if not 0.0 < self.keep_rate <= 1.0:
            raise IsopruneError(f"keep rate {self.keep_rate} is outside (0, 1]", hint="0.8 keeps 80% of the patch tokens at each reducing block")
        if self.method == "tome" and self.keep_rate < 0.5:
            raise IsopruneError(f"ToMe merges at most half the tokens of a block; keep rate {self.keep_rate} asks for more", hint="use a keep rate of 0.5 or more, or reduce at more blocks")
        if not 0.0 <= self.warmup < 1.0:
            raise IsopruneError(f"warmup {self.warmup} is outside [0, 1)", hint="it is a fraction of the training")
        if self.dynamic and self.method != "simprune":
            raise IsopruneError(f"the dynamic variant is SimPrune's; {self.method} has none", hint="use method simprune, or drop dynamic")
        if not 0.0 < self.candidates < 1.0:
            raise IsopruneError(f"candidates {self.candidates} is outside (0, 1)", hint="0.5 lets the gate drop up to half the pairs")
        if self.sparsity < 0:
            raise IsopruneError(f"sparsity {self.sparsity} is negative", hint="0 leaves the gate to the task loss alone; larger drops more")
        if self.blocks is not None:
            object.__setattr__(self, "blocks", tuple(sorted(set(int(b) for b in self.blocks))))

    def reducing_blocks(self, depth: int) -> tuple[int, ...]:
        blocks = self.blocks if self.blocks is not None else tuple(sorted({depth // 4, depth // 2, 3 * depth // 4}))
        wrong = [b for b in blocks if not 0 <= b < depth]
        if wrong:
            raise IsopruneError(f"token reduction blocks {wrong} do not exist", hint=f"this model has blocks 0..{depth - 1}")
        return blocks


class _Site:
    """One block's link to its pruner; a plain object so ``copy.deepcopy`` of the model copies it along."""

    def __init__(self, pruner: "TokenPruner", index: int, reduces: bool, after: int | None, attn: nn.Module):
        self.pruner, self.index, self.reduces, self.after, self.attn = pruner, index, reduces, after, attn
        self.qkv: Tensor | None = None  # the attention's fused q/k/v of this forward (EViT, ToMe)

    def capture(self, module, inputs, output):  # forward hook on attn.qkv
        self.qkv = output


class Gate(nn.Module):
    """Dynamic SimPrune's scorer in one block: each token's logit to be kept. A down-sampling
    layer (linear, to a quarter of the width, GELU), a linear layer to one logit, and the sigmoid
    activation applied by the caller. It starts out keeping everything (probability 0.88)."""

    def __init__(self, dim: int, reduction: int = 4):
        super().__init__()
        self.down = nn.Linear(dim, max(dim // reduction, 1))
        self.score = nn.Linear(max(dim // reduction, 1), 1)
        nn.init.zeros_(self.score.weight)
        nn.init.constant_(self.score.bias, 2.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.score(F.gelu(self.down(x))).squeeze(-1)


class TokenPruner:
    """The live state of token reduction on one model: progress, pauses, replay and what it chose.

    The dynamic SimPrune variant's gates live here, not in the model (whose state dict stays that of
    the plain ViT): give :meth:`parameters` to the optimiser and add :meth:`penalty` to the loss.
    A candidate pair's keep probability is the sigmoid of its two tokens' mean logit; each image
    would drop the candidates under 0.5, and the batch drops the mean of those counts (one shape
    per batch), each image its least probable candidates. The gate learns by a straight-through
    factor ``p - p.detach() + 1`` on every kept token (the forward is unchanged; the gradient of
    ``p`` is the first-order loss change of scaling the token away) against ``penalty()``,
    ``sparsity`` times the mean keep probability of the candidates.
    """

    def __init__(self, config: TokenConfig, prefix: int, blocks: tuple[int, ...], dim: int = 0):
        self.config, self.prefix, self.blocks = config, prefix, blocks
        self.gates = nn.ModuleDict({str(b): Gate(dim) for b in blocks} if config.dynamic else {})
        self.gate_means: dict[int, Tensor] = {}  # dynamic: candidates' mean keep probability, last forward
        self.kept: dict[int, float] = {}  # patch tokens kept / patch tokens in, per block, last reduced forward
        self.progress = 0.0  # fraction of training done, set by the training loop
        self.enabled = True
        self.source: TokenPruner | None = None
        self.choices: dict[int, Tensor] = {}  # kept patch-token indices per reducing block, last forward
        self.sizes: dict[int, Tensor | None] = {}  # ToMe: token sizes after each reducing block
        self.similarity: dict[int, Tensor] = {}  # SimPrune: mean similarity of the dropped pairs

    @property
    def final_rate(self) -> float:
        """The keep rate after the warm-up: ``config.keep_rate``, or for the dynamic variant the
        least the gate may keep, ``1 - candidates``."""
        cfg = self.config
        return 1.0 if cfg.method == "none" else 1.0 - cfg.candidates if cfg.dynamic else cfg.keep_rate

    @property
    def keep_rate(self) -> float:
        """The keep rate now: ``final_rate`` after the warm-up, falling from 1 during it."""
        cfg, p, final = self.config, min(max(self.progress, 0.0), 1.0), self.final_rate
        if cfg.warmup <= 0 or p >= cfg.warmup:
            return final
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * p / cfg.warmup))

    def kept_after(self, patches: int) -> int:
        """Patch tokens left of ``patches`` after every reducing block at ``final_rate`` (each
        keeps its share rounded up; the dynamic gate may keep more)."""
        for _ in self.blocks:
            patches = math.ceil(self.final_rate * patches - 1e-6)
        return patches

    @property
    def measured(self) -> float:
        """The share of patch tokens the reducing blocks kept in the last reduced forward (1 before any)."""
        return sum(self.kept.values()) / len(self.kept) if self.kept else 1.0

    def parameters(self):
        """The dynamic gates' parameters, for the optimiser (none for the other methods)."""
        return self.gates.parameters()

    def penalty(self) -> Tensor | float:
        """Dynamic SimPrune's sparsity term for the loss of the last forward (0 for the others)."""
        if not self.gate_means:
            return 0.0
        return self.config.sparsity * torch.stack(list(self.gate_means.values())).mean()

    def active(self, training: bool) -> bool:
        return self.enabled and self.config.method != "none" and (training or self.config.in_eval)

    @contextlib.contextmanager
    def paused(self):
        """Run unreduced inside (DINO's local crops, an evaluation in train mode)."""
        enabled, self.enabled = self.enabled, False
        try:
            yield self
        finally:
            self.enabled = enabled

    def follow(self, source: "TokenPruner | None") -> None:
        """Replay ``source``'s SimPrune choice (made on the same views just before) instead of choosing."""
        if source is not None and (self.config.method, source.config.method) != ("simprune", "simprune"):
            raise IsopruneError("only SimPrune choices can be replayed", method=self.config.method)
        if source is not None and self.config.dynamic:
            raise IsopruneError("dynamic SimPrune cannot replay: its gate learns from the choices it makes itself",
                                hint="drop replay, or use the fixed window")
        self.source = source

    def bias(self, site: _Site, x: Tensor) -> Tensor | None:
        """ToMe's proportional attention: log token size, added to the attention logits."""
        if self.config.method != "tome" or not self.config.proportional or site.after is None:
            return None
        sizes = self.sizes.get(site.after)
        return None if sizes is None else sizes.log()[:, None, None, :].to(x.dtype)

    def reduce(self, site: _Site, x: Tensor) -> Tensor:
        patches = x.shape[1] - self.prefix
        keep = math.ceil(self.keep_rate * patches - 1e-6)
        self.sizes[site.index] = self.sizes.get(site.after)  # what a merge here replaces
        self.kept[site.index] = keep / patches  # the dynamic variant puts what its gate kept
        self.gate_means.pop(site.index, None)
        if keep < patches or self.config.dynamic:  # the gate runs even with no candidates (warm-up), as DDP wants
            x = _REDUCE[self.config.method](self, site, x, keep)
        site.qkv = None
        return x


def _forward(self: nn.Module, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
    """A block's forward with token reduction between attention and MLP (bound to each block)."""
    site: _Site = self._isoprune_tokens
    pruner = site.pruner
    if not pruner.active(self.training):
        return type(self).forward(self, x, attn_mask=attn_mask, is_causal=is_causal)
    if attn_mask is not None or is_causal:
        raise IsopruneError("token reduction cannot follow an attention mask", hint="pause it (pruner.paused()) for masked forwards")
    attention, mlp = _branches(self)
    x = x + attention(self, x, pruner.bias(site, x))
    if site.reduces:
        x = pruner.reduce(site, x)
    return x + mlp(self, x)


def _gather(tokens: Tensor, index: Tensor) -> Tensor:
    return tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))


def _kept(dropped: Tensor, count: int, keep: int) -> Tensor:
    """Indices (ascending) of the ``keep`` tokens not in ``dropped``, without a host sync."""
    mask = torch.ones(dropped.shape[0], count, device=dropped.device).scatter_(1, dropped, 0.0)
    return mask.topk(keep, dim=1).indices.sort(dim=1).values


def _simprune(pruner: TokenPruner, site: _Site, x: Tensor, keep: int) -> Tensor:
    prefix, patches = x[:, :pruner.prefix], x[:, pruner.prefix:]
    gate = pruner.gates[str(site.index)] if pruner.config.dynamic else None
    if pruner.source is not None:
        kept = pruner.source.choices.get(site.index)
        if kept is None or kept.shape != (x.shape[0], keep):
            raise IsopruneError("SimPrune replay found no matching choice", block=site.index,
                                hint="run the source model on the same views just before this one")
    else:
        kept, probability = _simprune_choice(pruner, site, patches, keep, gate)
    pruner.choices[site.index] = kept
    kept_tokens = _gather(patches, kept)
    if gate is not None:  # straight-through: the value is unchanged, the gradient reaches the gate
        p = probability.gather(1, kept)[..., None].to(kept_tokens.dtype)
        kept_tokens = kept_tokens * (p - p.detach() + 1)  # exactly 1 in value
    return torch.cat([prefix, kept_tokens], dim=1)


def _simprune_choice(pruner: TokenPruner, site: _Site, patches: Tensor, keep: int, gate: Gate | None) -> tuple[Tensor, Tensor | None]:
    """Kept patch indices of [A; B] (ascending), and the gate's keep probability per token (dynamic)."""
    if patches.shape[0] % 2:
        raise IsopruneError(f"SimPrune needs two views of the same images stacked as [A; B]; the batch has {patches.shape[0]} samples",
                            hint="feed both augmented views in one batch, view A first")
    n = patches.shape[1]
    width, start = n - keep, round(pruner.progress * keep)  # the window slides over n - width = keep positions
    with torch.no_grad():
        a, b = F.normalize(patches.float(), dim=-1).chunk(2)
        sim = a @ b.transpose(1, 2)
        best_a, partner = sim.max(dim=2)
        best_b = sim.max(dim=1).values
        window = best_a.argsort(dim=1)[:, start:start + width]  # ascending: most dissimilar pairs first
    probability = None
    if gate is None:
        dropped_a = window
    else:
        logits = gate(patches)
        logit_a, logit_b = logits.chunk(2)
        pair = torch.sigmoid((logit_a.gather(1, window) + logit_b.gather(1, partner.gather(1, window))) / 2)
        if width:
            pruner.gate_means[site.index] = pair.float().mean()
        with torch.no_grad():  # one count per batch: the mean of what each image's gate would drop
            count = round((pair < 0.5).sum(dim=1).float().mean().item())
            dropped_a = window.gather(1, pair.argsort(dim=1)[:, :count])
        pruner.kept[site.index] = (n - count) / n
        probability = torch.sigmoid(logits)
    with torch.no_grad():
        drop = dropped_a.shape[1]
        rank_b = best_b.argsort(dim=1).argsort(dim=1)
        distance = (start - rank_b).clamp(min=0) + (rank_b - (start + width - 1)).clamp(min=0)
        partnered = torch.zeros_like(best_b).scatter_(1, partner.gather(1, dropped_a), 1.0)
        dropped_b = (partnered * (n + 1) - distance).topk(drop, dim=1).indices
        if drop:
            pruner.similarity[site.index] = best_a.gather(1, dropped_a).mean()
        return _kept(torch.cat([dropped_a, dropped_b]), n, n - drop), probability


def _qkv(site: _Site, x: Tensor) -> tuple[Tensor, nn.Module]:
    attn = site.attn
    return site.qkv.reshape(x.shape[0], x.shape[1], 3, attn.num_heads, attn.head_dim), attn


def _evit(pruner: TokenPruner, site: _Site, x: Tensor, keep: int) -> Tensor:
    qkv, attn = _qkv(site, x)
    q = attn.q_norm(qkv[:, :1, 0].transpose(1, 2))  # the class token's query, (B, H, 1, d)
    k = attn.k_norm(qkv[:, :, 1].transpose(1, 2))
    weight = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1).mean(dim=1)[:, 0, pruner.prefix:]
    prefix, patches = x[:, :pruner.prefix], x[:, pruner.prefix:]
    kept = weight.topk(keep, dim=1).indices.sort(dim=1).values
    rest = weight.scatter(1, kept, 0.0)
    fused = (rest[..., None] * patches).sum(dim=1, keepdim=True) / rest.sum(dim=1)[:, None, None].clamp(min=1e-12)
    pruner.choices[site.index] = kept
    return torch.cat([prefix, _gather(patches, kept), fused], dim=1)


def _tome(pruner: TokenPruner, site: _Site, x: Tensor, keep: int) -> Tensor:
    qkv, _ = _qkv(site, x)
    prefix, patches = x[:, :pruner.prefix], x[:, pruner.prefix:]
    merge = patches.shape[1] - keep
    sizes = pruner.sizes[site.index]
    size = sizes[:, pruner.prefix:] if sizes is not None else patches.new_ones(patches.shape[:2])
    with torch.no_grad():
        key = F.normalize(qkv[:, pruner.prefix:, 1].mean(dim=2).float(), dim=-1)
        best, partner = (key[:, ::2] @ key[:, 1::2].transpose(1, 2)).max(dim=2)
        order = best.argsort(dim=1, descending=True)
        src, stay = order[:, :merge], order[:, merge:]
        dst = partner.gather(1, src)
    weighted = patches * size[..., None]
    even, odd = weighted[:, ::2], weighted[:, 1::2]
    odd = odd.scatter_add(1, dst[..., None].expand(-1, -1, odd.shape[-1]), _gather(even, src))
    odd_size = size[:, 1::2].scatter_add(1, dst, size[:, ::2].gather(1, src))
    total = torch.cat([size[:, ::2].gather(1, stay), odd_size], dim=1)
    merged = torch.cat([_gather(even, stay), odd], dim=1) / total[..., None].to(patches.dtype)
    pruner.sizes[site.index] = torch.cat([total.new_ones(total.shape[0], pruner.prefix), total], dim=1)
    return torch.cat([prefix, merged], dim=1)


_REDUCE = {"simprune": _simprune, "evit": _evit, "tome": _tome}


def _find_vit(model: nn.Module) -> VisionTransformer | None:
    return model if isinstance(model, VisionTransformer) else next((m for m in model.modules() if isinstance(m, VisionTransformer)), None)


def _vit(model: nn.Module) -> VisionTransformer:
    require_module(model)
    found = _find_vit(model)
    if found is None:
        raise IsopruneError(f"token reduction needs a timm VisionTransformer (ViT, DeiT); {type(model).__name__} has none")
    return found


def apply(model: nn.Module, method: str | TokenConfig = "simprune", keep_rate: float = 0.8, **options) -> TokenPruner:
    """Add token reduction to ``model``'s ViT (in place) and return its :class:`TokenPruner`."""
    config = method if isinstance(method, TokenConfig) else TokenConfig(method=method, keep_rate=keep_rate, **options)
    vit = _vit(model)
    if hasattr(vit, "_isoprune_tokens"):
        raise IsopruneError("this model already has token reduction", hint="call isoprune.tokens.remove(model) first")
    blocks = list(vit.blocks)
    reducing = config.reducing_blocks(len(blocks))
    _check_blocks(blocks, reducing, config, vit)
    pruner = TokenPruner(config, vit.num_prefix_tokens, reducing, dim=vit.embed_dim)
    weight = next(vit.parameters())
    pruner.gates.to(device=weight.device, dtype=weight.dtype)
    for i, block in enumerate(blocks):
        earlier = [b for b in reducing if b < i]
        site = _Site(pruner, i, i in reducing, earlier[-1] if earlier else None, block.attn)
        block._isoprune_tokens = site
        block.forward = types.MethodType(_forward, block)
        if site.reduces and config.method in _READS_QKV:
            block.attn.qkv.register_forward_hook(site.capture)
    vit._isoprune_tokens = pruner
    return pruner


def _check_blocks(blocks: list[nn.Module], reducing: tuple[int, ...], config: TokenConfig, vit: VisionTransformer) -> None:
    unknown = sorted({type(b).__name__ for b in blocks if _branches(b) is None})
    if unknown:
        raise IsopruneError(f"token reduction does not know the block type {', '.join(unknown)}",
                            hint="register it with isoprune.tokens.register_block(cls, attention, mlp)")
    if config.method == "evit" and vit.num_prefix_tokens < 1:
        raise IsopruneError("EViT ranks tokens by the class token's attention, and this model has no class token",
                            hint="use simprune or tome")
    if config.method in _READS_QKV:
        for i in reducing:
            attn = blocks[i].attn
            if not (isinstance(getattr(attn, "qkv", None), nn.Linear) and hasattr(attn, "num_heads") and hasattr(attn, "head_dim")):
                raise IsopruneError(f"{config.method} reads the fused qkv projection, which block {i}'s {type(attn).__name__} lacks",
                                    hint="use simprune, which needs only the tokens")


def remove(model: nn.Module) -> None:
    """Take token reduction off ``model`` again; a model without it is left as it is."""
    vit = _vit(model)
    for block in vit.blocks:
        site = block.__dict__.pop("_isoprune_tokens", None)
        block.__dict__.pop("forward", None)
        qkv = getattr(getattr(block, "attn", None), "qkv", None)
        if site is not None and qkv is not None:
            for key in [k for k, hook in qkv._forward_hooks.items() if getattr(hook, "__self__", None) is site]:
                del qkv._forward_hooks[key]
    vit.__dict__.pop("_isoprune_tokens", None)


def paused(model: nn.Module):
    """A context in which ``model`` runs unreduced; a no-op for a model without token reduction."""
    pruner = pruner_of(model)
    return pruner.paused() if pruner is not None else contextlib.nullcontext()


def pruner_of(model: nn.Module) -> TokenPruner | None:
    """The :class:`TokenPruner` on ``model``'s ViT, if it has one with token reduction applied."""
    return getattr(_find_vit(model), "_isoprune_tokens", None)
