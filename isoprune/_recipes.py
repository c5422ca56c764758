"""Recipes: YAML files mirrored 1:1 by dataclasses, one per paper configuration.

A recipe has a ``prune`` section (how to get the pruned architecture) and a ``finetune`` section
(the supplementary's Table 3 hyper-parameters). Loading rejects any key the dataclasses do not
have, naming it and the valid ones: a misspelt key never silently falls back to a default.
"""
from __future__ import annotations

import numbers
import re
import sys
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

import yaml

from ._errors import IsopruneError, setting


class Range(NamedTuple):
    """The values a number may take: from ``low`` to ``high`` (None: no end), each end in or out."""

    low: float | None = None
    high: float | None = None
    low_in: bool = True
    high_in: bool = True

    def __contains__(self, value) -> bool:
        low_ok = self.low is None or (value >= self.low if self.low_in else value > self.low)
        return low_ok and (self.high is None or (value <= self.high if self.high_in else value < self.high))

    def __str__(self) -> str:
        if self.high is None:
            return f"at least {self.low:g}" if self.low_in else f"above {self.low:g}"
        return f"in {'[' if self.low_in else '('}{self.low:g}, {self.high:g}{']' if self.high_in else ')'}"


COUNT, NONNEGATIVE, POSITIVE = Range(1), Range(0), Range(0, low_in=False)
SHARE, FRACTION = Range(0, 1), Range(0, 1, high_in=False)  # a weight or momentum; a probability short of certain


