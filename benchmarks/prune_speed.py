"""Pruning wall time and peak memory: isoprune vs Torch-Pruning's MetaPruner, same model and ratios.

    python benchmarks/prune_speed.py --models deit_base_distilled_patch16_224 resnet50 --repeats 3

Each run is a fresh process (clean RSS), contenders alternate, medians and spread are reported.
Ratio 0.5 everywhere (ViT: emb, heads, mlp at 0.5; head dims left whole, as MetaPruner with
prune_head_dims=False), l2 magnitude, isomorphic global ranking in MetaPruner.
Peak memory is the process's peak RSS minus its RSS once the model is built.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def run_one(contender: str, name: str) -> dict:
    import resource
    import warnings

    import timm
    import torch

    warnings.filterwarnings("ignore")
    model = timm.create_model(name).eval()
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    base = _rss()
    start = time.perf_counter()
    if contender == "isoprune":
        import isoprune

        isoprune.prune(model, isoprune.Ratios(emb=0.5, heads=0.5, mlp=0.5, default=0.5))
    else:
        import torch_pruning as tp
        from timm.layers.attention import Attention

        x = torch.randn(1, *model.pretrained_cfg["input_size"])
        heads = {m.qkv: m.num_heads for m in model.modules() if isinstance(m, Attention)}
        head = model.get_classifier()
        pruner = tp.pruner.MetaPruner(
            model, x, importance=tp.importance.GroupMagnitudeImportance(p=2), global_pruning=True,
            isomorphic=True, pruning_ratio=0.5, num_heads=heads, prune_num_heads=bool(heads),
            head_pruning_ratio=0.5, ignored_layers=list(head) if isinstance(head, tuple) else [head],
        )
        pruner.step()
        for m in model.modules():
            if isinstance(m, Attention):
                m.num_heads = pruner.num_heads[m.qkv]
                m.attn_dim = m.qkv.out_features // 3
                m.head_dim = m.attn_dim // m.num_heads
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    params = sum(p.numel() for p in model.parameters())
    return {"contender": contender, "model": name, "seconds": seconds, "peak_bytes": peak,
            "model_bytes": size, "params_after": params}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["deit_base_distilled_patch16_224", "resnet50", "convnext_base"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one)))
        return
    rows = []
    for name in args.models:
        for _ in range(args.repeats):
            for contender in ("isoprune", "torch-pruning"):
                out = subprocess.run([sys.executable, __file__, "--one", contender, name], capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"{contender} on {name} failed:\n{out.stderr[-2000:]}")
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = []
    print(f"{'model':<34} {'isoprune s':>11} {'TP s':>8} {'speedup':>8} {'iso peak/model':>15} {'TP peak/model':>14}")
    for name in args.models:
        get = lambda c, k: [r[k] for r in rows if r["model"] == name and r["contender"] == c]
        iso_s, tp_s = get("isoprune", "seconds"), get("torch-pruning", "seconds")
        size = get("isoprune", "model_bytes")[0]
        iso_m = statistics.median(get("isoprune", "peak_bytes")) / size
        tp_m = statistics.median(get("torch-pruning", "peak_bytes")) / size
        row = {"model": name, "isoprune_s": statistics.median(iso_s), "isoprune_s_range": [min(iso_s), max(iso_s)],
               "tp_s": statistics.median(tp_s), "tp_s_range": [min(tp_s), max(tp_s)],
               "speedup": statistics.median(tp_s) / statistics.median(iso_s),
               "isoprune_peak_over_model": iso_m, "tp_peak_over_model": tp_m,
               "params_after": {"isoprune": get("isoprune", "params_after")[0], "torch-pruning": get("torch-pruning", "params_after")[0]}}
        summary.append(row)
        print(f"{name:<34} {row['isoprune_s']:>11.2f} {row['tp_s']:>8.2f} {row['speedup']:>7.1f}x {iso_m:>15.2f} {tp_m:>14.2f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "prune_speed.json"
    out.write_text(json.dumps({"command": " ".join(sys.argv), "summary": summary, "runs": rows}, indent=1))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
