"""ADA augmentation pipe speed: ms per batch of the 'bgc' `AugmentPipe`, old vs new filtering.

"old" is ``AugmentPipe(filtering="direct")``, the textbook 2x geometric path (zero insertion and a
12x12 conv at 2x, then a 12x12 conv at 2x keeping every second output); "new" is the default
"polyphase" one (the same values to float32 rounding, tests/test_augment.py). Modes:
- forward:          the images do not require gradients (D steps on reals; the pipe runs like this
                    or with a graph three times per training iteration);
- forward+backward: the gradient of a weighted sum of the output w.r.t. the images (G steps, R1).
Every timed step re-seeds torch with the step's index, so old and new draw the same augmentations;
old and new are timed in alternating rounds and each cell is the median over the rounds (the CPU
may be shared). p = 0 draws every augmentation but applies none: the pipe's fixed cost.

    python benchmarks/augment_speed.py                          # CPU, torch's default threads
    python benchmarks/augment_speed.py --threads 1 --rounds 5
    python benchmarks/augment_speed.py --batches 16 --resolutions 64 --ps 0.6
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import time_steps  # noqa: E402

from viscoin.stylegan.augment import AugmentConfig, AugmentPipe  # noqa: E402

IMPLS = {"old": "direct", "new": "polyphase"}
MODES = ["forward", "forward+backward"]


def step_fn(pipe: AugmentPipe, x: torch.Tensor, weights: torch.Tensor, mode: str, seeds: int):
    """One pipe call (and backward) per call, cycling through `seeds` fixed seeds."""
    count = [0]

    def step() -> None:
        torch.manual_seed(count[0] % seeds)
        count[0] += 1
        if mode == "forward":
            pipe(x)
        else:
            xg = x.detach().requires_grad_(True)
            (pipe(xg) * weights).sum().backward()

    return step


def measure(args: argparse.Namespace, device: torch.device, batch: int, res: int, p: float, mode: str) -> dict:
    """Median ms per batch of old and new over `args.rounds` alternating rounds."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, 3, res, res, generator=gen) * 2 - 1).to(device)
    weights = torch.randn(batch, 3, res, res, generator=gen).to(device)
    steps = {name: step_fn(AugmentPipe(AugmentConfig(p=p), filtering=filt).to(device), x, weights, mode, args.iters)
             for name, filt in IMPLS.items()}
    times: dict[str, list[float]] = {name: [] for name in IMPLS}
    for r in range(args.rounds):
        for name, step in steps.items():
            t = time_steps(step, device, warmup=args.warmup if r == 0 else 0, iters=args.iters)
            times[name].append(t["seconds"] * 1000)
    return {name: statistics.median(v) for name, v in times.items()} | {"device": t["device"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", default="16,32", help="comma list of batch sizes")
    parser.add_argument("--resolutions", default="32,64", help="comma list of image sizes")
    parser.add_argument("--ps", default="0,0.2,0.6", help="comma list of augmentation strengths p")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {MODES}")
    parser.add_argument("--iters", type=int, default=4, help="timed steps per round (also the number of seeds)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating old/new rounds (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before the first round")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    modes = args.modes.split(",")
    for mode in modes:
        if mode not in MODES:
            parser.error(f"--modes: unknown mode {mode!r}; expected some of {MODES}")

    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        for res in (int(r) for r in args.resolutions.split(",")):
            for p in (float(v) for v in args.ps.split(",")):
                for mode in modes:
                    t = measure(args, device, batch, res, p, mode)
                    rows.append((batch, res, p, mode, t))
                    print(f"  batch {batch} {res}x{res} p={p:g} {mode}: old {t['old']:.1f} ms, new {t['new']:.1f} ms",
                          file=sys.stderr, flush=True)

    print(f"\nAugmentPipe 'bgc', 3 channels, fp32, {rows[0][4]['device']}, torch {torch.__version__}, "
          f"median of {args.rounds} rounds x {args.iters} steps\n")
    print("| batch | size | p | mode | old ms | new ms | old / new |")
    print("|---:|---:|---:|---|---:|---:|---:|")
    for batch, res, p, mode, t in rows:
        print(f"| {batch} | {res} | {p:g} | {mode} | {t['old']:.1f} | {t['new']:.1f} | {t['old'] / t['new']:.2f} |")


if __name__ == "__main__":
    main()
