"""Generator throughput: images/s and peak memory of viscoin's StyleGAN2 G, printed as a table.

Default setting: 256x256, the official default channel settings (channel_base 32768,
channel_max 512, z = w = 512, 8 mapping layers; 30.0 M parameters), batch 8, float32,
constant noise. Modes:
- forward:          eval mode, no autograd (sampling, FID, metrics);
- forward+backward: eval mode, G frozen, gradient of the image w.r.t. its W+ input (how VisCoIN
                    trains through G);
- train step:       training mode (non-fused modconv, random noise), gradient w.r.t. every
                    parameter (generator training).
Each (device, mode) runs in its own subprocess so that peak memory is its own: peak RSS of
the process on the CPU, `torch.cuda.max_memory_allocated` on CUDA.

    python benchmarks/generator_throughput.py                 # CPU, and CUDA when present
    python benchmarks/generator_throughput.py --devices cuda --fp16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import time_steps  # noqa: E402

MODES = ["forward", "forward+backward", "train step"]


def worker(args: argparse.Namespace) -> dict:
    import torch

    from viscoin.stylegan.config import GeneratorConfig, SynthesisConfig
    from viscoin.stylegan.generator import Generator

    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = GeneratorConfig(
        z_dim=512,
        w_dim=512,
        img_resolution=args.resolution,
        synthesis=SynthesisConfig(num_fp16_res=4 if args.fp16 else 0, conv_clamp=256 if args.fp16 else None),
    )
    G = Generator(cfg).to(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    z = torch.randn(args.batch, cfg.z_dim, device=device)

    def step() -> None:
        if args.mode == "forward":
            G.eval()
            with torch.no_grad():
                G(z, noise_mode="const", fp16=args.fp16)
        elif args.mode == "forward+backward":
            G.eval().requires_grad_(False)
            with torch.no_grad():
                ws = G.map(z)
            ws.requires_grad_(True)
            img = G.synthesis(ws, noise_mode="const", fp16=args.fp16)
            (grad,) = torch.autograd.grad(img.square().mean(), ws)
        else:
            G.train().requires_grad_(True)
            G.zero_grad(set_to_none=True)
            img = G(z, fp16=args.fp16)
            img.square().mean().backward()

    t = time_steps(step, device, args.warmup, args.iters)
    dt, peak_mb, mem_kind, name = t["seconds"], t["peak_mib"], t["mem_kind"], t["device"]
    return {
        "device": name,
        "mode": args.mode,
        "batch": args.batch,
        "ms_per_batch": dt * 1000,
        "images_per_s": args.batch / dt,
        "peak_mb": peak_mb,
        "mem_kind": mem_kind,
        "params_m": sum(p.numel() for p in G.parameters()) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="auto", help="comma list of devices, or 'auto' (cpu + cuda if present)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {MODES}")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default: 3 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations (default: 1 on CPU, 5 on CUDA)")
    parser.add_argument("--fp16", action="store_true", help="float16 in the 4 highest-resolution blocks")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="forward", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args)))
        return

    import torch

    devices = args.devices.split(",") if args.devices != "auto" else ["cpu"] + (["cuda"] * torch.cuda.is_available())
    modes = args.modes.split(",")
    for mode in modes:
        if mode not in MODES:
            parser.error(f"--modes: unknown mode {mode!r}; expected some of {MODES}")
    rows = []
    for device in devices:
        is_cuda = device.startswith("cuda")
        iters = args.iters or (20 if is_cuda else 3)
        warmup = args.warmup if args.warmup is not None else (5 if is_cuda else 1)
        for mode in modes:
            cmd = [
                sys.executable, __file__, "--worker", "--device", device, "--mode", mode,
                "--resolution", str(args.resolution), "--batch", str(args.batch),
                "--iters", str(iters), "--warmup", str(warmup), "--threads", str(args.threads),
            ] + (["--fp16"] if args.fp16 else [])
            out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                raise SystemExit(f"benchmark worker failed for {device} / {mode}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))

    precision = "fp16 (4 highest resolutions)" if args.fp16 else "fp32"
    print(f"\nGenerator {args.resolution}x{args.resolution}, {rows[0]['params_m']:.1f} M parameters, "
          f"batch {args.batch}, {precision}, torch {torch.__version__}\n")
    print("| device | mode | ms / batch | images / s | peak memory (MiB) |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['device']} | {r['mode']} | {r['ms_per_batch']:.1f} | {r['images_per_s']:.2f} | "
              f"{r['peak_mb']:.0f} ({r['mem_kind']}) |")


if __name__ == "__main__":
    main()
