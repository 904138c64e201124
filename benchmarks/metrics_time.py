"""Time per metric of `viscoin evaluate` on a toy-resolution model, printed as a table.

Default setting (the issue's target: "minutes, not hours, on CPU"): a randomly initialised toy
VisCoIN at 32x32 — ResNet18 classifier with 10 classes, a small StyleGAN2 (w = 32, 32x32),
K = 64 concepts — on generated toy data (1000 test and 1000 training images: a coloured square
per class on noise). Timed: the accuracy/reconstruction pass (MSE, FID on f's features),
encoding each split once (Φ, Φ'), faithfulness on 1000 test samples at τ = 0.1, 0.2, 0.4 with the
random baseline, and consistency for all 64 concepts at λ = 2 and 4 (100 samples per set,
5-fold CV over 7 values of C). Speed does not depend on the weights.

    python benchmarks/metrics_time.py                       # CPU, all threads
    python benchmarks/metrics_time.py --threads 1 --resolution 64
"""

from __future__ import annotations

import argparse
import time

import torch


class ToyDataset:
    """`n` images [3, R, R] in [-1, 1]: noise plus a coloured square whose colour and place depend on the class."""

    def __init__(self, n: int, classes: int, res: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % classes
        self.images = torch.rand(n, 3, res, res, generator=gen) * 0.6 - 0.8
        colours = torch.rand(classes, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
        side = res // 3
        for i in range(n):
            y0, x0 = torch.randint(0, res - side, (2,), generator=gen).tolist()
            self.images[i, :, y0:y0 + side, x0:x0 + side] = colours[self.labels[i], :, None, None]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": int(self.labels[i]), "index": i}


def build_model(res: int, k: int, classes: int):
    from viscoin.classifier.model import Classifier, ClassifierConfig
    from viscoin.model import VisCoIN, VisCoINConfig
    from viscoin.stylegan import Generator, GeneratorConfig, MappingConfig, SynthesisConfig

    torch.manual_seed(0)
    f = Classifier(ClassifierConfig(arch="resnet18", num_classes=classes, pretrained="none"), load_pretrained=False)
    G = Generator(GeneratorConfig(z_dim=32, w_dim=32, img_resolution=res, mapping=MappingConfig(num_layers=2),
                                  synthesis=SynthesisConfig(channel_base=256 * res // 16, channel_max=32,
                                                            num_fp16_res=0, conv_clamp=None)))
    return VisCoIN(VisCoINConfig(num_concepts=k, adapter_channels=32), f, G, resolution=res).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--concepts", type=int, default=64, help="K (consistency runs on all of them)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--test", type=int, default=1000, help="test images (= faithfulness samples)")
    parser.add_argument("--train", type=int, default=1000, help="training images")
    parser.add_argument("--samples", type=int, default=100, help="consistency samples per set and concept")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from viscoin.metrics.evaluate import EvaluateConfig, evaluate_model

    model = build_model(args.resolution, args.concepts, args.classes)
    test = ToyDataset(args.test, args.classes, args.resolution, seed=1)
    train = ToyDataset(args.train, args.classes, args.resolution, seed=2)
    cfg = EvaluateConfig(n_faithfulness=args.test, consistency_samples=args.samples, fid_features="classifier",
                         lpips=False, batch_size=args.batch_size, progress=args.progress)
    start = time.perf_counter()
    result = evaluate_model(model, train, test, cfg, name="toy")
    total = time.perf_counter() - start

    cons = result["consistency"]
    print(f"toy VisCoIN {args.resolution}x{args.resolution}, K={args.concepts}, {args.classes} classes, "
          f"{args.test} test / {args.train} train images, torch threads {torch.get_num_threads()}")
    print(f"faithfulness: {result['faithfulness']['count']} samples x {len(cfg.thresholds)} thresholds; "
          f"consistency: {len(cons['concepts']) - len(cons['skipped'])} concepts x {len(cfg.consistency_lambdas)} "
          f"lambdas, {args.samples} samples per set")
    print()
    print("| step | seconds |")
    print("|---|---:|")
    for name, seconds in result["timings"].items():
        print(f"| {name} | {seconds:.1f} |")
    print(f"| **total** | **{total:.1f}** |")


if __name__ == "__main__":
    main()
