"""What calibrating a batch in pieces saves, and what it costs.

    python benchmarks/calibration_pieces.py

``isoprune prune`` with a gradient criterion (``taylor``, ``hessian``) measures the activations a
calibration batch keeps for its backward pass (``isoprune._memory.piece_size``); where the batch
does not fit, it goes through the model in pieces whose gradients add up to the batch's before
they are folded into the statistics (``isoprune._importance.calibrate``, in eval mode). Here each
model calibrates the same batch of random images (``--batch``, seeded) whole and in pieces of each
size in ``--pieces``, each in a fresh process: the peak RSS above the RSS once the model is built,
the wall time, and how far the mean squared gradient (``hessian``'s statistic, which a wrong
split would change most) is from the whole batch's, at most over all parameters, relative to the
largest value of each. CPU, float32, randomly initialised, 1000 classes, 224x224.

Writes ``results/calibration_pieces.csv``, ``calibration_pieces.json`` (with the command) and
``calibration_pieces.png``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from latency import save  # benchmarks/, beside this script

RESULTS = Path(__file__).parent / "results"
MODELS = ["deit_small_patch16_224", "resnet50", "mobilenetv2_100", "convnext_tiny"]
GIB = 2**30

CHILD = r"""
import json, resource, sys, time, torch, timm
from isoprune import _importance
name, batch, piece, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
model = timm.create_model(name)
g = torch.Generator().manual_seed(1)
calib = [(torch.randn(batch, 3, 224, 224, generator=g), torch.randint(0, 1000, (batch,), generator=g))]
with open("/proc/self/statm") as f:
    before = int(f.read().split()[1]) * 4096
start = time.perf_counter()
stats = _importance.calibrate(model, calib, stats=("sq_grad",), chunk=piece if piece < batch else None)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
names = {p: n for n, p in model.named_parameters()}
torch.save({names[p]: s for p, s in stats["sq_grad"].items()}, out)
print(json.dumps({"peak": peak - before, "seconds": seconds}))
"""


def child(name: str, batch: int, piece: int, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, name, str(batch), str(piece), str(out)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def farthest(whole: dict, pieces: dict) -> float:
    """The largest difference between two sets of statistics, relative to each tensor's largest value."""
    return max(float((pieces[k] - w).abs().max() / w.abs().max().clamp_min(1e-30)) for k, w in whole.items())


def draw(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        left.plot([r["piece"] for r in mine], [r["peak_gib"] for r in mine], "o-", label=name)
        right.plot([r["piece"] for r in mine], [r["seconds"] / mine[0]["seconds"] for r in mine], "o-", label=name)
    left.set(xscale="log", xlabel="images per piece (the whole batch at the right)", ylabel="peak RSS above start (GiB)",
             title="calibration's memory")
    right.set(xscale="log", xlabel="images per piece", ylabel="time / the whole batch's", title="calibration's time")
    ticks = sorted({r["piece"] for r in rows})
    for ax in (left, right):
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--batch", type=int, default=32, help="images in the calibration batch")
    ap.add_argument("--pieces", nargs="+", type=int, default=[8, 2], help="images per piece, besides the whole batch")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    rows = []
    print(f"{'model':<24} {'piece':>5} {'peak GiB':>8} {'seconds':>7} {'farthest from whole':>19}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            whole = None
            for piece in [args.batch, *sorted(args.pieces, reverse=True)]:
                stats = Path(tmp) / f"{name}-{piece}.pt"
                measured = child(name, args.batch, piece, stats)
                found = torch.load(stats)
                whole = whole or found
                rows.append({"model": name, "batch": args.batch, "piece": piece, "peak_gib": measured["peak"] / GIB,
                             "seconds": measured["seconds"], "farthest": farthest(whole, found)})
                r = rows[-1]
                print(f"{name:<24} {piece:>5} {r['peak_gib']:>8.2f} {r['seconds']:>7.2f} {r['farthest']:>19.1e}", flush=True)
            save(rows, args.out, name == args.models[-1], torch.device("cpu"), "calibration_pieces", draw)


if __name__ == "__main__":
    main()