def check_whole(name: str, value, limit: Range = COUNT) -> None:
    """An error where an argument that takes a whole number (``--name``, ``name=``) is not one within ``limit``:
    for functions whose arguments no config dataclass checks (``isoprune.evaluate``)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value in limit:
        return
    raise IsopruneError(f"{name} must be a whole number {limit}, not {value!r}", hint=f"set {setting(name)}")


class Limited:
    """Checks a dataclass's numbers against its ``LIMITS`` whenever one is made, ``replace`` and
    recipes included, so that a batch size of 0 is one clear error, not a traceback mid-run.
    ``SECTION`` names the recipe section the fields come from."""

    LIMITS: ClassVar[dict[str, Range]] = {}
    PAIRS: ClassVar[dict[str, tuple[Range, bool]]] = {}  # two numbers within the range; True: the smaller first
    SECTION: ClassVar[str] = ""
    HELP: ClassVar[dict[str, str]] = {}  # what a field does, for its command-line flag's help

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in fields(self):  # the API's keyword arguments come unchecked (``lr="0.1"``)
            setattr(self, f.name, _check_type(getattr(self, f.name), hints[f.name], f.name, self._hint(f.name)))
        for name, limit in self.LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value not in limit:
                self._refuse(name, f"must be {limit}, not {value:g}")
        for name, (limit, ordered) in self.PAIRS.items():
            value = getattr(self, name)
            if len(value) != 2 or any(v not in limit for v in value) or (ordered and value[0] > value[1]):
                order = ", the smaller first" if ordered else ""
                self._refuse(name, f"must be two numbers {limit}{order}, not {' '.join(f'{v:g}' for v in value) or 'none'}")

    def _refuse(self, name: str, what: str):
        raise IsopruneError(f"{name} {what}", hint=self._hint(name))

    def _hint(self, name: str) -> str:
        where = f", or {self.SECTION}.{name} in a recipe" if self.SECTION else ""
        return f"set {setting(name)}{where}"


KINDS = ("emb", "heads", "head_dim", "mlp")
"""The ViT group kinds a ratio can name (any other group is plain ``channels``, under ``default``)."""
SCOPES = ("isomorphic", "global", "local")
DTYPES = ("float32", "float16", "bfloat16")
"""Precisions a latency is timed in (``_latency.DTYPES`` maps them to torch's)."""


@dataclass
class PruneConfig(Limited):
    """``ratios`` has the fields of ``Ratios``. ``target`` is a budget (``4.2G`` MACs, ``20M``
    params) that scales the ratios by one factor; ``depth`` maps a block container to the number
    of blocks to remove from it. ``plan`` is a saved plan (``plan.yaml``, or a pruned model's
    directory) applied as it is, instead of planning. ``recalibrate_bn``: batches of the data on
    which the pruned model's BatchNorm statistics are measured again (0: kept as they were).
    A latency target (``latency=50%``, ``latency=12ms``) is timed at ``latency_batch``, in
    ``dtype`` and channels-last if ``channels_last``, on the device calibration runs on."""

    model: str = ""
    weights: str = "pretrained"
    num_classes: int | None = None
    ratios: dict[str, float] = field(default_factory=dict)
    target: str | None = None
    depth: dict[str, int] = field(default_factory=dict)
    importance: str = "l2"
    calib_batches: int = 50
    batch_size: int = 64
    scope: str = "isomorphic"
    round_to: int | None = None
    input_size: int | None = None
    labels: str = "structure"
    seed: int = 0
    plan: str | None = None
    recalibrate_bn: int = 0
    latency_batch: int = 32
    dtype: str = "float32"
    channels_last: bool = False

    SECTION = "prune"  # round_to and recalibrate_bn are checked where they are used, for the API too
    LIMITS = {"num_classes": COUNT, "calib_batches": COUNT, "batch_size": COUNT, "input_size": COUNT, "latency_batch": COUNT}


@dataclass
class FinetuneConfig(Limited):
    """Fine-tuning hyper-parameters, named as timm's factories and train script name them.

    ``batch_size`` is the global batch (split over torchrun's processes, and within each process
    into ``grad_accum_steps`` forward and backward passes whose gradients make one step: the same
    batch in less memory). ``teacher``: ``original``
    (the unpruned model the plan came from), a timm model name, a checkpoint path, or ``none``;
    ``distillation``: ``soft`` (KL at temperature ``distill_tau``), ``hard`` (DeiT's: cross-entropy
    on the teacher's class), weighted by ``distill_alpha`` against the label loss. ``augment: false``
    trains on the eval transforms without mixup/cutmix (deterministic inputs)."""

    epochs: int = 300
    batch_size: int = 1024
    grad_accum_steps: int = 1
    opt: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.05
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    sched: str = "cosine"
    decay_milestones: list[int] = field(default_factory=list)
    decay_rate: float = 0.1
    warmup_epochs: int = 0
    layer_decay: float | None = None
    augment: bool = True
    randaugment: str | None = None
    mixup: float = 0.0
    cutmix: float = 0.0
    reprob: float = 0.0
    smoothing: float = 0.0
    drop_path: float = 0.0
    drop: float = 0.0
    clip_grad: float | None = None
    ema_decay: float | None = None
    teacher: str = "original"
    distillation: str = "soft"
    distill_alpha: float = 0.5
    distill_tau: float = 1.0
    interpolation: str = "bicubic"
    amp: bool = True

    SECTION = "finetune"
    LIMITS = {"epochs": COUNT, "batch_size": COUNT, "grad_accum_steps": COUNT, "lr": POSITIVE, "weight_decay": NONNEGATIVE,
              "momentum": SHARE, "decay_rate": POSITIVE, "warmup_epochs": NONNEGATIVE, "layer_decay": Range(0, 1, low_in=False), "mixup": NONNEGATIVE,
              "cutmix": NONNEGATIVE, "reprob": SHARE, "smoothing": FRACTION, "drop_path": FRACTION, "drop": FRACTION,
              "clip_grad": NONNEGATIVE, "ema_decay": FRACTION, "distill_alpha": SHARE, "distill_tau": POSITIVE}
    PAIRS = {"betas": (FRACTION, False)}
    HELP = {
        "epochs": "epochs to train", "batch_size": "global batch, split over the processes and --grad-accum-steps",
        "grad_accum_steps": "forward and backward passes per step: the same batch in less memory",
        "opt": "optimiser, by timm's name (adamw, sgd, lamb ...)", "lr": "peak learning rate", "weight_decay": "weight decay",
        "momentum": "SGD's momentum", "betas": "Adam's betas", "sched": "learning-rate schedule, by timm's name (cosine, step, multistep ...)",
        "decay_milestones": "epochs at which multistep decays the learning rate", "decay_rate": "factor of each step's or milestone's decay",
        "warmup_epochs": "epochs of linear learning-rate warm-up", "layer_decay": "a ViT's layer-wise decay: each block learns this times as fast as the next",
        "augment": "random crops and flips, RandAugment, mixup and cutmix (--no-augment: the eval transforms only)",
        "randaugment": "timm's RandAugment policy (rand-m9-mstd0.5-inc1)", "mixup": "mixup's alpha, 0 for none", "cutmix": "cutmix's alpha, 0 for none",
        "reprob": "random erasing's probability", "smoothing": "label smoothing", "drop_path": "stochastic depth", "drop": "dropout before the classifier",
        "clip_grad": "clip the gradient norm to this", "ema_decay": "average the weights with this decay, such as 0.9998; the average is evaluated and saved",
        "teacher": "original (the model it was pruned from), a timm NAME, a checkpoint PATH, a saved DIR, or none",
        "distillation": "soft (KL divergence at --distill-tau), hard (DeiT's: the teacher's class), or none",
        "distill_alpha": "weight of the distillation loss against the label loss", "distill_tau": "soft distillation's temperature",
        "interpolation": "how images are resized (bicubic, bilinear ...)", "amp": "mixed precision on CUDA (--no-amp: float32)",
    }


@dataclass
class SSLConfig(Limited):
    """Self-supervised pre-training (DINO) with token reduction; names follow DINO's ``main_dino.py``.

    ``batch_size`` is the global batch; ``lr`` is for a batch of 256 and scales linearly. Schedules
    are per step: lr (warm-up, then cosine to ``min_lr``), weight decay (cosine from
    ``weight_decay`` to ``weight_decay_end``), teacher momentum (cosine from ``momentum_teacher``
    to 1), teacher temperature (linear warm-up, then constant). ``tokens`` is ``none``,
    ``simprune``, ``evit`` or ``tome``, at ``keep_rate`` in blocks ``token_blocks`` (default
    depth/4, depth/2, 3*depth/4) of both student and teacher; ``replay`` makes the student drop
    what the teacher dropped (SimPrune). ``dynamic`` is SimPrune's variant with no set keep rate:
    a learned gate drops what it chooses of a window of ``token_candidates`` of the pairs
    (``keep_rate`` unused), against ``token_sparsity`` times its mean keep probability. Local
    crops are never reduced."""

    method: str = "dino"
    epochs: int = 100
    batch_size: int = 128
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.996
    clip_grad: float | None = 3.0  # the norm each parameter's gradient is clipped to, as in DINO
    freeze_last_layer: int = 1
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    norm_last_layer: bool = True
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    global_crops_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    local_crops_number: int = 0
    local_crops_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])
    local_crops_size: int | None = None  # default: 96/224 of the global size, in whole patches
    drop_path: float = 0.1
    tokens: str = "simprune"
    keep_rate: float = 0.8
    token_blocks: list[int] | None = None
    token_warmup: float = 0.0
    replay: bool = False
    dynamic: bool = False
    token_candidates: float = 0.5
    token_sparsity: float = 0.01
    knn_k: int = 20
    knn_temperature: float = 0.07
    amp: bool = True

    SECTION = "ssl"  # the token settings are checked by isoprune.tokens, for the API too
    LIMITS = {"epochs": COUNT, "batch_size": COUNT, "lr": POSITIVE, "min_lr": NONNEGATIVE, "warmup_epochs": NONNEGATIVE,
              "weight_decay": NONNEGATIVE, "weight_decay_end": NONNEGATIVE, "momentum_teacher": SHARE, "clip_grad": NONNEGATIVE,
              "freeze_last_layer": NONNEGATIVE, "out_dim": COUNT, "hidden_dim": COUNT, "bottleneck_dim": COUNT,
              "teacher_temp": POSITIVE, "warmup_teacher_temp": POSITIVE, "warmup_teacher_temp_epochs": NONNEGATIVE,
              "student_temp": POSITIVE, "center_momentum": SHARE, "local_crops_number": NONNEGATIVE, "local_crops_size": COUNT,
              "drop_path": FRACTION, "knn_k": COUNT, "knn_temperature": POSITIVE}
    PAIRS = {"global_crops_scale": (Range(0, 1, low_in=False), True), "local_crops_scale": (Range(0, 1, low_in=False), True)}
    HELP = {
        "method": "self-supervised method (dino)", "epochs": "epochs to train", "batch_size": "global batch, split over the processes",
        "lr": "peak learning rate for a batch of 256 (it scales with the batch)", "min_lr": "learning rate the cosine ends at",
        "warmup_epochs": "epochs of linear learning-rate warm-up", "weight_decay": "weight decay at the start (cosine to --weight-decay-end)",
        "weight_decay_end": "weight decay at the end", "momentum_teacher": "the teacher's EMA momentum at the start (cosine to 1)",
        "clip_grad": "clip each parameter's gradient norm to this, 0 for no clipping", "freeze_last_layer": "epochs the head's last layer stays frozen",
        "out_dim": "the DINO head's output dimension", "hidden_dim": "the DINO head's hidden width", "bottleneck_dim": "the DINO head's bottleneck",
        "norm_last_layer": "weight-normalise the head's last layer", "teacher_temp": "the teacher's temperature after its warm-up",
        "warmup_teacher_temp": "the teacher's temperature at the start", "warmup_teacher_temp_epochs": "epochs of the teacher temperature's warm-up",
        "student_temp": "the student's temperature", "center_momentum": "momentum of the teacher outputs' centre",
        "global_crops_scale": "area range of the two global crops", "local_crops_number": "local crops per image (never reduced)",
        "local_crops_scale": "area range of the local crops", "local_crops_size": "local crops' side; none: 96/224 of the global side",
        "drop_path": "stochastic depth", "tokens": "token reduction: simprune, evit, tome or none",
        "keep_rate": "share of the patch tokens each reducing block keeps", "token_blocks": "blocks that reduce; none: depth/4, depth/2 and 3*depth/4",
        "token_warmup": "share of the training over which the keep rate falls from 1 (cosine)",
        "replay": "SimPrune: the student drops what the teacher dropped", "dynamic": "SimPrune's dynamic variant: a learned gate chooses what to drop",
        "token_candidates": "dynamic: share of the pairs the gate may drop", "token_sparsity": "dynamic: weight of the gate's mean keep probability in the loss",
        "knn_k": "neighbours of the k-NN accuracy on val/ each epoch", "knn_temperature": "the k-NN vote's temperature",
        "amp": "mixed precision on CUDA (--no-amp: float32)",
    }


