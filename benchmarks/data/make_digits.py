"""Write scikit-learn's handwritten digits as an RGB ImageFolder with a fixed train/val split.

    python benchmarks/data/make_digits.py --out data/digits [--size 32] [--val-fraction 0.2] [--seed 0]

1797 real 8x8 grey images of the digits 0-9 (the UCI optical recognition set that ships with
scikit-learn, so no download), upsampled to ``size`` pixels (bicubic) and stored as PNGs:
``OUT/train/<digit>/<index>.png`` and ``OUT/val/<digit>/<index>.png``. The split is stratified by
class and fixed by the seed, so every run and machine sees the same images.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def make_digits(out, size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> dict[str, int]:
    """Write the folder; returns the number of images per split. Refuses a non-empty ``out``."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"make_digits: {out} is not empty; choose another --out or remove it")
    digits = load_digits()
    index = list(range(len(digits.target)))
    train, val = train_test_split(index, test_size=val_fraction, random_state=seed, stratify=digits.target)
    counts = {}
    for split, members in (("train", train), ("val", val)):
        for i in members:
            folder = out / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[i] * (255 / 16)).round().astype("uint8")
            Image.fromarray(pixels).convert("RGB").resize((size, size), Image.BICUBIC).save(folder / f"{i:04d}.png")
        counts[split] = len(members)
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory (must be empty or absent)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share held out for val/ (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    args = parser.parse_args(argv)
    counts = make_digits(args.out, args.size, args.val_fraction, args.seed)
    print(f"wrote {args.out}: {counts['train']} train, {counts['val']} val images, 10 classes, {args.size}x{args.size} RGB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
