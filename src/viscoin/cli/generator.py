"""`viscoin generator import | sample | train | export | evaluate | info`: StyleGAN2-ADA generators."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from viscoin.classifier.model import load_classifier, read_classifier_info
from viscoin.cli.common import add_run_arguments, check_writable, finite_float, non_negative_int, positive_int
from viscoin.data import DataConfig, build_dataset
from viscoin.metrics.samples import fit_class_probe, sample_metrics, sample_table
from viscoin.model.contract import check_training_data
from viscoin.stylegan.checkpoint import import_official, load_discriminator, load_generator, read_checkpoint_info
from viscoin.stylegan.sampling import parse_seeds, sample
from viscoin.stylegan.train import GeneratorTrainConfig, export_generator, train_generator
from viscoin.training.config import data_config_with_overrides, load_config
from viscoin.utils.device import resolve_device
from viscoin.utils.images import image_format, image_grid, save_image, to_uint8
from viscoin.utils.io import refuse_existing, save_tensors, write_json


def cmd_generator_import(args: argparse.Namespace) -> int:
    out = import_official(args.pkl, args.out_dir, which=args.which, overwrite=args.overwrite)
    print(f"wrote {args.which} of {args.pkl} to {out}/ (config.json + weights.safetensors)")
    return 0


def class_choice(text: str) -> int | str:
    """`--class`: a class index >= 0, or 'all' (one row per class)."""
    if text.strip().lower() == "all":
        return "all"
    try:
        return non_negative_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a class index >= 0 or 'all', got {text!r}") from None


def cmd_generator_sample(args: argparse.Namespace) -> int:
    seeds = parse_seeds(args.seeds)
    image_format(args.out)
    device = resolve_device(args.device)
    G = load_generator(args.generator, device=device, which=args.which)
    outputs = [p for p in (args.out, args.ws_out) if p is not None]
    refuse_existing([p for p in outputs if Path(p).exists()], "exists", args.overwrite)
    if args.class_idx == "all" and G.c_dim == 0:
        raise ValueError("--class all: this generator is unconditional; leave --class out")
    classes = list(range(G.c_dim)) if args.class_idx == "all" else [args.class_idx]
    drawn = [sample(
        G,
        seeds,
        truncation_psi=args.truncation,
        truncation_cutoff=args.truncation_cutoff,
        class_idx=c,
        noise_mode=args.noise_mode,
        batch_size=args.batch_size,
        fp16=args.fp16,
    ) for c in classes]                                   # one row of seeds per class with --class all
    images, ws = torch.cat([d[0] for d in drawn]), torch.cat([d[1] for d in drawn])
    cols = args.cols if args.cols is not None else (len(seeds) if args.class_idx == "all" else None)
    grid = image_grid(to_uint8(images), ncols=cols, pad=args.pad)
    save_image(args.out, grid)
    rows = f" ({len(classes)} classes x {len(seeds)} seeds)" if args.class_idx == "all" else ""
    print(f"wrote {len(images)} images ({G.img_resolution}x{G.img_resolution}){rows} as a grid to {args.out}")
    if args.ws_out:
        save_tensors(
            args.ws_out,
            {"ws": ws, "seeds": torch.tensor(seeds * len(classes), dtype=torch.int64),
             "classes": torch.tensor([c for c in classes for _ in seeds] if G.c_dim else [-1] * len(seeds),
                                     dtype=torch.int64)},
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


def _generator_data(args: argparse.Namespace) -> DataConfig | None:
    """The data G was trained on (its ``extra.data``, ``--data-root`` replacing the folder), or None if unrecorded."""
    path = Path(args.generator)
    saved = None if path.suffix.lower() in (".pkl", ".pickle") else (read_checkpoint_info(path).get("extra") or {}).get("data")
    if saved is None:
        if args.data_root is not None:
            raise ValueError(f"--data-root: the generator {args.generator} records no training data (extra.data), so "
                             "the kind of dataset there is unknown")
        return None
    overrides = [] if args.data_root is None else [f"data.root={json.dumps(str(args.data_root))}"]
    return data_config_with_overrides(saved, overrides, where=f"--generator {args.generator}")


def cmd_generator_evaluate(args: argparse.Namespace) -> int:
    """`viscoin generator evaluate`: f's agreement with the asked class and the attribute probe on G's samples."""
    start = time.perf_counter()
    if args.out is not None:
        refuse_existing([f"--out {args.out}"] if args.out.exists() else [], "exists", args.overwrite)
        check_writable(args.out, "--out")     # before the computation, so that none of it is lost
    device = resolve_device(args.device)
    try:
        G = load_generator(args.generator, device=device)
    except (ValueError, FileNotFoundError) as exc:
        raise ValueError(f"--generator: {exc}") from exc
    try:
        f = load_classifier(args.classifier, device=device)
        f_info = read_classifier_info(args.classifier)
    except (ValueError, FileNotFoundError) as exc:
        raise ValueError(f"--classifier: {exc}") from exc
    if G.c_dim == 0:
        raise ValueError(f"--generator {args.generator}: unconditional (c_dim=0); evaluate needs a class-conditional "
                         "generator")
    if G.c_dim != f.num_classes:
        raise ValueError(f"--classifier {args.classifier}: has {f.num_classes} classes, but the generator "
                         f"{args.generator} draws {G.c_dim} (c_dim)")
    data = _generator_data(args)
    saved_classes = (f_info.get("extra") or {}).get("classes")
    names = [str(c) for c in saved_classes] if isinstance(saved_classes, list) and len(saved_classes) == G.c_dim else None
    probe = None
    if data is None:
        print("note: the generator records no training data (extra.data); attribute probe skipped")
    else:
        train_set = build_dataset(data, "train", augment=False)
        if train_set.num_classes != G.c_dim:
            raise ValueError(f"--generator {args.generator}: draws {G.c_dim} classes, but its training data "
                             f"{data.root or data.kind} has {train_set.num_classes}")
        check_training_data(f_info, f"--classifier {args.classifier}", train_set.classes, data.resolution,
                            generator_resolution=G.img_resolution)
        names = train_set.classes
        if train_set.attributes is None:
            print(f"note: the generator's training data ({data.root or data.kind}) has no attributes; "
                  "attribute probe skipped")
        else:
            probe = fit_class_probe(f, train_set, build_dataset(data, "test"), per_class=args.probe_per_class,
                                    seed=args.seed, batch_size=args.batch_size)
    result = sample_metrics(G, f, per_class=args.per_class, seed=args.seed, batch_size=args.batch_size, probe=probe,
                            class_names=names)
    seconds = time.perf_counter() - start
    print(sample_table(result))
    print(f"took {seconds:.1f} s")
    if args.out is not None:
        write_json(args.out, {"generator": str(args.generator), "classifier": str(args.classifier),
                              "data": None if data is None else data.to_dict(),
                              "probe_per_class": args.probe_per_class, **result, "seconds": seconds})
        print(f"wrote {args.out}")
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
    what = "G_ema/, G/ and D/" if args.which == "all" else "config.json + weights.safetensors"
    print(f"wrote {args.which} of {args.run} at {extra['kimg']:.1f} kimg (step {extra['step']}, augment p "
          f"{extra['augment_p']:.4f}) to {args.out}/ ({what})")
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
    p.add_argument("--class", dest="class_idx", type=class_choice, default=None,
                   help="class index, or 'all' for one row of the seeds per class (conditional generators)")
    p.add_argument("--noise-mode", choices=["const", "random", "none"], default="const", help="noise inputs (default: const)")
    p.add_argument("--out", required=True, type=Path, help="output image (.png or .jpg)")
    p.add_argument("--ws-out", type=Path, default=None, help="also save the W+ latents (safetensors: ws, seeds)")
    p.add_argument("--cols", type=positive_int, default=None, help="grid columns (default: square)")
    p.add_argument("--pad", type=non_negative_int, default=0, help="pixels between grid cells")
    p.add_argument("--which", choices=["G_ema", "G"], default="G_ema", help="network of an official .pkl")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per forward pass")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'cuda:1', ... (default: auto)")
    p.add_argument("--fp16", action="store_true", help="float16 in the high-resolution blocks (CUDA)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out / --ws-out file")
    p.set_defaults(func=cmd_generator_sample)

    p = gsub.add_parser(
        "evaluate",
        help="does the classifier recognise the class a conditional generator was asked for (and the attribute "
             "probe its class-defining attributes)?",
        description="Draws --per-class samples of every class (seeded z, truncation psi 1, constant noise) and reports "
                    "f's agreement with the asked class per class, and, where the generator's training data has "
                    "attributes, the share of samples whose class-defining attribute groups an attribute probe on "
                    "f's features recognises (with the same probe on real test images as a reference), and each "
                    "class's diversity (the samples' spread on 16x16-pooled images over the real images').",
    )
    p.add_argument("--generator", required=True, type=Path,
                   help="class-conditional generator folder, official .pkl, or a shipped one: viscoin:birds/generator")
    p.add_argument("--classifier", required=True, type=Path,
                   help="classifier folder, or a shipped one: viscoin:birds/classifier")
    p.add_argument("--per-class", type=positive_int, default=50, help="samples of every class (default: 50)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of z and of the probe's choice of images (default: 0)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder of the generator's training data (default: as recorded with the generator), for the "
                        "attribute probe")
    p.add_argument("--probe-per-class", type=positive_int, default=100,
                   help="training (and real test) images of every class for the attribute probe (default: 100)")
    p.add_argument("--out", type=Path, default=None, help="also write the result as JSON to this file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass (default: 64)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'cuda:1', ... (default: auto)")
    p.set_defaults(func=cmd_generator_evaluate)

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
    p.add_argument("--which", choices=["G_ema", "G", "all"], default="G_ema",
                   help="network to write (default: G_ema); all: G_ema/, G/ and D/ subfolders, as the end of "
                        "training writes them, for init.source=OUT (a new run branching from this checkpoint)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty output folder (its config.json and weights.safetensors are replaced)")
    p.set_defaults(func=cmd_generator_export)

    p = gsub.add_parser("info", help="print a network's config and size")
    p.add_argument("path", type=Path,
                   help="viscoin network folder, official .pkl, or a shipped one: viscoin:birds/generator")
    p.set_defaults(func=cmd_generator_info)