@dataclass
class PaperResult:
    """What the paper reports for this configuration (None where it gives no figure)."""

    macs: float | None = None
    params: float | None = None
    top1: float | None = None


@dataclass
class Recipe:
    name: str = ""
    description: str = ""
    targets: list[str] = field(default_factory=list)
    paper: PaperResult = field(default_factory=PaperResult)
    prune: PruneConfig = field(default_factory=PruneConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def build(cls, data, where: str = ""):
    """``cls`` from a dict, recursively; unknown keys and wrongly typed values are errors."""
    if not isinstance(data, dict):
        raise IsopruneError(f"{where or cls.__name__} must be a mapping, not {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    valid = {f.name: f for f in fields(cls)}
    unknown = [k for k in data if k not in valid]
    if unknown:
        raise IsopruneError(f"unknown key {_join(where, unknown[0])!r}", hint=f"valid keys here: {', '.join(valid)}")
    values = {}
    for key, value in data.items():
        kind = hints[key]
        if is_dataclass(kind):
            values[key] = build(kind, value or {}, _join(where, key))
        else:
            values[key] = _check_type(value, kind, _join(where, key))
    missing = [f.name for f in valid.values() if f.default is MISSING and f.default_factory is MISSING and f.name not in values]
    if missing:
        raise IsopruneError(f"missing key {_join(where, missing[0])!r}")
    return cls(**values)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _check_type(value, kind, where, hint: str | None = None):
    """Shallow check against a field's annotation: enough to catch ``lr: fast`` or a list for a
    number. Returns the value as the field keeps it (an int or numpy number for a float as a float,
    a tuple for a list as a list)."""
    options = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
    for option in options:
        base = typing.get_origin(option) or option
        if option is type(None) and value is None:
            return value
        if base is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        if base is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        if base is list and isinstance(value, tuple):
            return list(value)
        if base in (str, bool, list, dict) and isinstance(value, base):
            return value
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise IsopruneError(f"{where} must be {names}, not {value!r}", hint=hint)


class _Loader(yaml.SafeLoader):
    """YAML as ``safe_load`` reads it, with ``1e-3`` a number: PyYAML follows YAML 1.1, where a
    float needs a dot (``1.0e-3``), and reads ``lr: 1e-3`` as a string."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"), list("-+0123456789."))


def recipes_dir() -> Path:
    """``recipes/`` of a source checkout, else where the package installed them."""
    here = Path(__file__).resolve().parents[1] / "recipes"
    return here if here.is_dir() else Path(sys.prefix) / "share" / "isoprune" / "recipes"


def available(kind: str = "") -> list[Path]:
    """The pruning recipes, or with ``kind="ssl"`` the self-supervised ones (``recipes/ssl/``)."""
    return sorted((recipes_dir() / kind).glob("*.yaml"))


def load_recipe(path) -> Recipe:
    """A recipe from a YAML file path, or by name from ``recipes/`` (``deit_b_4.2g``,
    ``ssl/dino_deit_s_simprune``)."""
    path = Path(path)
    named = recipes_dir() / f"{path.as_posix().removesuffix('.yaml')}.yaml"
    if not path.is_file() and named.is_file():
        path = named
    if not path.is_file():
        known = [p.stem for p in available()] + [f"ssl/{p.stem}" for p in available("ssl")]
        raise IsopruneError(f"no recipe {path}", hint=f"give a YAML file, or one of: {', '.join(known)}")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as exc:
        raise IsopruneError(f"cannot parse recipe {path}: {str(exc).splitlines()[0]}") from exc
    recipe = build(Recipe, data or {}, "")
    recipe.name = recipe.name or path.stem
    return recipe


def named_targets() -> dict[str, list[tuple[Path, Recipe]]]:
    """Target names (a recipe's name and its ``targets``: ``deit_s``, ``convnext_t`` ...) to the
    recipe files that define them, with the recipes; the base model tells apart recipes that share
    a name."""
    found: dict[str, list[tuple[Path, Recipe]]] = {}
    for path in available():
        recipe = load_recipe(path)
        for name in {recipe.name, *recipe.targets}:
            found.setdefault(name.lower(), []).append((path, recipe))
    return found
