"""`viscoin explore [CHECKPOINT]`: the interactive concept explorer, served locally (Gradio, extra viscoin[app])."""

from __future__ import annotations

import argparse
import ipaddress
import sys
import threading
from pathlib import Path
from typing import Any

from viscoin.apps.explorer import DEFAULT_MAX_UPLOAD_MB, ConceptExplorer, load_explorer
from viscoin.apps.gradio_app import ExploreApp, import_gradio
from viscoin.cli.common import finite_float, non_negative_int, parse_lambdas, positive_int
from viscoin.utils.device import resolve_device

DEFAULT_CHECKPOINT = Path("viscoin-demo") / "viscoin"    # where `viscoin demo` writes its model


def add_explore_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `viscoin explore` on a (sub)parser."""
    parser.add_argument("checkpoint", type=Path, nargs="?", default=None,
                        help=f"VisCoIN folder: written by `viscoin demo` (default: {DEFAULT_CHECKPOINT}) "
                             "or by `viscoin train` (RUN/viscoin)")
    parser.add_argument("overrides", nargs="*", metavar="data.KEY=VALUE",
                        help="changes to the data config saved with the model, e.g. data.root=/elsewhere")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    parser.add_argument("--max-upload-mb", type=finite_float, default=DEFAULT_MAX_UPLOAD_MB,
                        help=f"largest accepted upload in MB (default: {DEFAULT_MAX_UPLOAD_MB:g})")
    parser.add_argument("--gallery", type=non_negative_int, default=48, help="test images in the gallery (default: 48)")
    parser.add_argument("--slots", type=positive_int, default=4, help="concepts that can be moved at once (default: 4)")
    parser.add_argument("--samples", type=positive_int, default=8,
                        help="most activating samples on a concept page (default: 8)")
    parser.add_argument("--lambdas", default="0,1,2,4",
                        help="multipliers of a concept page's sweeps (default: 0,1,2,4)")
    parser.add_argument("--open", action="store_true", help="open the page in the default browser")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', ... (default: auto)")


def resolve_checkpoint(checkpoint: Path | None, overrides: list[str]) -> tuple[Path, list[str]]:
    """The checkpoint to open (default: `viscoin demo`'s) and the data overrides.

    `viscoin explore data.root=X` puts the override where argparse expects the checkpoint; it is
    moved back. A missing default checkpoint is a one-line error saying what to do.
    """
    if checkpoint is not None and "=" in str(checkpoint) and not checkpoint.exists():
        overrides, checkpoint = [str(checkpoint), *overrides], None
    if checkpoint is None:
        if not (DEFAULT_CHECKPOINT / "config.json").is_file():
            raise FileNotFoundError(
                f"no checkpoint given and there is no {DEFAULT_CHECKPOINT} here: run `viscoin demo` first, "
                "or pass a checkpoint folder written by `viscoin train` (RUN/viscoin)")
        checkpoint = DEFAULT_CHECKPOINT
    return checkpoint, overrides


def check_options(args: argparse.Namespace) -> None:
    """Option values, each error naming its option."""
    if args.port is not None and not 0 < args.port < 65536:
        raise ValueError(f"--port: expected 1..65535, got {args.port}")
    if not args.max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb: expected > 0, got {args.max_upload_mb}")
    for name in ("gallery", "slots", "samples"):
        if getattr(args, name) < (0 if name == "gallery" else 1):
            raise ValueError(f"--{name}: expected >= {0 if name == 'gallery' else 1}, got {getattr(args, name)}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_explore_command(args: argparse.Namespace) -> int:
    """Run `viscoin explore`: load the model and its data, serve the app until Ctrl-C."""
    check_options(args)
    lambdas = parse_lambdas(args.lambdas)
    checkpoint, overrides = resolve_checkpoint(args.checkpoint, list(args.overrides))
    import_gradio()                              # fail early, before the model loads, when the extra is missing
    device = resolve_device(args.device)
    print(f"loading {checkpoint} ...", flush=True)
    explorer = load_explorer(checkpoint, overrides, device=device, gallery_size=args.gallery,
                             max_upload_mb=args.max_upload_mb)
    if not is_loopback(args.host):
        print(f"note: serving on {args.host}: other machines on the network can use the app", flush=True)
    app = ExploreApp(explorer, slots=args.slots, samples=args.samples, lambdas=lambdas,
                     title=f"Model: {checkpoint}")
    threading.Thread(target=index_training_split, args=(explorer,), daemon=True).start()
    app.launch(args.host, args.port, block=True, open_browser=args.open)
    return 0


def index_training_split(explorer: ConceptExplorer) -> None:
    """Compute the concept pages' pass over the training split in the background, so that the first
    page opens at once; an error here is printed and shown again by the page that needs it."""
    try:
        explorer.activations()
    except Exception as exc:  # noqa: BLE001 (a background thread: report, never raise)
        print(f"note: concept pages unavailable: {exc}", file=sys.stderr, flush=True)


def register(sub: Any) -> None:
    """Add `viscoin explore` to the top-level subparsers."""
    p = sub.add_parser("explore", help="interactive concept explorer in the browser (needs the extra viscoin[app])",
                       description="Serve a local web app: pick an image, move its concepts' λ, read concept pages.")
    add_explore_arguments(p)
    p.set_defaults(func=run_explore_command)
