"""Latency budgets: ``plan(budget="latency=50%")`` times the shapes it tries instead of counting
their MACs.

MACs predict speed where matrix work dominates, as on a CPU. On a GPU in half precision,
BatchNorm, activations and additions take most of a CNN's time, and their cost falls with the
width, not with the MACs: ResNet-50 pruned to half its MACs ran 1.36-1.42x faster on an H100, not
2x (``benchmarks/README.md``). A latency budget measures instead. Each shape the budget search
tries is cut from a copy of the model (its own weights) and timed where, and as, it will run.

Each shape is timed in turns with the unpruned model, and its time is the unpruned model's
first measurement scaled by the median ratio of the two, round by round: a machine that slows
down or speeds up during the search (a shared one, a GPU warming up) moves both alike. A shape
whose rounds fall on both sides of the budget is timed for more rounds (up to ``MORE`` times as
many), so that noise decides fewer of the bisection's steps, which it cannot take back.
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm import tqdm

from . import _recipes
from ._errors import IsopruneError
from ._plan import figure

DTYPES = {name: getattr(torch, name) for name in _recipes.DTYPES}
MORE = 3


def cast(dtype: str, channels_last: bool = False) -> dict:
    """``Module.to`` / ``Tensor.to`` keywords for weights and inputs in ``dtype`` (a name in
    ``DTYPES``), channels-last if asked."""
    if dtype not in DTYPES:
        raise IsopruneError(f"unknown dtype {dtype!r}", hint=f"use one of {', '.join(DTYPES)}")
    return {"dtype": DTYPES[dtype], "memory_format": torch.channels_last if channels_last else torch.contiguous_format}


def described(dtype: str, channels_last: bool) -> str:
    """How a model ran, for a line of text: ``float16, channels-last``."""
    return ", ".join([dtype] + ["channels-last"] * channels_last)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU's), so that a clock reads when it is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """How a latency budget is measured: forward passes at ``batch_size`` on the device the model
    is on, with its weights and inputs in ``dtype`` (channels-last if asked). Each model is timed
    for about ``seconds`` in ``rounds`` samples, after untimed passes that fill half as long (the
    first passes pay for allocation and kernel selection); a shape that the samples do not put
    clearly over or under the budget, up to three times as long."""

    batch_size: int = 32
    dtype: str = "float32"
    channels_last: bool = False
    seconds: float = 1.0
    rounds: int = 3

    def __post_init__(self):
        cast(self.dtype)  # a known precision
        if self.batch_size < 1 or self.rounds < 1 or self.seconds < 0:
            raise IsopruneError(f"cannot time {self}", hint="batch_size and rounds must be at least 1, seconds at least 0")


def _seconds_per_pass(model: nn.Module, x: torch.Tensor, passes: int) -> float:
    sync(x.device)
    began = time.perf_counter()
    for _ in range(passes):
        model(x)
    sync(x.device)
    return (time.perf_counter() - began) / passes


@torch.inference_mode()
def warm_up(model: nn.Module, x: torch.Tensor, seconds: float) -> None:
    """Untimed passes that fill ``seconds`` (at least two)."""
    first = _seconds_per_pass(model, x, 1)
    _seconds_per_pass(model, x, max(1, math.ceil(seconds / max(first, 1e-6))))


@torch.inference_mode()
def interleaved(models: list[nn.Module], x: torch.Tensor, timing: Timing) -> list[list[float]]:
    """Milliseconds per forward pass of each (warmed-up) model on ``x``, one sample per round,
    the models taking turns over ``timing.rounds`` rounds; a sample is as many passes as fill its
    share of ``timing.seconds``."""
    share = timing.seconds / timing.rounds
    passes = [max(1, math.ceil(share / max(_seconds_per_pass(m, x, 1), 1e-6))) for m in models]
    samples = [[] for _ in models]
    for _ in range(timing.rounds):
        for m, n, s in zip(models, passes, samples):
            s.append(1000 * _seconds_per_pass(m, x, n))
    return samples


class Timer:
    """The size a latency search bisects on: a plan's latency in milliseconds, measured once per
    plan on a copy of ``model`` cut as the plan says, in turns with an unpruned copy. ``model``
    itself is not touched. ``shapes`` lists what each shape timed: its MACs, milliseconds and
    rounds."""

    def __init__(self, model: nn.Module, inputs, timing: Timing | None = None):
        if not isinstance(inputs, torch.Tensor):
            raise IsopruneError("a latency budget times models of one image input", hint="give a MACs or params budget instead")
        self.model, self.timing = model, timing or Timing()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.settings = {**asdict(self.timing), "device": str(device)}
        self._cast = {"device": device, **cast(self.timing.dtype, self.timing.channels_last)}
        self._x = torch.randn(self.timing.batch_size, *inputs.shape[1:], device=device).to(**self._cast)
        self._reference = self._bar = self._cudnn_benchmark = None
        self._reference_ms = 0.0
        self.shapes: list[dict] = []

    def _ready(self, model: nn.Module) -> nn.Module:
        model = model.eval().to(**self._cast)
        warm_up(model, self._x, self.timing.seconds / 2)
        return model

    def __enter__(self) -> "Timer":
        self._cudnn_benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True  # on a GPU, each shape with the kernels cuDNN finds fastest for it, as deployed
        self._bar = tqdm(desc=f"timing pruned shapes (batch {self.timing.batch_size}, {self.settings['device']})", unit="shape", leave=False)
        try:
            self._reference = self._ready(copy.deepcopy(self.model))
            self._reference_ms = statistics.median(interleaved([self._reference], self._x, self.timing)[0])
        except BaseException:
            self.__exit__()
            raise
        self._bar.set_postfix_str(f"unpruned: {self._reference_ms:.2f} ms")
        return self

    def __exit__(self, *exc) -> None:
        torch.backends.cudnn.benchmark = self._cudnn_benchmark
        self._bar.close()
        self._reference = None

    def __call__(self, pruning, near: float | None = None) -> float:
        """The plan's milliseconds: the unpruned model's, scaled by the median of the rounds'
        ratios of the shape to the unpruned copy. Given the budget (``near``, ms), rounds are added
        while their scaled times fall on both sides of it, up to ``MORE`` times ``timing.rounds``."""
        ms = getattr(pruning, "_latency_ms", None)
        if ms is None:
            from ._apply import cut_as

            pruned = self._ready(cut_as(copy.deepcopy(self.model), pruning, pruning._ops))
            times: list[float] = []
            while not times or (near is not None and min(times) <= near <= max(times) and len(times) < MORE * self.timing.rounds):
                reference, timed = interleaved([self._reference, pruned], self._x, self.timing)
                times += [self._reference_ms * t / r for t, r in zip(timed, reference)]
            ms = pruning._latency_ms = statistics.median(times)
            del pruned
            self.shapes.append({"macs": pruning.macs["after"], "ms": ms, "rounds": len(times)})
            self._bar.update()
            self._bar.set_postfix_str(f"{figure(pruning.macs['after'], 'macs')} MACs: {ms:.2f} ms in {len(times)} rounds")
        return ms
