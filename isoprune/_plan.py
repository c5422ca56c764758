"""Deciding what to remove: ratios, scopes, and the plain-data plan."""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import yaml

from . import __version__, _importance, _trace
from ._errors import IsopruneError, on_command_line
from ._groups import Analysis, Group, analyse, breaking, log
from ._recipes import KINDS, SCOPES


@dataclass
class Ratios:
    """Share of units to remove, per kind; ``default`` covers every other group (CNN channels).

    ``overrides`` maps a key to a ratio, tried in this order: an exact member name
    (``"blocks.3.mlp.fc1"``), a ``"re:<pattern>"`` searched in member names, a signature
    (``"mlp-3fa9..."``, as listed by ``isomorphic_groups``).
    """

    emb: float = 0.0
    heads: float = 0.0
    head_dim: float = 0.0
    mlp: float = 0.0
    default: float = 0.0
    overrides: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        for key in KINDS + ("default",):
            _check_ratio(getattr(self, key), key)
        for key, value in self.overrides.items():
            _check_ratio(value, key)

    @classmethod
    def coerce(cls, ratios) -> "Ratios":
        """A ``Ratios``, a dict with its fields, or one number for every kind."""
        if isinstance(ratios, cls):
            return ratios
        if isinstance(ratios, (int, float)):
            return cls(**{k: float(ratios) for k in KINDS + ("default",)})
        if isinstance(ratios, dict):
            valid = [f.name for f in fields(cls)]
            unknown = sorted(set(ratios) - set(valid))
            if unknown:
                raise IsopruneError(f"unknown ratio key {unknown[0]!r}", hint=f"valid keys: {', '.join(valid)}")
            return cls(**ratios)
        raise IsopruneError(f"ratios must be a number, a dict or Ratios, not {type(ratios).__name__}")

    def scaled(self, factor: float) -> "Ratios":
        """Every ratio times ``factor``: the shape a budget search keeps while it scales."""
        kinds = {k: getattr(self, k) * factor for k in KINDS + ("default",)}
        return Ratios(**kinds, overrides={k: v * factor for k, v in self.overrides.items()})

    def largest(self) -> float:
        return max([getattr(self, k) for k in KINDS + ("default",)] + list(self.overrides.values()))

    def unreached(self, groups: list[Group]) -> list[str]:
        """The non-zero ratios no group takes: ``key=value`` for override keys that name no
        group, and for kinds the model has no group of, other than the default's ratio (one
        number gives every kind that)."""
        taken = {self.for_group(g)[1] for g in groups}
        names = {n for g in groups for n in _names(g)}
        signatures = {g.signature for g in groups}
        found = [
            f"{key}={value:g}" for key, value in self.overrides.items()
            if value and key not in names and key not in signatures
            and not (key.startswith("re:") and any(re.search(key[3:], n) for n in names))
        ]
        return found + [f"{k}={getattr(self, k):g}" for k in KINDS if getattr(self, k) not in (0, self.default) and k not in taken]

    def for_group(self, group: Group) -> tuple[float, str]:
        """(ratio, where it came from): 'name', 'signature' or the kind."""
        names = _names(group)
        for key, value in self.overrides.items():
            if key in names:
                return value, "name"
        for key, value in self.overrides.items():
            if key.startswith("re:") and any(re.search(key[3:], n) for n in names):
                return value, "name"
        if group.signature in self.overrides:
            return self.overrides[group.signature], "signature"
        if group.kind in KINDS:
            return getattr(self, group.kind), group.kind
        return self.default, "default"


def _names(group: Group) -> list[str]:
    """The names an override can give a group by: its members', its root's, its attention's."""
    return [n for n, _ in group.members] + [group.root] + ([group.owner] if group.owner else [])


class _Dumper(yaml.SafeDumper):
    """Writes lists of numbers on one line: plans hold long index lists."""


