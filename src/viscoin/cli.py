"""The `viscoin` command line.

    viscoin generator import IN.pkl OUT_DIR [--which G_ema|G|D]
    viscoin generator sample --generator PATH --seeds 0-15 [--truncation 0.7] --out grid.png [--ws-out ws.safetensors]
    viscoin generator info PATH

Each subcommand is a function `cmd_*(args)`; errors the user can fix are printed as one line
(`viscoin: error: ...`) with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

import torch

import viscoin
from viscoin.utils.config import ConfigError
from viscoin.utils.device import resolve_device
from viscoin.utils.io import CheckpointError

USER_ERRORS = (ValueError, CheckpointError, ConfigError, FileNotFoundError, pickle.UnpicklingError)


# ---------------------------------------------------------------------------------------------
# viscoin generator ...


def cmd_generator_import(args: argparse.Namespace) -> int:
    from viscoin.stylegan.checkpoint import import_official

    out = import_official(args.pkl, args.out_dir, which=args.which)
    print(f"wrote {args.which} of {args.pkl} to {out}/ (config.json + weights.safetensors)")
    return 0


def cmd_generator_sample(args: argparse.Namespace) -> int:
    from viscoin.stylegan.checkpoint import load_generator
    from viscoin.stylegan.sampling import parse_seeds, sample
    from viscoin.utils.images import image_grid, save_image, to_uint8
    from viscoin.utils.io import save_tensors

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
    from viscoin.stylegan.checkpoint import load_discriminator, load_generator, read_checkpoint_info

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


# ---------------------------------------------------------------------------------------------
# viscoin classifier ...


def cmd_classifier_train(args: argparse.Namespace) -> int:
    from viscoin.classifier.train import ClassifierTrainConfig, train_classifier
    from viscoin.training.config import load_config

    cfg = load_config(ClassifierTrainConfig, args.config, args.overrides, family="classifier")
    train_classifier(cfg, resume=args.resume)  # prints its own summary (on the main process only)
    return 0


def cmd_classifier_test(args: argparse.Namespace) -> int:
    from viscoin.classifier.train import test_classifier
    from viscoin.utils.io import write_json

    device = resolve_device(args.device)
    result = test_classifier(args.checkpoint, args.overrides, split=args.split, batch_size=args.batch_size,
                             device=device, num_workers=args.num_workers)
    print(f"top-1 accuracy on the {result['split']} split: {100 * result['accuracy']:.2f}% "
          f"({result['count']} images, mean cross-entropy {result['loss']:.4f})")
    if args.out:
        write_json(args.out, result)
    return 0


# ---------------------------------------------------------------------------------------------
# viscoin train


def cmd_train(args: argparse.Namespace) -> int:
    from viscoin.model.train import VisCoINTrainConfig, train_viscoin
    from viscoin.training.config import load_config

    cfg = load_config(VisCoINTrainConfig, args.config, args.overrides, family="viscoin")
    train_viscoin(cfg, resume=args.resume)  # prints its own summary (on the main process only)
    return 0


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from viscoin.training.config import add_run_arguments

    parser = argparse.ArgumentParser(
        prog="viscoin",
        description="VisCoIN: interpretable image classification with concepts visualised by StyleGAN2.",
    )
    parser.add_argument("--version", action="version", version=f"viscoin {viscoin.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generator", help="StyleGAN2 generators: import official checkpoints, sample")
    gsub = gen.add_subparsers(dest="generator_command", required=True, metavar="SUBCOMMAND")

    p = gsub.add_parser(
        "import",
        help="convert an official stylegan2-ada-pytorch .pkl to viscoin's format (safely: no code is run)",
    )
    p.add_argument("pkl", type=Path, help="official network pickle (network-snapshot-*.pkl, ffhq.pkl, ...)")
    p.add_argument("out_dir", type=Path, help="output folder (config.json + weights.safetensors)")
    p.add_argument("--which", choices=["G_ema", "G", "D"], default="G_ema", help="network to convert (default: G_ema)")
    p.set_defaults(func=cmd_generator_import)

    p = gsub.add_parser("sample", help="write an image grid from a generator at given seeds")
    p.add_argument("--generator", required=True, type=Path, help="viscoin generator folder or official .pkl")
    p.add_argument("--seeds", default="0-15", help="seeds, e.g. '0-15' or '1,5,9-12' (default: 0-15)")
    p.add_argument("--truncation", type=float, default=1.0, help="truncation psi (default: 1 = none)")
    p.add_argument("--truncation-cutoff", type=int, default=None, help="truncate only the first N ws")
    p.add_argument("--class", dest="class_idx", type=int, default=None, help="class index (conditional generators)")
    p.add_argument("--noise-mode", choices=["const", "random", "none"], default="const", help="noise inputs (default: const)")
    p.add_argument("--out", required=True, type=Path, help="output image (.png or .jpg)")
    p.add_argument("--ws-out", type=Path, default=None, help="also save the W+ latents (safetensors: ws, seeds)")
    p.add_argument("--cols", type=int, default=None, help="grid columns (default: square)")
    p.add_argument("--pad", type=int, default=0, help="pixels between grid cells")
    p.add_argument("--which", choices=["G_ema", "G"], default="G_ema", help="network of an official .pkl")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'cuda:1', ... (default: auto)")
    p.add_argument("--fp16", action="store_true", help="float16 in the high-resolution blocks (CUDA)")
    p.set_defaults(func=cmd_generator_sample)

    from viscoin.stylegan.train import add_train_arguments, run_train_command

    p = gsub.add_parser(
        "train",
        help="train or fine-tune a StyleGAN2-ADA generator (--config auto | cub | cars | tiny)",
        description="StyleGAN2-ADA training with viscoin's networks. Any config field can be overridden: KEY=VALUE.",
    )
    add_train_arguments(p)
    p.set_defaults(func=run_train_command)

    p = gsub.add_parser("info", help="print a network's config and size")
    p.add_argument("path", type=Path, help="viscoin network folder or official .pkl")
    p.set_defaults(func=cmd_generator_info)

    cls = sub.add_parser("classifier", help="the classifier f: fine-tune, test")
    csub = cls.add_subparsers(dest="classifier_command", required=True, metavar="SUBCOMMAND")
    p = csub.add_parser(
        "train",
        help="fine-tune a ResNet classifier (paper recipes: --config cub | celebahq | cars)",
        description="Fine-tune a classifier. Any config field can be overridden: KEY=VALUE, e.g. "
        "data.root=/data/CUB_200_2011 run.out_dir=runs/f-cub optim.lr=3e-4 run.devices=4",
    )
    add_run_arguments(p, "classifier", "optim.lr=3e-4")
    p.set_defaults(func=cmd_classifier_train)

    p = csub.add_parser("test", help="top-1 accuracy of a trained classifier")
    p.add_argument("checkpoint", type=Path, help="classifier folder (e.g. runs/f-cub/classifier)")
    p.add_argument("overrides", nargs="*", metavar="data.KEY=VALUE",
                   help="changes to the data config it was trained with, e.g. data.root=/elsewhere")
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    p.set_defaults(func=cmd_classifier_test)

    p = sub.add_parser(
        "train",
        help="train VisCoIN (Ψ, Θ, Ω) on a frozen classifier and generator (--config cub | cars | celebahq | tiny)",
        description="Train VisCoIN. Any config field can be overridden: KEY=VALUE, e.g. data.root=/data/CUB_200_2011 "
        "classifier=runs/f-cub/classifier generator=nets/cub-G model.num_concepts=128 run.devices=4",
    )
    add_run_arguments(p, "viscoin", "model.num_concepts=128")
    p.set_defaults(func=cmd_train)

    from viscoin.interpret.cli import add_explain_arguments, run_explain_command
    from viscoin.metrics.evaluate import add_evaluate_arguments, run_evaluate_command
    from viscoin.report.cli import add_report_arguments, run_report_command

    p = sub.add_parser("evaluate", help="the paper's metrics (accuracy, MSE/LPIPS/FID, faithfulness, consistency) and ground-truth metrics when attributes exist")
    add_evaluate_arguments(p)
    p.set_defaults(func=run_evaluate_command)
    p = sub.add_parser("explain", help="explain one image: prediction, top concepts, λ sweeps, difference images")
    add_explain_arguments(p)
    p.set_defaults(func=run_explain_command)
    p = sub.add_parser("report", help="static HTML report: metrics, relevant class-concept pairs, figures")
    add_report_arguments(p)
    p.set_defaults(func=run_report_command)

    from viscoin.apps.explore import add_explore_arguments, run_explore_command

    p = sub.add_parser("explore", help="interactive concept explorer in the browser (needs the extra viscoin[app])",
                       description="Serve a local web app: pick an image, move its concepts' λ, read concept pages.")
    add_explore_arguments(p)
    p.set_defaults(func=run_explore_command)

    from viscoin.demo import add_demo_arguments, run_demo_command

    p = sub.add_parser(
        "demo",
        help="VisCoIN end to end on the synthetic birds with the shipped networks: train, evaluate, report (offline)",
        description="Draw the synthetic birds, train VisCoIN on the shipped f and G, evaluate it with every metric "
        "and write an HTML report. Any training config field can be overridden: KEY=VALUE.",
    )
    add_demo_arguments(p)
    p.set_defaults(func=run_demo_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"viscoin: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
