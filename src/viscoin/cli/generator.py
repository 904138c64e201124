"""`viscoin generator import | sample | train | export | info`: StyleGAN2-ADA generators."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from viscoin.cli.common import add_run_arguments, finite_float, non_negative_int, positive_int
from viscoin.stylegan.checkpoint import import_official, load_discriminator, load_generator, read_checkpoint_info
from viscoin.stylegan.sampling import parse_seeds, sample
from viscoin.stylegan.train import GeneratorTrainConfig, export_generator, train_generator
from viscoin.training.config import load_config
from viscoin.utils.device import resolve_device
from viscoin.utils.images import image_grid, save_image, to_uint8
from viscoin.utils.io import save_tensors


def cmd_generator_import(args: argparse.Namespace) -> int:
    out = import_official(args.pkl, args.out_dir, which=args.which, overwrite=args.overwrite)
    print(f"wrote {args.which} of {args.pkl} to {out}/ (config.json + weights.safetensors)")
    return 0


def cmd_generator_sample(args: argparse.Namespace) -> int:
    seeds = parse_seeds(args.seeds)
    device = resolve_device(args.device)
    G = load_generator(args.generator, device=device, which=args.which)
    images, ws = sample(
        G,
        seeds,
        truncation_psi=args.truncation,
        truncation_cutoff=args.truncation_cutoff,
        class_idx=args.class_idx,
        noise_mode=args.noise_mode,
        batch_size=args.batch_size,
        fp16=args.fp16,
    )
    grid = image_grid(to_uint8(images), ncols=args.cols, pad=args.pad)
    save_image(args.out, grid)
    print(f"wrote {len(seeds)} images ({G.img_resolution}x{G.img_resolution}) as a grid to {args.out}")
    if args.ws_out:
        save_tensors(
            args.ws_out,
            {"ws": ws, "seeds": torch.tensor(seeds, dtype=torch.int64)},
            metadata={"truncation_psi": str(args.truncation), "generator": str(args.generator)},
        )
        print(f"wrote W+ latents {list(ws.shape)} to {args.ws_out}")
    return 0


def cmd_generator_info(args: argparse.Namespace) -> int:
    path = Path(args.path)
    is_pkl = path.suffix.lower() in (".pkl", ".pickle")
    kind = "generator" if is_pkl else read_checkpoint_info(path)["network"]
    net = load_generator(path) if kind == "generator" else load_discriminator(path)
    n_params = sum(p.numel() for p in net.parameters())
    summary = {"network": kind, "parameters": n_params, "config": net.config.to_dict()}
    if kind == "generator":
        summary.update(num_ws=net.num_ws, w_dim=net.w_dim, z_dim=net.z_dim, img_resolution=net.img_resolution)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_generator_train(args: argparse.Namespace) -> int:
    """`viscoin generator train`: load the config (+ --data and overrides) and train."""
    overrides = list(args.overrides)
    if args.data is not None:
        overrides.insert(0, f"data.root={json.dumps(str(args.data))}")  # JSON string: read back as-is by YAML
    cfg = load_config(GeneratorTrainConfig, args.config, overrides, family="generator")
    train_generator(cfg, resume=args.resume, overwrite=args.overwrite)  # prints its own summary (on the main process only)
    return 0


def cmd_generator_export(args: argparse.Namespace) -> int:
    """`viscoin generator export RUN --out DIR`: the generator of a run's latest checkpoint."""
    extra = export_generator(args.run, args.out, which=args.which, overwrite=args.overwrite)
    print(f"wrote {args.which} of {args.run} at {extra['kimg']:.1f} kimg (step {extra['step']}, augment p "
          f"{extra['augment_p']:.4f}) to {args.out}/ (config.json + weights.safetensors)")
    return 0


def register(sub: Any) -> None:
    """Add `viscoin generator ...` to the top-level subparsers."""
    gen = sub.add_parser("generator", help="StyleGAN2 generators: import official checkpoints, sample, train")
    gsub = gen.add_subparsers(dest="generator_command", required=True, metavar="SUBCOMMAND")

    p = gsub.add_parser(
        "import",
        help="convert an official stylegan2-ada-pytorch .pkl to viscoin's format (safely: no code is run)",
    )
    p.add_argument("pkl", type=Path, help="official network pickle (network-snapshot-*.pkl, ffhq.pkl, ...)")
    p.add_argument("out_dir", type=Path, help="output folder (config.json + weights.safetensors)")
    p.add_argument("--which", choices=["G_ema", "G", "D"], default="G_ema", help="network to convert (default: G_ema)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty output folder (its config.json and weights.safetensors are replaced; "
                        "without it, such a folder is refused)")
    p.set_defaults(func=cmd_generator_import)

    p = gsub.add_parser("sample", help="write an image grid from a generator at given seeds")
    p.add_argument("--generator", required=True, type=Path,
                   help="viscoin generator folder, official .pkl, or a shipped one: viscoin:birds/generator")
    p.add_argument("--seeds", default="0-15", help="seeds, e.g. '0-15' or '1,5,9-12' (default: 0-15)")
    p.add_argument("--truncation", type=finite_float, default=1.0, help="truncation psi (default: 1 = none)")
    p.add_argument("--truncation-cutoff", type=non_negative_int, default=None, help="truncate only the first N ws")
    p.add_argument("--class", dest="class_idx", type=non_negative_int, default=None, help="class index (conditional generators)")
    p.add_argument("--noise-mode", choices=["const", "random", "none"], default="const", help="noise inputs (default: const)")
    p.add_argument("--out", required=True, type=Path, help="output image (.png or .jpg)")
    p.add_argument("--ws-out", type=Path, default=None, help="also save the W+ latents (safetensors: ws, seeds)")
    p.add_argument("--cols", type=positive_int, default=None, help="grid columns (default: square)")
    p.add_argument("--pad", type=non_negative_int, default=0, help="pixels between grid cells")
    p.add_argument("--which", choices=["G_ema", "G"], default="G_ema", help="network of an official .pkl")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per forward pass")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'cuda:1', ... (default: auto)")
    p.add_argument("--fp16", action="store_true", help="float16 in the high-resolution blocks (CUDA)")
    p.set_defaults(func=cmd_generator_sample)

    p = gsub.add_parser(
        "train",
        help="train or fine-tune a StyleGAN2-ADA generator (--config auto | cub | cars | tiny | birds)",
        description="StyleGAN2-ADA training with viscoin's networks. Any config field can be overridden: KEY=VALUE.",
    )
    add_run_arguments(p, "generator", "init.source=ffhq.pkl augment.xflip=0.1")
    p.add_argument("--data", default=None, help="training image folder (sets data.root)")
    p.set_defaults(func=cmd_generator_train)

    p = gsub.add_parser(
        "export",
        help="write the generator of a training run's latest checkpoint (finished, running or killed)",
        description="Write the generator (G_ema by default) of a `viscoin generator train` run's latest checkpoint "
                    "as a generator folder, without stopping or changing the run.",
    )
    p.add_argument("run", type=Path, help="the run folder (run.out_dir of `viscoin generator train`)")
    p.add_argument("--out", required=True, type=Path, help="output folder (config.json + weights.safetensors)")
    p.add_argument("--which", choices=["G_ema", "G"], default="G_ema", help="network to write (default: G_ema)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty output folder (its config.json and weights.safetensors are replaced)")
    p.set_defaults(func=cmd_generator_export)

    p = gsub.add_parser("info", help="print a network's config and size")
    p.add_argument("path", type=Path,
                   help="viscoin network folder, official .pkl, or a shipped one: viscoin:birds/generator")
    p.set_defaults(func=cmd_generator_info)
