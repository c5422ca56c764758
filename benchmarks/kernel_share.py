"""Where a pruned model's time goes: matrix work (convolutions, matmuls), attention, and the rest.

    python benchmarks/kernel_share.py --device cuda --models resnet50 deit_b mobilenetv2

Why a pruned model is less faster than its MACs say. MACs count only the matrix work, whose cost
falls with the product of a layer's input and output widths; the rest (normalisation,
activations, residual additions, pooling) reads and writes every activation once, so its cost
falls with the width alone. Where the rest takes most of the time, the speedup is nearer the
square root of the MACs reduction than the reduction itself.

Each model (the unpruned one and one pruned to its recipe's shape, as ``latency.py`` builds them)
runs ``--iters`` forward passes under ``torch.profiler`` in ``--dtype`` and channels-last memory
format after 3 untimed ones. Every kernel (GPU) or operator (CPU, each counted without the
operators it calls) is sorted into matrix work, attention or other by its name; the table gives
milliseconds per forward pass in each, and the kernels that take longest.

Writes ``results/kernel_share.json`` (with the command) and ``kernel_share.png``.
"""
from __future__ import annotations

import argparse
import collections
import json
import re
from pathlib import Path

import torch

import latency  # benchmarks/, beside this script
from isoprune._latency import DTYPES, sync

MATRIX_KERNELS = ("gemm", "xmma", "cutlass", "conv", "fprop", "implicit", "sm90", "nvjet", "cublas", "winograd")
MATRIX_OPS = re.compile(r"conv|addmm|\bmm\b|bmm|linear|matmul")


def kind(name: str) -> str:
    """``attention``, ``matrix`` or ``other``, from a GPU kernel's or a CPU operator's name."""
    n = name.lower()
    if any(k in n for k in ("flash", "fmha", "attention", "sdpa")):
        return "attention"
    if n.startswith("aten::") and MATRIX_OPS.search(n) or not n.startswith("aten::") and any(k in n for k in MATRIX_KERNELS):
        return "matrix"
    return "other"


def profile(model: torch.nn.Module, x: torch.Tensor, iters: int) -> tuple[dict[str, float], list[dict]]:
    """Milliseconds per forward pass by kind, and every kernel's (or operator's) share."""
    gpu = x.is_cuda
    activity = torch.profiler.ProfilerActivity.CUDA if gpu else torch.profiler.ProfilerActivity.CPU
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        sync(x.device)
        with torch.profiler.profile(activities=[activity]) as prof:
            for _ in range(iters):
                model(x)
            sync(x.device)
    kinds, kernels = collections.Counter(), []
    for e in prof.key_averages():
        ms = (e.self_device_time_total if gpu else e.self_cpu_time_total) / iters / 1e3
        if ms > 0:
            kernels.append({"name": e.key, "kind": kind(e.key), "ms": ms, "calls": e.count // iters})
            kinds[kernels[-1]["kind"]] += ms
    return dict(kinds), sorted(kernels, key=lambda k: -k["ms"])


def draw(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 4))
    labels = [f"{r['model']}\n{'pruned' if r['round_to'] else 'base'}" for r in rows]
    bottom = [0.0] * len(rows)
    for k, colour in (("matrix", "tab:blue"), ("attention", "tab:green"), ("other", "tab:orange")):
        heights = [r["ms"].get(k, 0.0) for r in rows]
        ax.bar(labels, heights, bottom=bottom, color=colour, label=k)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set(ylabel="ms per forward pass", title=f"time by kind of work ({rows[0]['device']}, {rows[0]['dtype']}, batch {rows[0]['batch']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet50", "deit_b", "mobilenetv2"], choices=list(latency.RECIPES))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--round-to", type=int, default=32)
    ap.add_argument("--dtype", default="float16", choices=list(DTYPES))
    ap.add_argument("--iters", type=int, default=5, help="profiled forward passes per model")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=latency.RESULTS)
    args = ap.parse_args()
    device, dtype = latency.set_up(args), DTYPES[args.dtype]
    rows = []
    for name in args.models:
        models = latency.contenders(name, [args.round_to])
        x = torch.randn(args.batch, *models[0]["model"].pretrained_cfg["input_size"], device=device, dtype=dtype)
        x = x.to(memory_format=torch.channels_last)
        for m in models:
            ms, kernels = profile(latency.runner(m["model"].to(device, dtype), x, "channels_last"), x, args.iters)
            m["model"].cpu()
            total = sum(ms.values())
            rows.append({"model": name, "round_to": m["round_to"], "macs_g": m["macs"] / 1e9, "device": str(device), "dtype": args.dtype,
                         "batch": args.batch, "ms_total": total, "ms": ms, "kernels": kernels[:20]})
            print(f"{name} {m['name']}: {m['macs'] / 1e9:.2f} GMACs, {total:.2f} ms/forward: "
                  + ", ".join(f"{k} {v:.2f} ms ({100 * v / total:.0f}%)" for k, v in sorted(ms.items(), key=lambda kv: -kv[1])), flush=True)
            for k in kernels[:8]:
                print(f"   {k['ms']:6.2f} ms x{k['calls']:<4} [{k['kind']}] {k['name'][:90]}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernel_share.json").write_text(json.dumps({**latency.meta("kernel_share", device), "rows": rows}, indent=1))
    draw(rows, args.out / "kernel_share.png")
    print(f"saved {args.out}/kernel_share.json, kernel_share.png")


if __name__ == "__main__":
    main()
