"""Pruning wall time and peak memory: isoprune vs Torch-Pruning's MetaPruner, same model, ratios and importance.

    python benchmarks/prune_speed.py --repeats 3

Both prune the same randomly initialised timm model (with a 1000-class head; norms timm starts
at zero set to one, so that no group's scores all tie) with ratio 0.5 for every kind (ViTs: embedding,
heads and MLP at 0.5, head dims whole, i.e. MetaPruner with ``prune_num_heads``,
``head_pruning_ratio=0.5``, ``prune_head_dims=False``), ranking within isomorphic groups
(MetaPruner with ``global_pruning=True, isomorphic=True``), classifier untouched, and the same
importance: ``l2`` magnitude, and ``taylor`` on the same calibration batches (random images and
labels; both take the gradient of the cross-entropy, and computing it is part of their time).

Every run is a fresh process (imports done before the clock starts, nothing warmed up), and the
contenders alternate: isoprune, Torch-Pruning, then the floor: one forward pass of the unpruned
model at batch 1 (Torch-Pruning traces with one), and with ``taylor`` also the forward and backward
passes over the calibration batches, the gradients kept (what any gradient criterion computes and
holds). Reported: median wall time and its spread, the time per phase (exclusive: a phase's time
leaves out the phases it calls), peak RSS above the RSS once the model is built as a multiple of
the model's weight size (the floor's too), and the MACs and params of both pruned models (counted
after the clock stops).

Phases. isoprune: ``trace`` (the dependency graph, on a weightless copy), ``group`` (coupled
channels, isomorphism signatures, the check that every group can be cut), ``score`` (calibration
and importance), ``plan`` (ranking, and the pruned shape's MACs), ``apply`` (cutting the real
model). Torch-Pruning: ``trace`` (``build_dependency``), ``group`` (``get_pruning_group``),
``score`` (calibration and the importance), ``plan`` (the rest of ``MetaPruner``), ``apply``
(``Group.prune``).

Writes ``results/prune_speed.csv``, ``prune_speed.json`` (with the command) and ``prune_speed.png``.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import _machine  # benchmarks/, beside this script

RESULTS = Path(__file__).parent / "results"
MODELS = [
    "deit_base_distilled_patch16_224", "vit_large_patch16_224", "vit_huge_patch14_224",
    "resnet50", "resnet152", "convnext_base", "mobilenetv2_100",
]
PHASES = ("trace", "group", "score", "plan", "apply")
CONTENDERS = ("isoprune", "torch-pruning", "floor")
TARGET = 4.0
MEMORY_TARGET = 1.5


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class Phases:
    """Wall time per phase, from functions wrapped in place; a call's time is taken out of the
    phase of the wrapped call it runs inside, so the phases add up to no more than the total."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[str] = []

    def wrap(self, owner, attr: str, phase: str) -> None:
        inner = getattr(owner, attr)

        def timed(*args, **kwargs):
            self._stack.append(phase)
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self._stack.pop()
                self.seconds[phase] += elapsed
                if self._stack:
                    self.seconds[self._stack[-1]] -= elapsed

        setattr(owner, attr, timed)

    def breakdown(self, total: float, rest: str) -> dict[str, float]:
        out = {p: self.seconds.get(p, 0.0) for p in PHASES}
        out[rest] += total - sum(self.seconds.values())
        return out


def calibration(model, batches: int, batch_size: int) -> list:
    import torch

    g = torch.Generator().manual_seed(0)
    size = model.pretrained_cfg["input_size"]
    classes = model.num_classes
    return [(torch.randn(batch_size, *size, generator=g), torch.randint(0, classes, (batch_size,), generator=g)) for _ in range(batches)]


def run_isoprune(model, importance: str, calib: list, phases: Phases) -> None:
    import isoprune
    from isoprune import _apply, _importance, _plan, _trace

    phases.wrap(_trace, "build_graph", "trace")
    phases.wrap(_plan, "analyse", "group")
    phases.wrap(_importance, "calibrate", "score")
    phases.wrap(_importance, "channel_scores", "score")
    phases.wrap(_apply, "apply_plan", "apply")
    ratios = isoprune.Ratios(emb=0.5, heads=0.5, mlp=0.5, default=0.5)
    isoprune.prune(model, ratios, importance=importance, calib=calib if importance == "taylor" else None)