_Dumper.add_representer(
    list,
    lambda dumper, data: dumper.represent_sequence(
        "tag:yaml.org,2002:seq", data, flow_style=all(isinstance(v, (int, float)) for v in data)
    ),
)


def _check_ratio(value, key):
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise IsopruneError(f"ratio {key}={value!r} is outside [0, 1)", hint="use e.g. 0.5 to remove half")


@dataclass
class GroupPlan:
    """What one group keeps. ``keep`` are unit indices (channels, heads or head dims); where a
    group's channels feed grouped convolutions a unit is one position in each of ``blocks`` runs."""

    id: int
    kind: str
    signature: str
    root: str
    channels: int
    ratio: float
    keep: list[int]
    owner: str | None = None
    blocks: int = 1
    offset: int = 0


@dataclass
class PruningPlan:
    """Plain data: printable, diffable, saved as YAML/JSON, re-applied to a fresh model.
    ``made_on`` is the saved model (an absolute directory) a plan was made on, where it was made
    on one rather than on ``model`` itself, the base."""

    model: str
    input_size: list[int]
    scope: str
    importance: str
    labels: str
    round_to: int | None
    ratios: dict
    groups: list[GroupPlan]
    widths: dict[str, dict[str, list[int] | None]]
    macs: dict[str, int]
    params: dict[str, int]
    depth: list[dict] = field(default_factory=list)
    search: dict | None = None
    made_on: str | None = None
    version: str = __version__

    def to_dict(self) -> dict:
        return asdict(self)

    def removes_anything(self) -> bool:
        """Whether the plan removes a channel or a block (not so the plan of a model trained whole)."""
        return self.params["after"] != self.params["before"]

    @classmethod
    def from_dict(cls, data: dict) -> "PruningPlan":
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        missing = sorted(valid - set(data) - {"version", "depth", "search", "made_on"})
        if unknown or missing:
            raise IsopruneError(
                "not a pruning plan", unknown=unknown, missing=missing, hint="load a file written by PruningPlan.save"
            )
        data = dict(data, groups=[GroupPlan(**g) for g in data["groups"]])
        return cls(**data)

    def save(self, path) -> Path:
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=1) if path.suffix == ".json" else yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False)
        path.write_text(text)
        return path

    @classmethod
    def load(cls, path) -> "PruningPlan":
        path = Path(path)
        if not path.is_file():
            raise IsopruneError(f"no plan file at {path}", hint="give a plan.yaml or a directory written by isoprune prune")
        try:
            data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
        except (ValueError, yaml.YAMLError) as exc:
            raise IsopruneError(f"cannot parse plan {path}: {exc}") from exc
        return cls.from_dict(data)

    def summary(self) -> str:
        """Isomorphic groups with channels before -> after, then MACs and params."""
        rows, classes = [], {}
        for g in self.groups:
            classes.setdefault(g.signature, []).append(g)
        for sig, members in classes.items():
            before = sum(g.channels * g.blocks for g in members)
            after = sum(len(g.keep) * g.blocks for g in members)
            rows.append(f"{sig:<24} {members[0].kind:<9} {len(members):>3} group{'s' if len(members) != 1 else ' '}  {before:>6} -> {after:<6} ratio {members[0].ratio:.2f}")
        m, p = self.macs, self.params
        for d in self.depth:
            rows.append(f"depth {d['container']:<18} {d['blocks']:>3} blocks -> {len(d['keep'])}")
        s = self.search
        filled = f", {len(s['filled'])} isomorphic groups filled in to the next larger shape" if s and s.get("filled") else ""
        if s and s["metric"] == "latency":
            from ._latency import described

            t = s["timing"]
            rows.append(f"latency budget {s['budget']:.2f} ms at batch {t['batch_size']} on {t['device']} ({described(t['dtype'], t['channels_last'])}): "
                        f"timed {s['before']:.2f} ms -> {s['after']:.2f} ms, ratios scaled by {s['scale']:.4f}{filled}")
        elif s:
            rows.append(f"{s['metric']} budget {Budget(s['metric'], s['budget'])}: ratios scaled by {s['scale']:.4f}{filled}")
        rows.append(before_after(m, p))
        return "\n".join(rows)


