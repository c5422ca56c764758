"""Every timm model's structure, not only each family's smallest: trace it and say which of its
groups isoprune leaves whole, and why.

    python benchmarks/structure_sweep.py --jobs 2

``coverage.py`` prunes one model per family and reports how much of what was asked it removed;
a family's other members (CSPDarkNet-3 beside CSPDarkNet-53, DPN-68 beside DPN-48b, BiT beside
ResNetV2-18) and its heads (SigLIP's attention pooling) can still fail to trace, or keep groups
whole. Here each model is built on the meta device (no weights: seconds for the whole list) and
analysed as ``isoprune.plan`` does before it scores anything (``_groups.analyse``: the trace, the
groups, and the probe that leaves whole any group whose cut breaks the forward pass). A model is

- ``cut``: every group can lose channels;
- ``some whole``: some groups are left whole (the first reason is kept);
- ``trace``: the trace failed; ``build``: timm cannot build it on the meta device (not counted);
- ``timeout``: the time limit passed (``crash``: the process died on it).

Writes ``results/structure_sweep.csv`` (one row per model), ``structure_sweep.json`` (the counts
and the command) and ``structure_sweep.png`` (the counts, and the share of groups left whole).
``--report`` rewrites the summary and the plot from the saved table, running nothing.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from coverage import family  # noqa: E402

RESULTS = Path(__file__).parent / "results"
STATUSES = ("cut", "some whole", "trace", "timeout")
FIELDS = ["family", "model", "status", "groups", "left_whole", "reason", "seconds"]


class _Late(Exception):
    pass


def _late(*_):
    raise _Late


def analyse_one(name: str, timeout: int) -> dict:
    """One model's row: built on the meta device and analysed within ``timeout`` seconds."""
    import logging
    import warnings

    import timm
    import torch

    from isoprune import IsopruneError, _groups

    logging.disable(logging.WARNING)  # the groups left whole are the row's; no log line each
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    row = {"family": family(name), "model": name, "groups": "", "left_whole": "", "reason": ""}
    start = time.perf_counter()
    signal.signal(signal.SIGALRM, _late)
    signal.alarm(timeout)
    try:
        try:
            model = timm.create_model(name, device="meta").eval()
        except Exception as exc:  # noqa: BLE001 - timm's own failure, not the tool's
            row |= {"status": "build", "reason": f"{type(exc).__name__}: {exc}"}
        else:
            analysis = _groups.analyse(model)
            whole = len(analysis.frozen)
            row |= {"status": "some whole" if whole else "cut", "groups": len(analysis.groups) + whole, "left_whole": whole}
            row["reason"] = next(iter(analysis.frozen.values()), "")
    except _Late:
        row |= {"status": "timeout", "reason": f"over {timeout} s"}
    except IsopruneError as exc:
        row |= {"status": "trace", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - anything else the analysis raised is the tool's failure too
        row |= {"status": "trace", "reason": f"{type(exc).__name__}: {exc}"}
    finally:
        signal.alarm(0)
    row["reason"] = " ".join(row["reason"].split())[:300]
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


PER_WORKER = 50
"""Models a worker process analyses before it exits, so that what imports leave behind does not pile up."""


def _worker(timeout: int) -> None:
    """Analyse the models named on stdin, a JSON row each on stdout, at most ``PER_WORKER``."""
    for _, name in zip(range(PER_WORKER), sys.stdin):
        print(json.dumps(analyse_one(name.strip(), timeout)), flush=True)


def _run_share(names: list[str], timeout: int, progress) -> list[dict]:
    """Run ``names`` through worker processes, one after another. A worker that gives no row
    within the time limit (stuck where the alarm cannot reach it) is killed and its model recorded
    as a timeout; one that dies on a model, as a crash; a new worker goes on with the rest."""
    rows, pending = [], list(names)
    while pending:
        worker = subprocess.Popen([sys.executable, __file__, "--worker", "--timeout", str(timeout)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        worker.stdin.write("".join(f"{name}\n" for name in pending))
        worker.stdin.close()
        analysed = 0
        with selectors.DefaultSelector() as waiting:
            waiting.register(worker.stdout, selectors.EVENT_READ)
            while pending and analysed < PER_WORKER:
                line = worker.stdout.readline() if waiting.select(timeout + 60) else None
                if not line:  # None: silent past the limit; "": the worker died
                    worker.kill()
                    status, reason = ("timeout", f"over {timeout} s, not interrupted") if line is None else ("crash", "the process died")
                    line = json.dumps({"family": family(pending[0]), "model": pending[0], "status": status, "groups": "",
                                       "left_whole": "", "reason": reason, "seconds": ""})
                rows.append(json.loads(line))
                pending.pop(0)
                analysed += 1
                progress.update()
                if rows[-1]["status"] in ("timeout", "crash"):
                    break
        worker.wait()
    return rows


def summary(rows: list[dict]) -> dict:
    counted = [r for r in rows if r["status"] != "build"]
    counts = Counter(r["status"] for r in counted)
    families: dict[str, Counter] = {}
    for r in counted:
        families.setdefault(r["family"], Counter())[r["status"]] += 1
    return {
        "models": len(counted),
        "not built": len(rows) - len(counted),
        **{status: counts.get(status, 0) for status in STATUSES},
        "families": len(families),
        "families every model cut": sum(set(c) == {"cut"} for c in families.values()),
    }


def draw(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counted = [r for r in rows if r["status"] != "build"]
    fig, (bars, hist) = plt.subplots(1, 2, figsize=(10, 3.2))
    counts = [sum(r["status"] == s for r in counted) for s in STATUSES]
    bars.barh(range(len(STATUSES)), counts, color=[plt.cm.tab10(i) for i in range(len(STATUSES))])
    bars.set_yticks(range(len(STATUSES)), STATUSES)
    bars.invert_yaxis()
    for i, n in enumerate(counts):
        bars.text(n, i, f" {n}", va="center", fontsize=8)
    bars.set_xlabel(f"timm models ({len(counted)})")
    bars.set_title("what isoprune can cut")
    shares = [int(r["left_whole"]) / int(r["groups"]) for r in counted if r["status"] == "some whole"]
    hist.hist(shares, bins=20, range=(0, 1), color=plt.cm.tab10(1))
    hist.set_xlabel("share of the model's groups left whole")
    hist.set_ylabel("models")
    hist.set_title("models with groups left whole")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(rows: list[dict], command: str) -> None:
    figures = summary(rows)
    (RESULTS / "structure_sweep.json").write_text(json.dumps({"command": command, **figures}, indent=2) + "\n")
    draw(rows, RESULTS / "structure_sweep.png")
    print(" | ".join(f"{k}: {v}" for k, v in figures.items()))
    worst = Counter(r["family"] for r in rows if r["status"] in ("some whole", "trace", "timeout"))
    print("families with most models not fully cut:", ", ".join(f"{f} {n}" for f, n in worst.most_common(15)))
    print(f"table: {RESULTS / 'structure_sweep.csv'}; plot: {RESULTS / 'structure_sweep.png'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2, help="models analysed at once, one process each")
    ap.add_argument("--timeout", type=int, default=60, help="seconds per model")
    ap.add_argument("--models", nargs="*", help="only these models (default: every timm model); their rows replace the saved ones")
    ap.add_argument("--report", action="store_true", help="summarise results/structure_sweep.csv again, running nothing")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args.timeout)
        return
    command = "python benchmarks/structure_sweep.py " + " ".join(sys.argv[1:])
    path = RESULTS / "structure_sweep.csv"
    RESULTS.mkdir(exist_ok=True)
    if args.report:
        report(list(csv.DictReader(path.open())), command)
        return
    import timm
    from tqdm import tqdm

    names = args.models or timm.list_models()
    kept = [r for r in csv.DictReader(path.open()) if r["model"] not in set(names)] if args.models and path.is_file() else []
    rows, progress = [], tqdm(total=len(names), desc="models")
    with ThreadPoolExecutor(args.jobs) as pool:
        for done in pool.map(partial(_run_share, timeout=args.timeout, progress=progress), [names[i :: args.jobs] for i in range(args.jobs)]):
            rows += done
    progress.close()
    rows = sorted(kept + rows, key=lambda r: (r["family"], r["model"]))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    report(rows, command)


if __name__ == "__main__":
    main()