def run_torch_pruning(model, importance: str, calib: list, phases: Phases) -> None:
    import torch
    import torch.nn.functional as F
    import torch_pruning as tp
    from timm.layers.attention import Attention

    phases.wrap(tp.DependencyGraph, "build_dependency", "trace")
    phases.wrap(tp.DependencyGraph, "get_pruning_group", "group")
    phases.wrap(tp.dependency.Group, "prune", "apply")
    if importance == "taylor":
        criterion = tp.importance.GroupTaylorImportance()
        start = time.perf_counter()
        for x, y in calib:
            F.cross_entropy(model(x), y).backward()
        phases.seconds["score"] += time.perf_counter() - start
    else:
        criterion = tp.importance.GroupMagnitudeImportance(p=2)
    phases.wrap(type(criterion), "__call__", "score")
    x = torch.randn(1, *model.pretrained_cfg["input_size"])
    heads = {m.qkv: m.num_heads for m in model.modules() if isinstance(m, Attention)}
    head = model.get_classifier()
    pruner = tp.pruner.MetaPruner(
        model, x, importance=criterion, global_pruning=True, isomorphic=True, pruning_ratio=0.5,
        num_heads=heads, prune_num_heads=bool(heads), prune_head_dims=False, head_pruning_ratio=0.5,
        ignored_layers=list(head) if isinstance(head, tuple) else [head],
    )
    pruner.step()
    for m in model.modules():  # what MetaPruner leaves to the user
        if isinstance(m, Attention):
            m.num_heads = pruner.num_heads[m.qkv]
            m.attn_dim = m.qkv.out_features // 3
            m.head_dim = m.attn_dim // m.num_heads


def run_one(contender: str, name: str, importance: str, calib_batches: int, calib_size: int) -> dict:
    import resource
    import warnings

    import timm
    import torch

    import isoprune
    import torch_pruning  # noqa: F401 - imported before the clock, as isoprune is

    for public in isoprune.__all__:  # isoprune imports its modules on first use: all of them before the clock
        getattr(isoprune, public)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=1000).eval()  # a classifier on headless models (ViT-H) too
    with torch.no_grad():  # timm starts each residual block's last norm at zero: every score in its group would tie
        for m in model.modules():
            weight = getattr(m, "weight", None)
            if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm)) and weight is not None and not weight.any():
                weight.fill_(1.0)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    calib = calibration(model, calib_batches, calib_size) if importance == "taylor" else []
    phases = Phases()
    base = _rss()
    start = time.perf_counter()
    if contender == "floor":
        with torch.no_grad():
            model(torch.randn(1, *model.pretrained_cfg["input_size"]))
        for x, y in calib:
            torch.nn.functional.cross_entropy(model(x), y).backward()
    elif contender == "isoprune":
        run_isoprune(model, importance, calib, phases)
    else:
        run_torch_pruning(model, importance, calib, phases)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    macs, params = isoprune.count(model)
    return {"contender": contender, "model": name, "importance": importance, "seconds": seconds,
            "phases": phases.breakdown(seconds, "plan") if contender != "floor" else {},
            "peak_bytes": peak, "model_bytes": size, "macs_after": macs, "params_after": params,
            "threads": torch.get_num_threads()}


def summarise(rows: list[dict], name: str, importance: str) -> dict:
    mine = lambda c: [r for r in rows if r["model"] == name and r["importance"] == importance and r["contender"] == c]  # noqa: E731
    iso, tp, floor = mine("isoprune"), mine("torch-pruning"), mine("floor")
    secs = lambda rs: [r["seconds"] for r in rs]  # noqa: E731
    median_phases = lambda rs: {p: statistics.median(r["phases"][p] for r in rs) for p in PHASES}  # noqa: E731
    size = iso[0]["model_bytes"]
    return {
        "model": name, "importance": importance, "repeats": len(iso),
        "isoprune_s": statistics.median(secs(iso)), "isoprune_s_range": [min(secs(iso)), max(secs(iso))],
        "tp_s": statistics.median(secs(tp)), "tp_s_range": [min(secs(tp)), max(secs(tp))],
        "floor_s": statistics.median(secs(floor)),
        "speedup": statistics.median(secs(tp)) / statistics.median(secs(iso)),
        "isoprune_phases": median_phases(iso), "tp_phases": median_phases(tp),
        "isoprune_peak_over_model": statistics.median(r["peak_bytes"] for r in iso) / size,
        "tp_peak_over_model": statistics.median(r["peak_bytes"] for r in tp) / size,
        "floor_peak_over_model": statistics.median(r["peak_bytes"] for r in floor) / size,
        "model_mb": size / 2**20,
        "macs_after": {"isoprune": iso[0]["macs_after"], "torch-pruning": tp[0]["macs_after"]},
        "params_after": {"isoprune": iso[0]["params_after"], "torch-pruning": tp[0]["params_after"]},
        "macs_difference": iso[0]["macs_after"] / tp[0]["macs_after"] - 1,
    }