def _pools(groups: list[Group], ratios: Ratios, scope: str) -> dict[tuple, list[Group]]:
    """Which groups are ranked together, keyed (how, which, ratio). Name overrides always rank alone."""
    pools: dict[tuple, list[Group]] = {}
    for g in groups:
        ratio, origin = ratios.for_group(g)
        if scope == "local" or origin == "name":
            key = ("group", g.id, ratio)
        elif scope == "isomorphic":
            key = ("signature", g.signature, ratio)
        else:  # global: every kind pruned at this ratio in one ranking (heads against MLP channels ...)
            key = ("ratio", None, ratio)
        pools.setdefault(key, []).append(g)
    return pools


def _select(pool: list[Group], scores: dict[int, torch.Tensor], ratio: float, round_to: int | None, parts=None) -> dict[int, list[int]]:
    """Remove the lowest-scored ``ratio`` share of the pool's units; every group keeps at least
    one unit (``round_to`` of them when set) and, with ``round_to``, a multiple of it, and one of
    each of its ``parts`` (group id -> arrays of units a layer holds only some of)."""
    steps = np.array([round_to if round_to and g.kind != "heads" else 1 for g in pool])
    channels = np.array([g.channels for g in pool])
    n_remove = int(math.floor(ratio * channels.sum() + 1e-9))
    order = np.argsort(torch.cat([scores[g.id] for g in pool]).cpu().double().numpy(), kind="stable")
    owner = np.repeat(np.arange(len(pool)), channels)
    unit = np.arange(channels.sum()) - np.repeat(np.cumsum(channels) - channels, channels)
    spare = channels - np.minimum(channels, steps)  # units each group can lose
    taken = order[:n_remove]
    if (np.bincount(owner[taken], minlength=len(pool)) > spare).any():
        taken = _lowest_within(order, owner, spare, n_remove)
    counts = np.bincount(owner[taken], minlength=len(pool))
    by_group = np.split(taken[np.argsort(owner[taken], kind="stable")], np.cumsum(counts)[:-1])  # each in score order
    keep = {}
    for i, g in enumerate(pool):
        drop = _keep_one_of_each(unit[by_group[i]], (parts or {}).get(g.id, ()))
        excess = (g.channels - len(drop)) % steps[i]
        if excess:  # round the kept count up to a multiple of step: restore the best removed
            drop = drop[: max(0, len(drop) - (steps[i] - excess))]
        keep[g.id] = np.delete(np.arange(g.channels), drop).tolist()
    return keep


def _keep_one_of_each(drop: np.ndarray, parts) -> np.ndarray:
    """``drop`` (units in score order) less the best-scored unit of each part it would empty."""
    for part in parts:
        inside = np.isin(drop, part)
        if inside.sum() == len(part):
            drop = np.delete(drop, np.flatnonzero(inside)[-1])
    return drop


def _lowest_within(order: np.ndarray, owner: np.ndarray, spare: np.ndarray, n_remove: int) -> np.ndarray:
    """The ``n_remove`` lowest-scored units (``order``: all by score) such that no group loses
    more than its ``spare``: a group that reaches it is passed over."""
    spare, taken = spare.copy(), []
    for k in order.tolist():
        if len(taken) == n_remove:
            break
        if spare[owner[k]]:
            spare[owner[k]] -= 1
            taken.append(k)
    return np.array(taken, dtype=np.int64)


