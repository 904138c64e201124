"""VisCoIN training throughput and peak memory, printed as a table.

Default setting: the paper's CUB configuration: ResNet50 classifier (200 classes), a 256x256
StyleGAN2 (the 'auto' config the paper's generators use: z = w = 512, channel_base 16384,
2 mapping layers), K = 256 concepts, batch 8 real + 8 synthetic images, LPIPS-VGG perceptual
term, Adam on Ψ, Θ, Ω. One timed step = drawing the synthetic images, the forward pass through
f, Ψ, Θ, Ω, G and f again, all losses, the backward pass and the optimiser step (the function
`viscoin.model.train.training_losses` used by `viscoin train`). Networks are randomly
initialised (speed does not depend on the weights); the VGG16 of LPIPS too, from a temporary
file, so nothing is downloaded.

CPU rows run in float32; CUDA rows run with bf16 autocast (what `run.precision=auto` picks) and
TF32 allowed for the remaining float32 matmuls. Each (device, precision) runs in its own
subprocess; peak memory is the process's peak RSS on the CPU and `torch.cuda.max_memory_allocated`
on CUDA.

    python benchmarks/viscoin_train_throughput.py                     # CPU, and CUDA when present
    python benchmarks/viscoin_train_throughput.py --devices cuda --iters 50
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import time_steps  # noqa: E402


def worker(args: argparse.Namespace) -> dict:
    import torch
    import torchvision

    from viscoin.classifier.model import Classifier, ClassifierConfig
    from viscoin.model import LossConfig, VisCoIN, VisCoINConfig
    from viscoin.model.perceptual import LPIPSDistance
    from viscoin.model.train import training_losses
    from viscoin.stylegan import Generator, GeneratorConfig, MappingConfig, SynthesisConfig

    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    f = Classifier(ClassifierConfig(arch=args.arch, num_classes=200, pretrained="none"), load_pretrained=False)
    G = Generator(GeneratorConfig(z_dim=512, w_dim=512, img_resolution=args.resolution,
                                  mapping=MappingConfig(num_layers=2),
                                  synthesis=SynthesisConfig(channel_base=16384, channel_max=512)))
    model = VisCoIN(VisCoINConfig(num_concepts=args.concepts), f, G, resolution=args.resolution).to(device).train()
    with tempfile.TemporaryDirectory() as tmp:
        vgg = os.path.join(tmp, "vgg16.pth")
        torch.save(torchvision.models.vgg16(weights=None).state_dict(), vgg)
        perceptual = LPIPSDistance(vgg_weights_path=vgg).to(device)
    loss_cfg = LossConfig(gamma=0.1, delta=0.2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x_real = torch.rand(args.batch_real, 3, args.resolution, args.resolution, device=device) * 2 - 1
    bf16 = device.type == "cuda" and not args.fp32

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            _, _, terms = training_losses(model, model, x_real, args.batch_synthetic, loss_cfg, perceptual)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()

    t = time_steps(step, device, args.warmup, args.iters)
    dt, peak, mem_kind, name = t["seconds"], t["peak_mib"] / 1024, t["mem_kind"], t["device"]
    images = args.batch_real + args.batch_synthetic
    return {"device": name, "precision": "bf16 autocast" if bf16 else "fp32", "s_per_step": dt,
            "images_per_s": images / dt, "peak_gib": peak, "mem_kind": mem_kind,
            "trainable_m": sum(p.numel() for p in model.parameters()) / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="auto", help="comma list (cpu, cuda), or 'auto'")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--concepts", type=int, default=256)
    parser.add_argument("--batch-real", type=int, default=8)
    parser.add_argument("--batch-synthetic", type=int, default=8)
    parser.add_argument("--iters", type=int, default=None, help="timed steps (default: 2 on CPU, 30 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default: 1 on CPU, 5 on CUDA)")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    import torch

    devices = args.devices.split(",") if args.devices != "auto" else ["cpu"] + ["cuda"] * torch.cuda.is_available()
    rows = []
    for device in devices:
        cuda = device.startswith("cuda")
        cmd = [sys.executable, __file__, "--worker", "--device", device, "--arch", args.arch,
               "--resolution", str(args.resolution), "--concepts", str(args.concepts),
               "--batch-real", str(args.batch_real), "--batch-synthetic", str(args.batch_synthetic),
               "--iters", str(args.iters or (30 if cuda else 2)),
               "--warmup", str(args.warmup if args.warmup is not None else (5 if cuda else 1)),
               "--threads", str(args.threads)] + (["--fp32"] if args.fp32 else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            raise SystemExit(f"benchmark worker failed on {device}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"\nVisCoIN training step: {args.arch}, {args.resolution}x{args.resolution} StyleGAN2, K={args.concepts}, "
          f"batch {args.batch_real} real + {args.batch_synthetic} synthetic, LPIPS-VGG, "
          f"{rows[0]['trainable_m']:.1f} M trainable parameters, torch {torch.__version__}\n")
    print("| device | precision | s / step | images / s (real + synthetic) | peak memory (GiB) |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['device']} | {r['precision']} | {r['s_per_step']:.3f} | {r['images_per_s']:.1f} | "
              f"{r['peak_gib']:.2f} ({r['mem_kind']}) |")


if __name__ == "__main__":
    main()
