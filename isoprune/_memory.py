"""Whether a training batch fits in memory, checked before the first step.

A process the kernel kills for memory leaves no message, and a CUDA out-of-memory error comes only
after the data, the model and its teacher are loaded. Here the activations autograd keeps for the
backward pass are measured on two small batches of the real model, on its device and in its
precision, and scaled to the batch asked for; with the gradients and optimiser states still to
come, that estimates the peak of a training step (the backward pass's own temporaries, the loss
and the data loader come on top).
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ._errors import IsopruneError, batch_failed, setting

log = logging.getLogger("isoprune")
GIB = 2**30
# What training takes beyond the estimate. On a CPU the peak RSS of four AdamW steps was 1.16-1.49x
# the estimate (benchmarks/memory_estimate.py: glibc keeps what one step's activations freed, and
# the next step's do not all fit in it); on a GPU the caching allocator reuses its blocks, and only
# the backward pass's temporaries come on top. A batch is refused where its estimate times this
# does not fit, and warned of where it fits with less than 15% to spare.
HEADROOM = {"cpu": 1.6}
GPU_HEADROOM = 1.1
WARN = 1.15


def out_of_memory(exc: BaseException) -> bool:
    """Whether an error is a device running out of memory: CUDA's, or a CPU allocation torch
    refused (which it words as an internal assertion)."""
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


@contextlib.contextmanager
def named_batch(what: str, n: int, hint: str, **tensors):
    """Run a user's batch (the ``n``-th, from 1) through the model: an error it raises, but for
    running out of memory (the CLI's to word), becomes one naming the batch and its shapes
    (``_errors.batch_failed``)."""
    try:
        yield
    except (RuntimeError, ValueError, IndexError, TypeError, AttributeError) as exc:
        if out_of_memory(exc):
            raise
        raise batch_failed(what, n, exc, hint, **tensors) from exc


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes this process's cgroup (v2) may still take, where it sets a limit: a container's limit
    binds before the machine's free memory does."""
    try:
        limit = (root / "memory.max").read_text().strip()
        used = int((root / "memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - used, 0)


def free_bytes(device: torch.device) -> int | None:
    """Memory free for this process on ``device``; None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    known = [v for v in (_meminfo_available(), cgroup_room()) if v is not None]
    return min(known) if known else None


def saved_bytes(model: nn.Module, run: Callable[[], object]) -> int:
    """Bytes autograd keeps for the backward pass while ``run()`` calls ``model``: each storage
    once (an activation two ops keep is one tensor), the model's parameters not counted."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(kept.values())


def per_image(model: nn.Module, forward: Callable[[int], object], device: torch.device) -> tuple[float, float]:
    """Activation bytes per image and those that do not grow with the batch, from ``forward(n)``
    (the model's training forward on ``n`` images) at 2 and 4 images. The model's buffers
    (BatchNorm's running statistics) and the random number generators are left as they were."""
    buffers = [b.detach().clone() for b in model.buffers()]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        two, four = (saved_bytes(model, lambda n=n: forward(n)) for n in (2, 4))
    with torch.no_grad():
        for b, was in zip(model.buffers(), buffers):
            b.copy_(was)
    slope = max(four - two, 0) / 2
    return slope, max(two - 2 * slope, 0.0)


def training_copies(optimizer_states: int, processes: int) -> int:
    """Tensors the size of the trained parameters that a training step adds: gradients, the
    optimiser's states (AdamW: two) and, with more than one process, DDP's gradient buckets."""
    return 1 + optimizer_states + (processes > 1)


class Estimate:
    """What a batch needs in memory on ``device`` beside the model, measured with ``forward``
    (``per_image``): its activations, ``copies`` tensors the size of the trained parameters, and
    the allocator's headroom, for each of the ``local_processes`` that share a CPU."""

    def __init__(self, model: nn.Module, forward: Callable[[int], object], device: torch.device, *, copies: int,
                 local_processes: int = 1, image: str = "image"):
        self.free = free_bytes(device)
        self.device, self.image = device, image
        self.sharing = local_processes if device.type == "cpu" else 1
        self.headroom = HEADROOM.get(device.type, GPU_HEADROOM)
        self.trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        self.copies = copies
        self.slope, self.fixed = per_image(model, forward, device) if self.free is not None else (0.0, 0.0)

    def need(self, batch: int, extra_copies: int = 0) -> float:
        """Bytes a batch of ``batch`` per process needs, the allocator's headroom included."""
        return (self.fixed + (self.copies + extra_copies) * self.trained + self.slope * batch) * self.sharing * self.headroom

    def fits(self, batch: int, extra_copies: int = 0, spare: float = 1.0) -> bool:
        return self.free is None or self.need(batch, extra_copies) * spare <= self.free

    def where(self) -> str:
        return f"{readable(self.free)} free on {self.device}" + (f", shared by {self.sharing} processes" if self.sharing > 1 else "")

    def measured(self, batch: int, extra_copies: int = 0) -> str:
        return (f"about {readable(self.need(batch, extra_copies))} ({readable(self.slope)} of activations per {self.image}, measured, "
                f"and {self.headroom:g}x for the allocator)")


def readable(n: float) -> str:
    """Bytes in GiB, or MiB under one GiB."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def check_batch(model: nn.Module, forward: Callable[[int], object], batch: int, device: torch.device, *,
                copies: int, processes: int = 1, local_processes: int = 1, image: str = "image", what: str = "batch",
                steps: int | None = None) -> None:
    """Refuse, in one line, a batch (global, over ``processes``) whose activations, with ``copies``
    tensors the size of the trained parameters still to come, do not fit in the memory free on
    ``device`` (on a CPU, shared by the ``local_processes`` of this machine); warn where little
    room is left. Where the batch is taken in ``steps`` of gradient accumulation (fine-tuning),
    one step's images are what must fit, and the hint gives the steps that make the same batch
    fit; otherwise it gives the largest power of two that does."""
    est = Estimate(model, forward, device, copies=copies, local_processes=local_processes, image=image)
    per_process = batch // processes
    at_once = per_process // (steps or 1)
    if est.fits(at_once, spare=WARN):
        return
    said = f"a {what} of {per_process} per process" + (f" in {steps} steps of {at_once}" if steps and steps > 1 else "")
    if est.fits(at_once):
        log.warning("%s needs %s, close to the %s; it may run out of memory", said, est.measured(at_once), est.where())
        return
    nowhere = f"it does not fit at any batch size: give a smaller {setting('input_size')}, or a device with more memory"
    if steps:
        more = next((s for s in range(steps, per_process + 1) if per_process % s == 0 and est.fits(per_process // s, spare=WARN)), None)
        hint = nowhere if more is None else (f"pass {setting('grad_accum_steps', more)} ({more} steps of {per_process // more} images per "
                                             f"process make the same batch), or a smaller {setting('batch_size')}")
    else:
        fits = 2 * processes
        while est.fits(2 * fits // processes):
            fits *= 2
        hint = f"pass {setting('batch_size', fits)} (about the most that fits)" if est.fits(fits // processes) else nowhere
    raise IsopruneError(f"{said} needs {est.measured(at_once)}, more than the {est.where()}", hint=hint)


def piece_size(model: nn.Module, forward: Callable[[int], object], batch: int, device: torch.device, *,
               copies: int, local_processes: int = 1, image: str = "image", what: str = "batch") -> int | None:
    """How many images of a batch of ``batch`` (no gradient step: a gradient criterion's
    calibration) to put through the model at once: None where the whole batch fits; else the size
    of the pieces, all but the last equal, that fit beside the gradients of the whole model they
    add up to (one tensor the size of the parameters more), with room to spare. Refuses, in one
    line, where not even one image fits."""
    est = Estimate(model, forward, device, copies=copies, local_processes=local_processes, image=image)
    if est.fits(batch, spare=WARN):
        return None
    largest = 0
    while largest < batch and est.fits(largest + 1, extra_copies=1, spare=WARN):  # need() grows by one slope per image
        largest += 1
    if largest == 0:
        if not est.fits(1, extra_copies=1):
            raise IsopruneError(f"one image of a {what} needs {est.measured(1, extra_copies=1)}, more than the {est.where()}",
                                hint=f"give a smaller {setting('input_size')}, a device with more memory, or {setting('importance', 'l2')} (no gradients)")
        largest = 1
    pieces = -(-batch // largest)
    size = -(-batch // pieces)  # as even as the pieces can be
    log.info("a %s of %d needs %s, more than the %s: it goes through the model in %d pieces of at most %d images, "
             "whose gradients add up to the batch's", what, batch, est.measured(batch), est.where(), pieces, size)
    return size


def local_processes() -> int:
    """torchrun's processes on this machine."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))