def _unit_scores(analysis: Analysis, channel: list[torch.Tensor]) -> dict[int, torch.Tensor]:
    scores = {}
    for g in analysis.groups:
        s = channel[analysis.source[g.id]]
        if g.kind in ("heads", "head_dim"):
            units = _importance.attention_unit_scores(s, analysis.attention[g.owner])
            s = units.sum(1) if g.kind == "heads" else units.mean(0)
        else:  # the group's channels from its offset on; a unit is a position in every run (of a grouped convolution...)
            s = s[g.offset : g.offset + g.blocks * g.channels].view(g.blocks, g.channels).sum(0)
        scores[g.id] = s / s.mean().clamp_min(1e-30)
    return scores


def choose(analysis: Analysis, scores: dict[int, torch.Tensor], ratios: Ratios, scope: str, round_to, exclude=()) -> dict[int, list[int]]:
    """Kept units per group id. Head dims are scored over all heads of their attention, as the
    paper's implementation does: averaging over only the kept heads would give blocks left with
    few heads noisier scores, and so more removals, skewing the pruned shape."""
    keep = {g.id: list(range(g.channels)) for g in analysis.groups if g.id in exclude}
    ranked = [g for g in analysis.groups if g.id not in exclude]
    for key, pool in _pools(ranked, ratios, scope).items():
        keep.update(_select(pool, scores, key[2], round_to, analysis.parts))
    return keep


@dataclass(frozen=True)
class Budget:
    """A size to prune down to: ``macs`` or ``params``, an absolute count, or ``latency`` in
    milliseconds, measured (see ``_latency``); or (``fraction``) a share of the unpruned model's,
    resolved when the search starts."""

    metric: str
    value: float
    fraction: float | None = None

    _UNITS = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "MS": 1.0, "S": 1e3}
    _NAMES = {"macs": "MACs", "params": "params", "latency": "latency"}

    def __post_init__(self):
        if self.metric != "latency":  # MACs and params are counts
            object.__setattr__(self, "value", int(self.value))

    @classmethod
    def parse(cls, text) -> "Budget":
        """``"4.2G"`` is MACs, ``"20M"`` is params (as the paper writes them), ``"50%"`` is half the
        model's MACs; ``"macs=800M"``, ``"params=1.2G"`` or ``"params=40%"`` says which explicitly.
        ``"latency=50%"`` is half the unpruned model's measured latency, ``"latency=12ms"`` (or
        ``0.5s``) a time per forward pass."""
        if isinstance(text, Budget):
            return text
        raw = str(text).strip()
        metric, _, amount = raw.rpartition("=")
        metric = metric.strip().lower()
        match = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(ms|s|[KMGT%])", amount.strip(), re.IGNORECASE)
        unit = match[2].upper() if match else ""
        fits = unit == "%" or (unit in ("MS", "S")) == (metric == "latency")
        if not match or metric not in ("", *cls._NAMES) or not fits or (unit == "%" and not 0 < float(match[1]) < 100) or not float(match[1]):
            raise IsopruneError(
                f"cannot read budget {raw!r}",
                hint="write MACs like 4.2G, params like 20M, a share of the model like 50%, macs=800M / params=40%, "
                     "or a measured latency: latency=50% (of the unpruned model's) / latency=12ms",
            )
        if unit == "%":
            return cls(metric or "macs", 0, float(match[1]) / 100)
        value = float(match[1]) * cls._UNITS[unit]
        metric = metric or ("macs" if unit in "GT" else "params")
        return cls(metric, value)

    def resolved(self, unpruned: float) -> "Budget":
        return self if self.fraction is None else Budget(self.metric, self.fraction * unpruned)

    def __str__(self) -> str:
        if self.fraction is not None and not self.value:
            return f"{self.fraction:.0%} of the {self._NAMES[self.metric]}"
        if self.metric == "latency":
            return f"{self.value:.2f} ms"
        return f"{figure(self.value, self.metric)} {'MACs' if self.metric == 'macs' else 'params'}"


