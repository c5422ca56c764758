"""How close is the memory check before training to what a training step takes?

    python benchmarks/memory_estimate.py

``isoprune finetune`` (and ``ssl``, and ``prune``'s calibration for gradient criteria) refuses a
batch that cannot fit before the first step (``isoprune._memory.check_batch``): it measures the
activations autograd keeps on 2 and 4 random images, scales them to the batch, and adds the
gradients and AdamW's two states still to come. Here, for each model and batch, that estimate
is made in one fresh process, and in another (which never ran the estimate) ``--steps`` AdamW
steps are taken on random images in training mode, as ``finetune`` takes them: the peak RSS above
the RSS just before them is what training took. From the second step on the optimiser's states
are held while the activations are, and on a CPU the peak grows over the first few steps: glibc's
allocator keeps what the activations of one step freed, and the next step's do not all fit in it. CPU, float32, randomly initialised, 1000 classes, 224x224. The check refuses
an estimate over 1/1.1 of the free memory, and warns of one over 1/1.25.

Writes ``results/memory_estimate.csv``, ``memory_estimate.json`` (with the command) and
``memory_estimate.png``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from latency import save  # benchmarks/, beside this script

RESULTS = Path(__file__).parent / "results"
MODELS = ["deit_small_patch16_224", "resnet50", "mobilenetv2_100", "convnext_tiny"]
GIB = 2**30

CHILD = r"""
import json, resource, sys, torch, timm
from isoprune import _memory
name, batch, what, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
torch.manual_seed(0)
model = timm.create_model(name).train()
if what == "estimate":
    slope, fixed = _memory.per_image(model, lambda n: model(torch.randn(n, 3, 224, 224)), torch.device("cpu"))
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"activations": slope * batch + fixed, "per_image": slope, "states": _memory.training_copies(2, 1) * params}))
else:
    optimizer = torch.optim.AdamW(model.parameters())
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))
    with open("/proc/self/statm") as f:
        before = int(f.read().split()[1]) * 4096
    for _ in range(steps):  # as finetune steps: from the second on, AdamW's states are there all along
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"step": peak - before}))
"""


def child(name: str, batch: int, what: str, steps: int) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, name, str(batch), what, str(steps)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def draw(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    top = max(max(r["estimate_gib"], r["step_gib"]) for r in rows) * 1.1
    ax.plot([0, top], [0, top], color="grey", lw=1, ls="--", label="estimate = step")
    ax.plot([0, top], [0, top * 1.1], color="grey", lw=1, ls=":", label="refused above (x1.1)")
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        ax.plot([r["step_gib"] for r in mine], [r["estimate_gib"] for r in mine], "o-", label=name)
    ax.set(xlabel="peak RSS of the training steps above their start (GiB)", ylabel="estimate before training (GiB)", xlim=(0, top), ylim=(0, top * 1.1))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--batches", nargs="+", type=int, default=[8, 32])
    ap.add_argument("--steps", type=int, default=4, help="training steps taken (the peak grows over the first few)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    rows = []
    print(f"{'model':<24} {'batch':>5} {'MiB/image':>9} {'estimate GiB':>12} {'steps GiB':>9} {'estimate/steps':>14}")
    for name in args.models:
        for batch in args.batches:
            estimate, step = child(name, batch, "estimate", args.steps), child(name, batch, "steps", args.steps)
            total = estimate["activations"] + estimate["states"]
            rows.append({"model": name, "batch": batch, "per_image_mib": estimate["per_image"] / 2**20, "estimate_gib": total / GIB,
                         "step_gib": step["step"] / GIB, "ratio": total / step["step"]})
            r = rows[-1]
            print(f"{name:<24} {batch:>5} {r['per_image_mib']:>9.1f} {r['estimate_gib']:>12.2f} {r['step_gib']:>9.2f} {r['ratio']:>14.3f}", flush=True)
        save(rows, args.out, name == args.models[-1], torch.device("cpu"), "memory_estimate", draw)


if __name__ == "__main__":
    main()