def draw(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [s for s in summary if s["importance"] == "l2"] or summary
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    labels = [s["model"].split("_patch")[0] for s in rows]
    for offset, key, hatch in ((-0.2, "isoprune_phases", ""), (0.2, "tp_phases", "//")):
        bottom = [0.0] * len(rows)
        for i, phase in enumerate(PHASES):
            heights = [s[key][phase] / s["tp_s"] for s in rows]
            left.bar([j + offset for j in range(len(rows))], heights, 0.38, bottom=bottom, color=f"C{i}", hatch=hatch,
                     edgecolor="white", label=phase if offset < 0 else None)
            bottom = [b + h for b, h in zip(bottom, heights)]
    left.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
    left.set(ylabel="time / Torch-Pruning's time", title=f"{rows[0]['importance']}: isoprune (left) vs Torch-Pruning (hatched), by phase")
    left.legend(fontsize=8)
    for k, importance in enumerate(dict.fromkeys(s["importance"] for s in summary)):
        mine = [s for s in summary if s["importance"] == importance]
        right.bar([j + 0.4 * k - 0.2 for j in range(len(mine))], [s["speedup"] for s in mine], 0.38, label=importance)
    right.axhline(TARGET, color="grey", ls="--", lw=1, label=f"target {TARGET:g}x")
    right.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    right.set(ylabel="speedup over Torch-Pruning", title="isoprune speedup (median)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--importance", nargs="+", default=["l2", "taylor"], choices=["l2", "taylor"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calib-batches", type=int, default=1)
    ap.add_argument("--calib-size", type=int, default=2, help="images per calibration batch")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per run")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one, args.calib_batches, args.calib_size)))
        return
    rows, summary = [], []
    print(f"{'model':<32} {'imp':<6} {'isoprune s':>10} {'TP s':>8} {'speedup':>8} {'floor s':>7} "
          f"{'iso/model':>9} {'TP/model':>8} {'floor/model':>11} {'MACs iso/TP':>12}")
    for name in args.models:
        for importance in args.importance:
            for _ in range(args.repeats):
                for contender in CONTENDERS:
                    cmd = [sys.executable, __file__, "--one", contender, name, importance,
                           "--calib-batches", str(args.calib_batches), "--calib-size", str(args.calib_size)]
                    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                    if out.returncode:
                        raise SystemExit(f"{contender} on {name} ({importance}) failed:\n{out.stderr[-2000:]}")
                    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            s = summarise(rows, name, importance)
            summary.append(s)
            print(f"{name:<32} {importance:<6} {s['isoprune_s']:>10.2f} {s['tp_s']:>8.2f} {s['speedup']:>7.1f}x {s['floor_s']:>7.2f} "
                  f"{s['isoprune_peak_over_model']:>9.2f} {s['tp_peak_over_model']:>8.2f} {s['floor_peak_over_model']:>11.2f} "
                  f"{1 + s['macs_difference']:>12.3f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    flat = [{k: v for k, v in s.items() if not isinstance(v, dict)}
            | {f"isoprune_{p}_s": s["isoprune_phases"][p] for p in PHASES} | {f"tp_{p}_s": s["tp_phases"][p] for p in PHASES}
            | {"isoprune_macs": s["macs_after"]["isoprune"], "tp_macs": s["macs_after"]["torch-pruning"]} for s in summary]
    with open(args.out / "prune_speed.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    meta = {"command": " ".join(["python", "benchmarks/prune_speed.py", *sys.argv[1:]]), "threads": rows[0]["threads"],
            "cpu": _machine.cpu(), "target_speedup": TARGET, "memory_target": MEMORY_TARGET}
    (args.out / "prune_speed.json").write_text(json.dumps({**meta, "summary": summary, "runs": rows}, indent=1))
    draw(summary, args.out / "prune_speed.png")
    print(f"saved {args.out}/prune_speed.csv, prune_speed.json, prune_speed.png")


if __name__ == "__main__":
    main()