def figure(value: float, metric: str, like: float | None = None) -> str:
    """A count of MACs or params with its unit (``17.679 G``, ``22.050 M``, ``4.186 M``): G for MACs
    from 0.1 G, else M from 0.1 M, else K; in the unit ``like`` would take, to set two side by side."""
    scale = value if like is None else like
    unit, size = ("G", 1e9) if metric == "macs" and scale >= 1e8 else ("M", 1e6) if scale >= 1e5 else ("K", 1e3)
    return f"{value / size:.3f} {unit}"


def before_after(macs: dict, params: dict) -> str:
    """``MACs 17.679 G -> 4.163 G, params 87.338 M -> 20.690 M``, from a plan's ``macs`` and ``params``."""
    return (f"MACs {figure(macs['before'], 'macs')} -> {figure(macs['after'], 'macs', macs['before'])}, "
            f"params {figure(params['before'], 'params')} -> {figure(params['after'], 'params', params['before'])}")


def model_name(model) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


def _validate(ratios, scope, round_to) -> Ratios:
    ratios = Ratios.coerce(ratios)
    if scope not in SCOPES:
        raise IsopruneError(f"unknown scope {scope!r}", hint=f"use one of {', '.join(SCOPES)}")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise IsopruneError(f"round_to must be a positive integer, not {round_to!r}")
    return ratios


@_trace.gc_paused()
def plan(
    model,
    ratios=0.0,
    *,
    importance="l2",
    calib=None,
    calib_batches: int | None = None,
    calib_chunk: int | None = None,
    scope: str = "isomorphic",
    round_to: int | None = None,
    example_inputs=None,
    labels: str = "structure",
    depth: dict[str, int] | None = None,
    budget=None,
    timing=None,
) -> PruningPlan:
    """Decide what to remove, without touching the model.

    Ranking happens within each isomorphic group (``scope="isomorphic"``), across all groups given
    the same ratio whatever their kind (``"global"``: attention heads, MLP channels and embedding
    dims in one ranking, the paper's global baseline), or inside each group alone (``"local"``:
    the same ratio in every layer). Scores are normalised by their group's mean in every scope.
    ``calib_chunk`` is the most images calibration runs through the model at once: a larger batch
    goes in pieces, with the same gradients (``_importance.calibrate``).
    ``depth`` maps a block container (``"stages.2.blocks"``) to how many of its blocks to remove.
    With a ``budget`` (``"4.2G"`` MACs, ``"20M"`` params) the ratios are a shape: they are scaled
    by one factor, found by bisection, so that the pruned model lands within 1% under the budget;
    where rounded widths step past it, isomorphic groups of the next larger shape are filled in
    (``search["filled"]``). A latency budget (``"latency=50%"``, ``"latency=12ms"``) is measured:
    each shape the search tries is cut from a copy of the model and timed on the model's device as
    ``timing`` (a ``Timing``; default: batch 32, float32) says, and the search stops within 3%
    under it.
    """
    from ._apply import _removed, remember, skeleton_apply
    from ._depth import choose_depth, inside

    _trace.require_module(model)
    ratios = _validate(ratios, scope, round_to)
    budget = None if budget is None else Budget.parse(budget)
    if timing is not None and (budget is None or budget.metric != "latency"):
        raise IsopruneError("timing settings without a latency budget", hint='pass budget="latency=50%" (or 12ms), or drop timing')
    criterion = _importance.get_importance(importance)
    stats = None
    if criterion.needs_calib:
        if calib is None:
            raise IsopruneError(f"importance {importance!r} needs calibration data", hint="pass calib=[(inputs, targets), ...]")
        stats = _importance.calibrate(model, calib, calib_batches, criterion.stats, calib_chunk)
    analysis = analyse(model, example_inputs, labels)
    _check_reach(ratios, analysis.groups, type(model).__name__)
    depth_plans = choose_depth(model, analysis.skeleton, analysis.inputs, dict(depth or {}), criterion, stats)
    # groups that live wholly inside removed blocks go with them: they take no part in ranking
    gone = {g.id for g in analysis.groups if all(inside(n, depth_plans) for n, _ in g.members)}
    gone |= {g.id for g in analysis.groups if g.fixed}  # and those the architecture keeps whole
    scores = _unit_scores(analysis, _importance.channel_scores(model, analysis, criterion, stats))
    template = PruningPlan(
        model=model_name(model),
        input_size=list(analysis.inputs.shape[1:]) if isinstance(analysis.inputs, torch.Tensor) else [],
        scope=scope,
        importance=importance if isinstance(importance, str) else type(importance).__name__,
        labels=labels,
        round_to=round_to,
        ratios={},
        groups=[],
        widths={},
        macs={},
        params={},
        depth=[asdict(d) for d in depth_plans],
    )

    whole: set[int] = set()  # groups whose planned cut breaks the model, though one unit did not

    def outcome(r: Ratios) -> PruningPlan:
        while True:
            fixed = gone | whole
            keep = choose(analysis, scores, r, scope, round_to, exclude=fixed)
            groups = [
                GroupPlan(g.id, g.kind, g.signature, g.root, g.channels, 0.0 if g.id in fixed else r.for_group(g)[0], keep[g.id], g.owner, g.blocks, g.offset)
                for g in analysis.groups
            ]
            draft = replace(template, ratios=asdict(r), groups=groups)
            try:
                return skeleton_apply(analysis, draft, depth_plans)
            except Exception as exc:  # noqa: BLE001 - find the groups to blame, else it is not ours to handle
                broken = breaking(analysis, _removed(analysis, draft))
                if not broken:
                    raise
                log.warning("%d more %s left whole: the planned cut breaks the model (%s)", len(broken), "group is" if len(broken) == 1 else "groups are", exc)
                whole.update(g.id for g in analysis.groups if analysis.source[g.id] in broken)

    def mixed(base: PruningPlan, donor: PruningPlan, ids: set[int]) -> PruningPlan:
        """``base`` with the groups ``ids`` kept as ``donor`` keeps them."""
        groups = [d if g.id in ids else g for g, d in zip(base.groups, donor.groups)]
        return skeleton_apply(analysis, replace(base, groups=groups), depth_plans)

    fill = None if scope == "global" else mixed  # one ranking over every group: no isomorphic group moves alone
    # a shape that leaves some groups whole could reach further with ratios for them too
    partial = ratios.largest() > 0 and any(not ratios.for_group(g)[0] for g in analysis.groups if g.id not in gone)
    if budget is None:
        result = outcome(ratios)
    elif budget.metric == "latency":
        from ._latency import Timer

        with Timer(model, analysis.inputs, timing) as timer:
            result = _search(outcome, ratios, budget, timer, steps=10, tolerance=0.03, fill=fill, partial=partial)
        result.search |= {"timing": timer.settings, "shapes": timer.shapes}
    else:
        result = _search(outcome, ratios, budget, lambda p, near=None: getattr(p, budget.metric)["after"], fill=fill, partial=partial)
    result._scores = scores  # unit scores per group id, for reports; not part of the plain data
    return remember(result, model)


def _check_reach(ratios: Ratios, groups: list[Group], name: str) -> None:
    """Ratios that reach no group: an error where they leave nothing to prune (``mlp=0.5`` on a
    ResNet), else a warning."""
    unreached = ratios.unreached(groups)
    if not unreached:
        return
    kinds = ", ".join(sorted({g.kind for g in groups})) or "none"
    if ratios.largest() and not any(ratios.for_group(g)[0] for g in groups):
        raise IsopruneError(f"ratios {', '.join(unreached)} reach no group of this {name}, so nothing would be pruned (its kinds: {kinds})",
                            hint="give ratios for its kinds, default=R for plain channels, or one number for all")
    log.warning("ratios %s reach no group of this %s (its kinds: %s)", ", ".join(unreached), name, kinds)


def _search(outcome, shape: Ratios, budget: Budget, size, steps: int = 24, tolerance: float = 0.01, fill=None,
            partial: bool = False) -> PruningPlan:
    """Bisect the factor on ``shape`` for the largest model at or under the budget, by ``size``
    (a plan's MACs, params or measured latency; told the budget, a measurement can take more care
    near it), stopping within ``tolerance`` under it. Short of that, the isomorphic groups that
    differ between the closest shapes under and over the budget are filled in (``_fill``)."""
    if shape.largest() == 0:
        shape = Ratios.coerce(1.0 - 1e-9)
    top = 0.999 / shape.largest()
    unpruned, smallest = outcome(shape.scaled(0.0)), outcome(shape.scaled(top))
    budget = budget.resolved(size(unpruned))
    if budget.value >= size(unpruned):
        raise IsopruneError(
            f"budget {budget} is not below the model's {Budget(budget.metric, size(unpruned))}",
            hint=f"give a smaller {'target' if on_command_line() else 'budget'}",
        )
    if size(smallest, budget.value) > budget.value:
        raise IsopruneError(
            f"budget {budget} is out of reach: these ratios bottom out at {Budget(budget.metric, size(smallest))}",
            hint=_larger_target(partial),
        )
    lo, hi, best, over, evaluations = 0.0, top, smallest, unpruned, 2
    for _ in range(steps):
        if size(best) >= (1 - tolerance) * budget.value:
            break
        mid = (lo + hi) / 2
        candidate = outcome(shape.scaled(mid))
        evaluations += 1
        if size(candidate, budget.value) <= budget.value:
            hi, best = mid, candidate
        else:
            lo, over = mid, candidate
    bisected, filled = size(best), []
    if fill is not None and bisected < (1 - tolerance) * budget.value:
        best, filled, tried = _fill(best, over, budget, size, fill)
        evaluations += tried
    best.search = {"metric": budget.metric, "budget": budget.value, "scale": hi, "evaluations": evaluations,
                   "before": size(unpruned), "bisected": bisected, "after": size(best), "filled": filled}
    return best


def _larger_target(partial: bool) -> str:
    """What to do about a budget the shape cannot reach; ``partial``: the shape leaves some groups whole."""
    if on_command_line():
        return "give a larger target" + (", or --target alone (without a recipe's ratios, every kind is scaled alike)" if partial else "")
    return "give a larger budget" + (", or ratios for more kinds (one number, or none, scales every kind alike)" if partial else "")


def _fill(under: PruningPlan, over: PruningPlan, budget: Budget, size, mix) -> tuple[PruningPlan, list[str], int]:
    """Where the widths step between ``under`` and ``over``, the closest shapes the bisection found
    under and over the budget, take ``over``'s widths one isomorphic group at a time (``mix``;
    its members move together, as one ratio moves them), the one that adds the most first (params
    for a params budget, else MACs), wherever the result stays under the budget. Rounding makes
    such steps: at ratio 0.5 every width that is a multiple of 16 halves to a multiple of 8, so
    with ``round_to=8`` MobileNetV2's stem, head and residual widths all move at one factor (9% of
    its MACs). Returns the plan, the signatures of the isomorphic groups taken from ``over`` and
    the shapes sized."""
    classes: dict[str, set[int]] = {}
    for g, o in zip(under.groups, over.groups):
        if g.keep != o.keep:
            classes.setdefault(g.signature, set()).add(g.id)
    metric = "params" if budget.metric == "params" else "macs"  # a latency is known only once timed
    alone = {sig: mix(under, over, ids) for sig, ids in classes.items()}
    order = sorted(classes, key=lambda sig: getattr(alone[sig], metric)["after"], reverse=True)
    best, taken = under, []
    for sig in order:
        candidate = alone[sig] if best is under else mix(best, over, classes[sig])
        if size(candidate, budget.value) <= budget.value:
            best = candidate
            taken.append(sig)
    return best, taken, len(order)
