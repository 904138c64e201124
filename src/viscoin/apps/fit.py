"""`viscoin fit FOLDER --out DIR`: from a folder of labelled images to a trained, evaluated, reported VisCoIN.

    viscoin fit my_images --out runs/mine                     # the quick budget: about an hour on a CPU
    viscoin fit my_images --out runs/mine --plan-only         # print the plan and its time estimates, write nothing
    viscoin fit my_images --out runs/mine --budget standard --classifier runs/f/classifier
    viscoin fit my_images --out runs/mine --generator ffhq.pkl --finetune-generator generator.kimg=200

What it does, in order:

1. **inspects the folder** (`inspect_folder`): the classes (one sub-folder each, optionally under
   ``train/`` and ``test/``; otherwise the seeded 20% test split of `viscoin.data.folder`), the images
   per class and split, and the images' typical size (median width and height of up to 400 of them).
   The working resolution is the largest power of two not above the smaller median side, capped by
   the budget (`RESOLUTION_CAP`); a given classifier or generator fixes it to its own.
2. **plans** (`make_plan`): each stage's recipe, a shipped config and the changes the budget, the data
   and the user (``STAGE.KEY=VALUE``) make to it (`Recipe`), and an estimate of its time on this
   machine (`estimate_stages`), then prints the plan (`format_plan`). ``--plan-only`` stops here.
3. **runs the stages**, each an ordinary run folder inside DIR: ``DIR/classifier`` (f, `viscoin
   classifier train`), ``DIR/generator`` (G, `viscoin generator train`), ``DIR/viscoin`` (Ψ, Θ, Ω,
   `viscoin train`), then ``DIR/evaluation.json`` (`viscoin evaluate`) and ``DIR/report/`` (`viscoin
   report`), and prints the summary and the command that opens the explorer.

**Budgets** (`BUDGETS`; the recipes: `classifier_recipe`, `generator_recipe`, `viscoin_recipe`,
`evaluate_recipe`): ``quick`` aims at about an hour on the machine it runs on, ``standard`` at about
eight, ``paper`` runs the paper's recipes (ImageNet ResNet50 f at up to 256 px, the official 'auto'
StyleGAN2-ADA for 25,000 kimg, or 2,000 kimg of fine-tuning, VisCoIN's table-3 config) whatever they
take, and ``tiny`` is a smoke test of the pipeline (a minute; its model means nothing). Within a time
target the generator, the longest stage, gets the time the other stages leave (its kimg, between the
budget's bounds); ``--minutes`` sets another target. On CUDA every stage trains on the GPUs
(``run.devices``, DDP when more than one: such a stage runs as its own `viscoin ... train` process,
which Lightning Fabric launches on every GPU).

**Conditional or unconditional G** (`generator_conditioning`): G is class-conditional unless the
budget is ``paper`` and training runs on CUDA. Unconditional generators trained from scratch on what a
2-core CPU affords collapsed to a few classes on the synthetic birds (three runs of 45 kimg: at best 5
of 12 classes drawn), while a conditional one drew every class; VisCoIN's synthetic half then draws a
uniform class per image. The paper's generators are unconditional and trained on GPUs for thousands of
kimg, which ``paper`` on CUDA does. A given ``--generator`` keeps its own (conditional when it has a
class input, which must have as many classes as the folder); ``generator.conditional=...`` overrides
the rule.

**Estimates** (`time_steps`): each training stage runs 1 and then 3 of its steps (its planned config
with the step count changed, in a temporary folder, on randomly initialised f and G of the planned
architectures for VisCoIN); the difference gives the time of one step and the rest the stage's fixed
cost, extrapolated to the planned steps (divided by the GPU count under DDP). Evaluation and report
are estimated from VisCoIN's time per image with a count of network passes calibrated on `viscoin
demo`'s evaluation (`evaluation_passes`). The actual time of each stage is printed at the end.

**DIR's safety**: ``DIR/.viscoin-fit.json`` (the manifest) records the request (folder, budget,
options), what the folder held, the plan, and the names this command created in DIR. A non-empty DIR
without it, or holding anything it does not list, is refused before anything is computed. Run again
with the same request, it reuses the recorded plan (no new timing): a finished stage whose config is
the planned one is reused, an interrupted one resumes from its last checkpoint, a stage after a
retrained one is retrained. A different request (or changed folder) is refused, naming what changed,
unless ``overwrite``: then the new plan runs, stages whose config is unchanged are reused, the others
replaced by their trainer's ``--overwrite`` (which deletes only that run's outputs). Nothing the
manifest does not list is ever deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from viscoin.apps.demo import changed_settings, demo_evaluation, summary
from viscoin.classifier.model import Classifier, read_classifier_info, save_classifier
from viscoin.classifier.train import ClassifierTrainConfig, train_classifier
from viscoin.data.base import DatasetError, listing
from viscoin.data.folder import has_split_folders, load_folder
from viscoin.metrics.evaluate import EvaluateConfig, evaluate_checkpoint, markdown_tables
from viscoin.model.contract import check_training_data
from viscoin.model.train import VisCoINTrainConfig, train_viscoin
from viscoin.pretrained import is_pretrained_name, resolve
from viscoin.report.html import write_report
from viscoin.stylegan.checkpoint import load_generator, save_network
from viscoin.stylegan.generator import Generator
from viscoin.stylegan.train import GeneratorTrainConfig, read_init_source, resolve_config, train_generator
from viscoin.training.config import load_config, parse_override, save_config_yaml
from viscoin.training.runner import RESUME_MAY_CHANGE
from viscoin.training.state import latest_checkpoint
from viscoin.utils.config import ConfigError, DictConfig, config_from_dict
from viscoin.utils.io import sha256_file, write_json

WRITER = "viscoin fit"
MANIFEST = ".viscoin-fit.json"
STAGES = ("classifier", "generator", "viscoin", "evaluate", "report")
TRAINED = ("classifier", "generator", "viscoin")          # the stages with a run folder DIR/<stage>
EVALUATION_FILE = "evaluation.json"
REPORT_DIR = "report"
BUDGETS = ("quick", "standard", "paper", "tiny")
TARGET_MINUTES = {"quick": 60.0, "standard": 480.0, "paper": None, "tiny": None}   # time target of each budget
RESOLUTION_CAP = {  # (budget, accelerator) -> largest working resolution
    ("tiny", "cpu"): 32, ("tiny", "cuda"): 32,
    ("quick", "cpu"): 64, ("quick", "cuda"): 128,
    ("standard", "cpu"): 128, ("standard", "cuda"): 256,
    ("paper", "cpu"): 256, ("paper", "cuda"): 256,
}
MIN_RESOLUTION = 16
MIN_TRAIN_IMAGES = 8                      # VisCoIN's 8 real images per step
TEST_FRACTION, SPLIT_SEED = 0.2, 0        # the folder's split when it has no train/ and test/ levels
SIZES_READ = 400                          # images whose size is read to find the typical size
TIMED_STEPS = (1, 3)                      # steps of the two timed runs of each training stage
FILL_SHARE = 0.9                          # share of a time target the plan fills (the rest: a margin)
DDP_EFFICIENCY = 0.9                      # speed-up of N GPUs assumed: N x this
REPORT_KEYS = ("pairs", "samples", "per_class", "threshold", "batch_size")   # report.KEY=VALUE


# ==================================================================== the folder


@dataclass(frozen=True)
class FolderInfo(DictConfig):
    """What the image folder holds (`inspect_folder`)."""

    root: str = ""                                   # the folder, absolute
    layout: str = "seeded"                           # "train/test" (its own split) or "seeded" (20% per class)
    classes: tuple[str, ...] = ()                    # class names in label order
    train_per_class: tuple[int, ...] = ()            # training images per class
    test_per_class: tuple[int, ...] = ()             # test images per class
    median_width: int = 0                            # typical size: median width and height of the images read
    median_height: int = 0
    sizes_read: int = 0                              # images whose size was read

    @property
    def num_train(self) -> int:
        return sum(self.train_per_class)

    @property
    def num_test(self) -> int:
        return sum(self.test_per_class)

    @property
    def smaller_side(self) -> int:
        return min(self.median_width, self.median_height)


def floor_pow2(n: float) -> int:
    """The largest power of two <= n (1 for n < 2)."""
    return 1 << max(0, int(math.floor(math.log2(max(n, 1)))))


def inspect_folder(root: str | Path) -> FolderInfo:
    """Classes, images per class and split, typical image size of an image folder; a ValueError naming the
    folder when it cannot be used (absent, fewer than 2 classes, a class without training or test images,
    fewer than `MIN_TRAIN_IMAGES` training images, an unreadable image among those read)."""
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder; give a folder of images with one sub-folder per class")
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder; give a folder of images with one sub-folder per class")
    train = load_folder(root, "train", TEST_FRACTION, SPLIT_SEED)
    classes = train.classes
    if len(classes) < 2:
        raise ValueError(f"{root}: {len(classes)} class ({listing(classes, 3)}); viscoin fit needs at least 2 classes, "
                         "one sub-folder of images per class (optionally under train/ and test/)")
    split_levels = has_split_folders(root)
    try:
        test = load_folder(root, "test", TEST_FRACTION, SPLIT_SEED)
    except DatasetError as exc:
        raise ValueError(f"{root}: no test images ({exc}); every class needs at least 2 images, one is kept "
                         "for testing") from exc
    count = lambda samples: tuple(sum(1 for _, y in samples if y == c) for c in range(len(classes)))  # noqa: E731
    train_n, test_n = count(train.samples), count(test.samples)
    untrained = [name for name, n in zip(classes, train_n) if n == 0]
    if untrained:
        raise ValueError(f"{root}: class(es) without training images: {listing(untrained, 5)}; "
                         "f cannot learn them (add images or remove the class folders)")
    untested = [name for name, n in zip(classes, test_n) if n == 0]
    if untested and not split_levels:
        raise ValueError(f"{root}: class(es) with a single image: {listing(untested, 5)}; viscoin fit needs at least "
                         "2 images per class (one is kept for testing)")
    if sum(train_n) < MIN_TRAIN_IMAGES:
        raise ValueError(f"{root}: only {sum(train_n)} training images; viscoin fit needs at least {MIN_TRAIN_IMAGES}")
    files = sorted(p for p, _ in [*train.samples, *test.samples])
    chosen = files[:: max(1, math.ceil(len(files) / SIZES_READ))]
    widths, heights = [], []
    for path in chosen:
        try:
            with Image.open(path) as img:
                w, h = img.size
        except Exception as exc:  # PIL raises many types
            raise DatasetError(f"cannot read image {path}: {exc or type(exc).__name__}") from exc
        widths.append(w)
        heights.append(h)
    return FolderInfo(root=str(root), layout="train/test" if split_levels else "seeded", classes=tuple(classes),
                      train_per_class=train_n, test_per_class=test_n, median_width=int(statistics.median_low(widths)),
                      median_height=int(statistics.median_low(heights)), sizes_read=len(chosen))


# ==================================================================== the request and the hardware


@dataclass(frozen=True)
class Hardware(DictConfig):
    """Where the stages train: the CPU, or CUDA with `devices` GPUs (DDP when more than one)."""

    accelerator: str = "cpu"                         # "cpu" or "cuda"
    devices: int = 1
    name: str = ""                                   # for the plan, e.g. "CPU, 2 threads"


def detect_hardware(device: str = "auto", devices: int = 0) -> Hardware:
    """The CPU, or CUDA when present (``device="auto"``) with `devices` GPUs (0: all visible ones)."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device: expected auto, cpu or cuda, got {device!r}")
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise ValueError("--device cuda: CUDA is not available on this machine; use --device cpu")
    if device == "cpu" or not cuda:
        if devices > 1:
            raise ValueError(f"--devices {devices}: several devices need CUDA (DDP on GPUs); this plan trains on the CPU")
        threads = torch.get_num_threads()
        return Hardware("cpu", 1, f"CPU, {threads} thread{'s' * (threads > 1)}")
    available = torch.cuda.device_count()
    n = devices or available
    if n > available:
        raise ValueError(f"--devices {n}: only {available} CUDA device(s) visible")
    return Hardware("cuda", n, f"{n} x {torch.cuda.get_device_name(0)}" + (" (DDP)" if n > 1 else ""))


@dataclass(frozen=True)
class FitRequest(DictConfig):
    """What the user asked for; with the same request (and folder) a rerun reuses the recorded plan."""

    folder: str = ""
    budget: str = "quick"
    minutes: float | None = None                     # time target (None: the budget's)
    resolution: int = 0                              # working resolution (0: from the images)
    classifier: str = ""                             # a trained f to use ("" : train one)
    generator: str = ""                              # a G to use or fine-tune ("" : train one)
    finetune_generator: bool = False
    overrides: tuple[str, ...] = ()                  # STAGE.KEY=VALUE
    hardware: Hardware = field(default_factory=Hardware)


def split_overrides(overrides: Sequence[str]) -> dict[str, list[str]]:
    """``STAGE.KEY=VALUE`` -> {stage: ["KEY=VALUE", ...]}; a ValueError naming a bad one."""
    out: dict[str, list[str]] = {stage: [] for stage in STAGES}
    for text in overrides:
        stage, dot, rest = text.partition(".")
        if stage not in STAGES or not dot or "=" not in rest:
            raise ValueError(f"override {text!r}: expected STAGE.KEY=VALUE with STAGE one of {', '.join(STAGES)}, "
                             "e.g. generator.kimg=20 viscoin.iterations=1000 evaluate.n_faithfulness=300")
        parse_override(rest)                          # the value must be YAML
        if stage == "report" and rest.partition("=")[0] not in REPORT_KEYS:
            raise ValueError(f"override {text!r}: the report takes {', '.join(REPORT_KEYS)}")
        out[stage].append(rest)
    return out


# ==================================================================== recipes and the plan


@dataclass(frozen=True)
class Recipe(DictConfig):
    """How one stage runs: a shipped config (its family's), the changes the budget and the data make to it,
    the user's, and the estimated time on this machine."""

    config: str = ""                                 # shipped config name ("" for a skipped stage)
    overrides: tuple[str, ...] = ()                  # KEY=VALUE of the budget and the data
    user: tuple[str, ...] = ()                       # KEY=VALUE given as STAGE.KEY=VALUE
    skipped: str = ""                                # why the stage does not run (e.g. "given: PATH")
    estimate_s: float = 0.0                          # estimated seconds
    basis: str = ""                                  # what the estimate comes from

    def all_overrides(self) -> list[str]:
        return [*self.overrides, *self.user]


@dataclass(frozen=True)
class FitPlan(DictConfig):
    """Everything `viscoin fit` will do (recorded in the manifest)."""

    request: FitRequest = field(default_factory=FitRequest)
    images: FolderInfo = field(default_factory=FolderInfo)
    resolution: int = 0
    resolution_why: str = ""
    conditional: bool = True                         # G class-conditional
    conditional_why: str = ""
    target_minutes: float | None = None
    classifier: Recipe = field(default_factory=Recipe)
    generator: Recipe = field(default_factory=Recipe)
    viscoin: Recipe = field(default_factory=Recipe)
    evaluate: Recipe = field(default_factory=Recipe)
    report: Recipe = field(default_factory=Recipe)

    def recipe(self, stage: str) -> Recipe:
        return getattr(self, stage)

    @property
    def total_s(self) -> float:
        return sum(self.recipe(s).estimate_s for s in STAGES)


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def working_resolution(info: FolderInfo, budget: str, hw: Hardware, asked: int, f_res: int | None,
                       g_res: int | None) -> tuple[int, str]:
    """The resolution of every stage and why (see the module docstring)."""
    fixed = {"the given classifier": f_res, "the given generator": g_res}
    fixed = {k: v for k, v in fixed.items() if v}
    if len(set(fixed.values())) > 1:
        raise ValueError(f"the given classifier works at {f_res}x{f_res} but the given generator draws {g_res}x{g_res}; "
                         "VisCoIN needs both at one resolution")
    if fixed:
        who, res = next(iter(fixed.items()))
        if asked and asked != res:
            raise ValueError(f"--resolution {asked}: {who} works at {res}x{res}")
        return res, f"{who}'s"
    if asked:
        return asked, "--resolution"
    cap = RESOLUTION_CAP[(budget, hw.accelerator)]
    if info.smaller_side < MIN_RESOLUTION:
        raise ValueError(f"{info.root}: the images are too small (median {info.median_width}x{info.median_height}); "
                         f"viscoin fit needs at least {MIN_RESOLUTION} px (or give --resolution)")
    res = min(cap, floor_pow2(info.smaller_side))
    why = f"the largest power of two <= the smaller median side ({info.smaller_side} px)"
    if res == cap and floor_pow2(info.smaller_side) > cap:
        why = f"the {budget} budget's largest on {'a CPU' if hw.accelerator == 'cpu' else 'CUDA'}"
    return res, why


def generator_conditioning(budget: str, hw: Hardware, given_c_dim: int | None) -> tuple[bool, str]:
    """Class-conditional G unless the budget is ``paper`` on CUDA (the module docstring says why); a given G
    keeps its own."""
    if given_c_dim is not None:
        return given_c_dim > 0, "the given generator's own"
    if budget == "paper" and hw.accelerator == "cuda":
        return False, "the paper's budget on a GPU: as the paper's generators"
    return True, ("unconditional ones trained from scratch on a small budget collapsed to a few classes on the "
                  "synthetic birds; only --budget paper on a GPU trains an unconditional G")


def classifier_recipe(budget: str, hw: Hardware, info: FolderInfo) -> Recipe:
    """f: a narrow ResNet18 from scratch (``birds``: the shipped birds' recipe) for a number of epochs that
    shows it about 24,000 images (quick) or 100,000 (standard); ``paper``: the paper's CUB recipe (ImageNet
    ResNet50, Adam 1e-4, 30 epochs, batch 32); ``tiny``: one epoch of a tiny one."""
    n = info.num_train
    if budget == "tiny":
        return Recipe("tiny", ("classifier.width=8", "epochs=1", f"batch_size={min(8, floor_pow2(n))}",
                               "run.ckpt_every=2"))
    if budget == "paper":
        return Recipe("cub", (f"batch_size={min(32, floor_pow2(n))}",))
    seen, low, high = (24_000, 4, 40) if budget == "quick" else (100_000, 10, 80)
    width = {("quick", "cpu"): 16, ("quick", "cuda"): 32, ("standard", "cpu"): 32, ("standard", "cuda"): 64}[
        (budget, hw.accelerator)]
    epochs = int(clamp(math.ceil(seen / n), low, high))
    return Recipe("birds", (f"classifier.width={width}", f"epochs={epochs}", f"batch_size={min(64, floor_pow2(n))}"))


KIMG_BOUNDS = {  # generator kimg (low, high) filled from a time target; high is also the length without one
    "quick": {"cpu": (4.0, 88.0), "cuda": (50.0, 1000.0)},
    "standard": {"cpu": (20.0, 1000.0), "cuda": (200.0, 10_000.0)},
    "paper": {"cpu": (25_000.0, 25_000.0), "cuda": (25_000.0, 25_000.0)},
    "tiny": {"cpu": (0.04, 0.04), "cuda": (0.04, 0.04)},
}
FINETUNE_KIMG = {"quick": 50.0, "standard": 500.0, "paper": 2000.0, "tiny": 0.04}   # fine-tuning's high bound


def generator_recipe(budget: str, hw: Hardware, conditional: bool, finetune: str) -> Recipe:
    """G: on a CPU the shipped birds generator's recipe (64 channels at most, R1 γ 0.1, ADA with the geometric
    transforms), on CUDA the official 'auto' one; fine-tuning: the paper's CUB recipe on the source's own
    architecture; ``tiny``: the 16-channel test generator. kimg is filled in by `fill_generator`."""
    cond = f"conditional={'true' if conditional else 'false'}"
    kimg = kimg_bounds(budget, hw.accelerator, bool(finetune))[1]
    if finetune:
        return Recipe("cub", (f"init.source={json.dumps(finetune)}", "init.architecture=source", cond, f"kimg={kimg:g}"))
    if budget == "tiny":
        return Recipe("tiny", (cond, f"kimg={kimg:g}", "samples.every_kimg=0", "samples.grid=8", "run.ckpt_every=2"))
    config = "birds" if hw.accelerator == "cpu" else "auto"
    extra = ("samples.every_kimg=10",) if config == "birds" else ()
    return Recipe(config, (cond, f"kimg={kimg:g}", *extra))


def viscoin_recipe(budget: str, hw: Hardware, num_classes: int) -> Recipe:
    """VisCoIN: the demo's config (K = the next power of two of the classes, 16 to 256; the offline perceptual
    term) for 50 steps per class (600 to 3,000; standard: 250, 3,000 to 20,000); ``paper``: the paper's CUB
    config (LPIPS, 100,000 steps) with K = 64 to 256; ``tiny``: 10 steps with K = 4."""
    if budget == "tiny":
        return Recipe("tiny", ("model.num_concepts=4", "iterations=10", "sample_every=5", "eval_every=0",
                               "run.ckpt_every=2"))
    if budget == "paper":
        return Recipe("cub", (f"model.num_concepts={int(clamp(next_pow2(num_classes), 64, 256))}",))
    k = int(clamp(next_pow2(num_classes), 16, 256))
    per_class, low, high = (50, 600, 3000) if budget == "quick" else (250, 3000, 20_000)
    steps = int(clamp(per_class * num_classes, low, high))
    # The demo config asks for torch's deterministic algorithms (exact on a CPU); on CUDA some backward passes have
    # no deterministic version and would stop the run, so they are left to cuDNN there.
    cuda = ("run.deterministic=false",) if hw.accelerator == "cuda" else ()
    return Recipe("demo", (f"model.num_concepts={k}", f"iterations={steps}", *cuda))


def evaluate_recipe(budget: str) -> Recipe:
    """The evaluation: the demo's settings (1000 faithfulness images, 50 consistency samples, 2,400 training
    images), the paper's protocol for ``paper`` (FID on f's features when the Inception weights are not cached),
    a minimal one for ``tiny``. Stored as changes to `EvaluateConfig`'s defaults."""
    cfg, _ = demo_evaluation()
    if budget == "tiny":
        cfg = EvaluateConfig(metrics=("accuracy", "reconstruction", "faithfulness", "consistency"), n_faithfulness=8,
                             consistency_samples=4, max_train_samples=24, max_concepts=2, cv_folds=2, batch_size=16,
                             fid_features=cfg.fid_features, progress=False)
    elif budget == "paper":
        cfg = EvaluateConfig(fid_features=cfg.fid_features)
    default = _flat(EvaluateConfig().to_dict())
    return Recipe(budget if budget in ("paper", "tiny") else "demo",
                  tuple(f"{k}={json.dumps(v)}" for k, v in _flat(cfg.to_dict()).items() if default.get(k) != v))


def report_recipe(budget: str) -> Recipe:
    return Recipe("", ("pairs=1", "samples=2") if budget == "tiny" else ())


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix[:-1]: data}
    return {k: v for key, value in data.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


# ==================================================================== stage configs


def classifier_path(plan: FitPlan, out: Path) -> str:
    """The f VisCoIN trains on: the given one, or DIR/classifier/classifier."""
    return plan.request.classifier or str(out / "classifier" / "classifier")


def generator_path(plan: FitPlan, out: Path) -> str:
    """The G VisCoIN trains on: the given one used as is, or DIR/generator/G_ema."""
    if plan.request.generator and not plan.request.finetune_generator:
        return plan.request.generator
    return str(out / "generator" / "G_ema")


def _common(plan: FitPlan, run_dir: Path) -> list[str]:
    """The data every stage reads and where it runs."""
    hw = plan.request.hardware
    return ["data.kind=folder", f"data.root={json.dumps(plan.images.root)}", f"data.resolution={plan.resolution}",
            f"data.test_fraction={TEST_FRACTION}", f"data.split_seed={SPLIT_SEED}",
            f"run.out_dir={json.dumps(str(run_dir))}", f"run.accelerator={hw.accelerator}", f"run.devices={hw.devices}"]


CONFIG_CLASSES = {"classifier": ClassifierTrainConfig, "generator": GeneratorTrainConfig, "viscoin": VisCoINTrainConfig}


def stage_config(plan: FitPlan, stage: str, out: Path, run_dir: Path | None = None, extra: Sequence[str] = (),
                 f_path: str | None = None, g_path: str | None = None) -> Any:
    """The full config of a training stage: its shipped config, the data and run settings, the recipe's and the
    user's changes, then `extra` (the timed runs); the generator's resolved as its trainer resolves it."""
    recipe = plan.recipe(stage)
    overrides = _common(plan, run_dir or out / stage)
    if stage == "classifier":
        overrides.append(f"classifier.num_classes={len(plan.images.classes)}")
    if stage == "viscoin":
        overrides += [f"classifier={json.dumps(f_path or classifier_path(plan, out))}",
                      f"generator={json.dumps(g_path or generator_path(plan, out))}"]
    cfg = load_config(CONFIG_CLASSES[stage], recipe.config, [*overrides, *recipe.all_overrides(), *extra], family=stage)
    if stage == "generator":
        source = read_init_source(cfg.init.source) if cfg.init.source and cfg.init.architecture == "source" else None
        cfg = resolve_config(cfg, len(plan.images.classes), source)
    return cfg


def evaluate_config(plan: FitPlan) -> EvaluateConfig:
    data = EvaluateConfig().to_dict()
    for text in plan.evaluate.all_overrides():
        key, value = parse_override(text)
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config_from_dict(EvaluateConfig, data, "evaluate")


def report_settings(plan: FitPlan) -> dict[str, Any]:
    return dict(parse_override(text) for text in plan.report.all_overrides())


# ==================================================================== estimates


@dataclass(frozen=True)
class StepTime:
    """A training stage's time: `per_step` seconds a step, `fixed` seconds for the rest (setup, final test)."""

    per_step: float
    fixed: float


def time_steps(run: Callable[[int, Path], Any], steps: Sequence[int] = TIMED_STEPS, warm_up: bool = False) -> StepTime:
    """Run a stage for `steps[0]` and `steps[1]` steps (``run(n, folder)``, in temporary folders, its output
    swallowed) and split the time into a step's and the fixed part. `warm_up`: first a run of `steps[0]` steps
    whose time is not counted (the first training of a process also pays one-time costs: imports, kernels)."""
    times = []
    for n in [steps[0]] * warm_up + list(steps):
        with tempfile.TemporaryDirectory(prefix="viscoin-fit-timing-") as tmp:
            sink = io.StringIO()
            start = time.perf_counter()
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                run(n, Path(tmp))
            times.append(time.perf_counter() - start)
    first, second = times[-2:]
    per_step = max((second - first) / (steps[1] - steps[0]), second / steps[1] / 10)
    return StepTime(per_step, max(first - steps[0] * per_step, 0.0))


def evaluation_passes(cfg: EvaluateConfig, n_train: int, n_test: int, k: int) -> float:
    """Network passes (f, Ψ, Ω, G on one image) an evaluation makes, calibrated on `viscoin demo`'s (1,200 test
    images, 2,400 training images, K = 16: 80 s at 3.5 ms a pass): about 1.7 per test image (accuracy and
    reconstructions), 0.1 per image encoded, 11 per faithfulness image and 1.7 per consistency image."""
    test = min(n_test, cfg.max_test_samples or n_test)
    train = min(n_train, cfg.max_train_samples or n_train)
    passes = 0.1 * (test + train)
    if "accuracy" in cfg.metrics or "reconstruction" in cfg.metrics:
        passes += 1.7 * test
    if "faithfulness" in cfg.metrics:
        passes += 11 * min(cfg.n_faithfulness, test)
    if "consistency" in cfg.metrics:
        concepts = min(k, cfg.max_concepts or k)
        passes += 1.7 * concepts * 2 * cfg.consistency_samples * (len(cfg.consistency_lambdas) + 1)
    if "visualisation_fid" in cfg.metrics:
        passes += 2 * cfg.vis_fid_pairs * cfg.vis_fid_per_pair
    return passes


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _quiet(cfg: Any) -> Any:
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, progress=False, log_every=1000, ckpt_every=10**6))


ONE_DEVICE = ("run.devices=1", "run.num_nodes=1")      # the timed runs train in this process, on one device


def _timed(plan: FitPlan, stage: str, out: Path, changes: Callable[[int], list[str]], **paths: str
           ) -> Callable[[int, Path], Any]:
    """``run(n, folder)`` for `time_steps`: the stage's planned config for `n` steps, in `folder`."""
    trainer = TRAINERS[stage][0]
    return lambda n, tmp: trainer(_quiet(stage_config(plan, stage, out, tmp / "run", [*ONE_DEVICE, *changes(n)],
                                                      **paths)))


def _speedup(cfg: Any) -> float:
    n = cfg.run.devices * cfg.run.num_nodes
    return n * DDP_EFFICIENCY if n > 1 else 1.0


def _estimated(recipe: Recipe, t: StepTime, steps: int, speedup: float, unit: str = "step", extra_s: float = 0.0,
               note: str = "") -> Recipe:
    """`recipe` with the estimate of `steps` steps of `t` (and `extra_s` more), and its basis."""
    return dataclasses.replace(recipe, estimate_s=t.fixed + (t.per_step * steps + extra_s) / speedup,
                               basis=f"{t.per_step:.2f} s/{unit} x {steps} {unit}s{note} + {_minutes(t.fixed)}")


def kimg_bounds(budget: str, accelerator: str, finetune: bool) -> tuple[float, float]:
    """The generator's kimg range a time target may fill (`KIMG_BOUNDS`; fine-tuning: up to `FINETUNE_KIMG`)."""
    if finetune:
        return min(4.0, FINETUNE_KIMG[budget]), FINETUNE_KIMG[budget]
    return KIMG_BOUNDS[budget][accelerator]


def fill_generator(plan: FitPlan, out: Path, t: StepTime, others_s: float, spent_s: float) -> Recipe:
    """The generator's recipe with its estimate; with a time target (and no generator.kimg of the user's) its kimg
    is what the target leaves after the other stages and the planning (`spent_s`), within `kimg_bounds`."""
    recipe = plan.generator
    cfg = stage_config(plan, "generator", out)
    if plan.target_minutes and not any(o.startswith("kimg=") for o in recipe.user):
        low, high = kimg_bounds(plan.request.budget, plan.request.hardware.accelerator,
                                plan.request.finetune_generator)
        per_kimg = t.per_step * 1000 / int(cfg.batch_size) / _speedup(cfg)
        room = plan.target_minutes * 60 * FILL_SHARE - spent_s - others_s - t.fixed
        kimg = round(clamp(room / per_kimg, low, high), 1 if high >= 10 else 3)
        recipe = dataclasses.replace(recipe, overrides=tuple(
            f"kimg={kimg:g}" if o.startswith("kimg=") else o for o in recipe.overrides))
        cfg = stage_config(dataclasses.replace(plan, generator=recipe), "generator", out)
    iterations = math.ceil(cfg.kimg * 1000 / int(cfg.batch_size))
    return _estimated(recipe, t, iterations, _speedup(cfg), "iteration", note=f" ({cfg.kimg:g} kimg)")


def estimate_stages(plan: FitPlan, out: Path, spent_s: float = 0.0) -> FitPlan:
    """The plan with every stage's estimate, and the generator's kimg filled from the time target. Runs the timed
    steps (see the module docstring); VisCoIN's on randomly initialised f and G of the planned architectures
    (the given ones when given). Nothing is written in `out`."""
    info = plan.images
    recipes: dict[str, Recipe] = {}
    warm_up = True                                          # the first timed stage of the process warms up
    with tempfile.TemporaryDirectory(prefix="viscoin-fit-nets-") as tmp:
        nets = Path(tmp)
        f_path, g_path = classifier_path(plan, out), generator_path(plan, out)
        if not plan.classifier.skipped:
            cfg = stage_config(plan, "classifier", out)
            t = time_steps(_timed(plan, "classifier", out, lambda n: [f"epochs={n}", f"max_steps={n}"]), warm_up=warm_up)
            warm_up = False
            tests = cfg.epochs * info.num_test * t.per_step / cfg.batch_size / 3   # the test split after every epoch
            recipes["classifier"] = _estimated(plan.classifier, t, info.num_train // cfg.batch_size * cfg.epochs,
                                               _speedup(cfg), extra_s=tests)
            f_path = str(save_classifier(Classifier(cfg.classifier, load_pretrained=False), nets / "f",
                                         extra={"classes": list(info.classes), "data": cfg.data.to_dict()}))
        if not plan.generator.skipped:
            g_cfg = stage_config(plan, "generator", out)
            batch = int(g_cfg.batch_size)
            # ADA's p starts at 0 (no augmentation) and settles near 0.6 on small data (the birds' G: 0.59), where
            # every D pass pays for the augmentations: the timed steps run at p = 0.5.
            steady = ["augment.p=0.5"] if g_cfg.augment.mode != "noaug" else []
            g_time = time_steps(_timed(plan, "generator", out, lambda n: [
                f"kimg={(n * batch - 0.5) / 1000}", "samples.every_kimg=0", *steady]), warm_up=warm_up)
            warm_up = False
            g_path = str(save_network(Generator(g_cfg.generator), nets / "G"))
        v_cfg = stage_config(plan, "viscoin", out, f_path=f_path, g_path=g_path)
        t = time_steps(_timed(plan, "viscoin", out, lambda n: [f"iterations={n}", "eval_every=0", "sample_every=0"],
                              f_path=f_path, g_path=g_path), warm_up=warm_up)
    per_image = t.per_step / (v_cfg.batch_real + v_cfg.batch_synthetic)
    checks = (v_cfg.iterations // v_cfg.eval_every if v_cfg.eval_every else 0) * \
        min(info.num_test, v_cfg.eval_samples or info.num_test) * per_image / 3
    recipes["viscoin"] = _estimated(plan.viscoin, t, v_cfg.iterations, _speedup(v_cfg), extra_s=checks)

    per_pass = per_image / 3                                # forward only, no gradient
    basis = f"{per_pass * 1000:.1f} ms a network pass, passes counted"
    eval_cfg = evaluate_config(plan)
    passes = evaluation_passes(eval_cfg, info.num_train, info.num_test, v_cfg.model.num_concepts)
    recipes["evaluate"] = dataclasses.replace(plan.evaluate, estimate_s=per_pass * passes + 5, basis=basis)
    relevance = 0.1 * min(info.num_train, eval_cfg.max_train_samples or info.num_train)
    pairs = int(report_settings(plan).get("pairs", 6))
    recipes["report"] = dataclasses.replace(plan.report, estimate_s=per_pass * (relevance + 60 * pairs) + 5,
                                            basis=basis)
    if not plan.generator.skipped:
        recipes["generator"] = fill_generator(plan, out, g_time, sum(r.estimate_s for r in recipes.values()), spent_s)
    return dataclasses.replace(plan, **recipes)


# ==================================================================== the plan


def make_plan(request: FitRequest, info: FolderInfo) -> FitPlan:
    """The plan without estimates: resolution, G's conditioning and each stage's recipe (see the module
    docstring). A given classifier or generator is checked against the folder here."""
    budget, hw = request.budget, request.hardware
    if budget not in BUDGETS:
        raise ValueError(f"--budget: expected one of {', '.join(BUDGETS)}, got {budget!r}")
    if request.finetune_generator and not request.generator:
        raise ValueError("--finetune-generator: give the generator to fine-tune with --generator PATH_OR_PKL")
    user = split_overrides(request.overrides)
    f_res = None
    if request.classifier:
        f_info = read_classifier_info(resolve(request.classifier))
        trained = ((f_info.get("extra") or {}).get("data") or {}).get("resolution")
        classes = (f_info.get("extra") or {}).get("classes")
        if classes is None and f_info["config"].get("num_classes") != len(info.classes):
            raise ConfigError(f"--classifier {request.classifier}: has {f_info['config'].get('num_classes')} classes, "
                              f"{info.root} has {len(info.classes)}")
        check_training_data(f_info, request.classifier, list(info.classes), int(trained or 0))
        f_res = int(trained) if trained else None
    g_res = c_dim = None
    if request.generator:
        G = load_generator(generator_network(request.generator))
        g_res, c_dim = G.img_resolution, G.c_dim
        if c_dim and c_dim != len(info.classes):
            raise ConfigError(f"--generator {request.generator}: a class-conditional G of {c_dim} classes, but "
                              f"{info.root} has {len(info.classes)}")
    resolution, res_why = working_resolution(info, budget, hw, request.resolution, f_res, g_res)
    conditional, cond_why = generator_conditioning(budget, hw, c_dim)
    given = lambda what, path: Recipe(skipped=f"given: {path}", user=tuple(user[what]))  # noqa: E731
    classifier = given("classifier", request.classifier) if request.classifier else \
        dataclasses.replace(classifier_recipe(budget, hw, info), user=tuple(user["classifier"]))
    if request.generator and not request.finetune_generator:
        generator = given("generator", f"{request.generator} (used as is)")
    else:
        generator = dataclasses.replace(
            generator_recipe(budget, hw, conditional, request.generator if request.finetune_generator else ""),
            user=tuple(user["generator"]))
    for stage, recipe in (("classifier", classifier), ("generator", generator)):
        if recipe.skipped and recipe.user:
            raise ValueError(f"{stage}.{recipe.user[0]}: the {stage} is given, not trained; it takes no settings")
    target = request.minutes if request.minutes is not None else TARGET_MINUTES[budget]
    return FitPlan(
        request=request, images=info, resolution=resolution, resolution_why=res_why, conditional=conditional,
        conditional_why=cond_why, target_minutes=target, classifier=classifier, generator=generator,
        viscoin=dataclasses.replace(viscoin_recipe(budget, hw, len(info.classes)), user=tuple(user["viscoin"])),
        evaluate=dataclasses.replace(evaluate_recipe(budget), user=tuple(user["evaluate"])),
        report=dataclasses.replace(report_recipe(budget), user=tuple(user["report"])),
    )


def format_plan(plan: FitPlan, out: Path) -> str:
    """The plan as printed before anything is trained."""
    info, req = plan.images, plan.request
    split = ("its train/ and test/ folders" if info.layout == "train/test"
             else f"a seeded {TEST_FRACTION:.0%} per class (data.split_seed={SPLIT_SEED})")
    low, high = min(info.train_per_class), max(info.train_per_class)
    per_class = f"{low}" if low == high else f"{low}-{high}"
    lines = [
        f"viscoin fit: the plan for {info.root} -> {out}",
        f"  images: {info.num_train + info.num_test} ({info.num_train} train, {info.num_test} test: {split}), "
        f"{per_class} training images per class",
        f"  classes: {len(info.classes)} ({listing(list(info.classes), 6)})",
        f"  typical size: {info.median_width}x{info.median_height} (median of {info.sizes_read} images); "
        f"resolution: {plan.resolution}x{plan.resolution} ({plan.resolution_why})",
        f"  hardware: {req.hardware.name}; budget: {req.budget}"
        + (f" (target {plan.target_minutes:g} min)" if plan.target_minutes else " (no time target)"),
        f"  generator: {'class-conditional' if plan.conditional else 'unconditional'} ({plan.conditional_why})",
        "  stage       recipe",
    ]
    families = {"classifier": "classifier/", "generator": "generator/", "viscoin": "viscoin/", "evaluate": "", "report": ""}
    for stage in STAGES:
        r = plan.recipe(stage)
        if r.skipped:
            text = f"skipped, {r.skipped}"
        else:
            name = f"{families[stage]}{r.config}" if r.config else "defaults"
            text = " ".join([name, *r.overrides] + ([f"+ yours: {' '.join(r.user)}"] if r.user else []))
        estimate = f"  ~{_minutes(r.estimate_s)} ({r.basis})" if r.basis else ""
        lines.append(f"  {stage:<11} {text}{estimate}")
    over = plan.target_minutes and plan.total_s > plan.target_minutes * 60
    lines.append(f"  total: ~{_minutes(plan.total_s)} on this machine (from {TIMED_STEPS[0]} and {TIMED_STEPS[1]} timed "
                 "steps of each training stage)" + (f"; over the {plan.target_minutes:g} min target" if over else ""))
    return "\n".join(lines)


# ==================================================================== DIR and its manifest


def read_manifest(out: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("written_by") != WRITER or not isinstance(data.get("created"), list):
        return None
    return data


def claim_output(out: Path) -> dict[str, Any] | None:
    """The manifest of an earlier `viscoin fit` in `out` (None for an absent or empty folder); a ValueError for a
    folder this command did not create or holding anything its manifest does not list."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    entries = sorted(e.name for e in out.iterdir())
    if not entries:
        return None
    manifest = read_manifest(out)
    if manifest is None:
        raise ValueError(f"--out {out}: not empty and holds no {MANIFEST} (it was not created by `{WRITER}`); "
                         "choose a new or empty folder")
    ours = set(manifest["created"]) | {MANIFEST}
    foreign = [n for n in entries if n not in ours and not any(n.startswith(f".{o}.") and n.endswith(".tmp")
                                                               for o in ours)]
    if foreign:
        raise ValueError(f"--out {out}: holds {listing(foreign, 5)}, which `{WRITER}` did not create there; move "
                         "it away or choose another folder")
    return manifest


def plan_changes(old: dict[str, Any], new: FitPlan) -> list[str]:
    """What differs between a recorded plan's request and folder and the new ones ("key: old -> new")."""
    a = _flat({"request": old.get("request") or {}, "images": old.get("images") or {}})
    b = _flat({"request": new.request.to_dict(), "images": new.images.to_dict()})
    return [f"{k}: {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k != "request.hardware.name"]   # the thread count may change


class Manifest:
    """DIR/.viscoin-fit.json: the plan, the names created in DIR (each listed before it is created), what the
    evaluation and the report were made from, and each stage's time."""

    def __init__(self, out: Path, plan: FitPlan, previous: dict[str, Any] | None) -> None:
        self.out = out
        self.data: dict[str, Any] = {"written_by": WRITER, "plan": plan.to_dict(),
                                     "created": list((previous or {}).get("created", [])),
                                     "made_from": dict((previous or {}).get("made_from", {})),
                                     "seconds": dict((previous or {}).get("seconds", {}))}
        if self.data != previous:                           # a rerun of the same plan leaves the file alone
            self.save()

    def save(self) -> None:
        write_json(self.out / MANIFEST, self.data)

    def create(self, name: str) -> None:
        if name not in self.data["created"]:
            self.data["created"].append(name)
            self.save()

    def record(self, section: str, stage: str, value: Any) -> None:
        self.data[section][stage] = value
        self.save()


# ==================================================================== running the stages


TRAINERS: dict[str, tuple[Callable[..., Any], str, tuple[str, ...]]] = {  # stage -> trainer, final output, command
    "classifier": (train_classifier, "classifier", ("classifier", "train")),
    "generator": (train_generator, "G_ema", ("generator", "train")),
    "viscoin": (train_viscoin, "viscoin", ("train",)),
}


def may_change(cfg: Any) -> set[str]:
    """Config keys that may differ between a finished or interrupted run and its plan (where things are written)."""
    return {f"run.{k}" for k in RESUME_MAY_CHANGE} | set(getattr(type(cfg), "RESUME_MAY_CHANGE", ()))


def run_trainer(stage: str, cfg: Any, resume: bool, overwrite: bool) -> None:
    """Train in this process, or, when the config asks for several devices, as `viscoin ... train` in a child
    process (Fabric then launches one process per device)."""
    train, _, command = TRAINERS[stage]
    if cfg.run.devices * cfg.run.num_nodes == 1:
        train(cfg, resume=resume, overwrite=overwrite)
        return
    with tempfile.TemporaryDirectory(prefix="viscoin-fit-") as tmp:
        path = Path(tmp) / f"{stage}.yaml"
        save_config_yaml(cfg, path)
        flags = ["--resume"] * resume + ["--overwrite"] * overwrite
        code = subprocess.call([sys.executable, "-m", "viscoin", *command, "--config", str(path), *flags])
    if code:
        raise ValueError(f"the {stage} stage failed (exit status {code}); its error is above")


def train_stage(stage: str, cfg: Any, out: Path, manifest: Manifest, overwrite: bool, force: bool) -> str:
    """Reuse, resume or train one stage's run folder; returns what happened ("reused", "resumed", "trained").

    A finished run is reused and an interrupted one resumed when its config is the planned one (up to where
    things are written); a run with another config is refused unless `overwrite` (then trained again, its
    outputs replaced). `force`: an earlier stage was trained in this call, so this one is trained again."""
    run_dir = out / stage
    final = run_dir / TRAINERS[stage][1] / "config.json"
    saved = run_dir / "config.yaml"
    changed = [k for k in changed_settings(saved, cfg) if k not in may_change(cfg)] if saved.is_file() else []
    checkpoint = latest_checkpoint(run_dir / "checkpoints") if run_dir.is_dir() else None
    if (final.is_file() or checkpoint is not None) and changed and not (overwrite or force):
        raise ConfigError(f"{run_dir} holds a {stage} run with other settings ({listing(changed, 6)} differ); "
                          "give --overwrite to train it again")
    if final.is_file() and not changed and not force:
        print(f"      reusing the finished run in {run_dir}", flush=True)
        return "reused"
    manifest.create(stage)
    start = time.perf_counter()
    if checkpoint is not None and not changed and not force:
        print(f"      resuming the interrupted run in {run_dir}", flush=True)
        run_trainer(stage, cfg, resume=True, overwrite=False)
        what = "resumed"
    else:
        started = run_dir.is_dir() and any(run_dir.iterdir())
        run_trainer(stage, cfg, resume=False, overwrite=started)   # started: ours (listed), its outputs replaced
        what = "trained"
    manifest.record("seconds", stage, time.perf_counter() - start)
    return what


def generator_network(path: str) -> Path:
    """The generator `path` names: a `viscoin generator train` run folder's ``G_ema/``, else the path itself."""
    folder = resolve(path)
    return folder / "G_ema" if (folder / "G_ema" / "config.json").is_file() else folder


def _absolute(path: str) -> str:
    """A network's path made absolute (a ``viscoin:NAME`` stays as it is; "" stays "")."""
    return path if not path or is_pretrained_name(path) else str(Path(path).expanduser().resolve())


def model_id(out: Path) -> str:
    return sha256_file(out / "viscoin" / "viscoin" / "weights.safetensors")


def plan_fit(request: FitRequest, info: FolderInfo, out: Path, previous: dict[str, Any] | None, overwrite: bool,
             start: float) -> FitPlan:
    """The plan of `request`, printed: the one recorded in `out` when the request and the folder are the same
    (no new timing), else a new one with its estimates; another plan than the recorded one needs `overwrite`."""
    plan = make_plan(request, info)
    changes = plan_changes(previous.get("plan") or {}, plan) if previous is not None else None
    if changes == []:
        plan = FitPlan.from_dict(previous["plan"], f"{out / MANIFEST}: plan")
        print(f"(the plan recorded in {out / MANIFEST})")
    elif changes and not overwrite:
        raise ValueError(f"--out {out} holds a `{WRITER}` run of another plan ({listing(changes, 6, '; ')}); give "
                         "the same options, --overwrite to run the new plan there (unchanged stages are reused), "
                         "or another --out")
    else:
        print("timing a few steps of each training stage on this machine ...", flush=True)
        plan = estimate_stages(plan, out, time.perf_counter() - start)
    print(format_plan(plan, out), flush=True)
    return plan


def evaluate_stage(plan: FitPlan, out: Path, manifest: Manifest, device: torch.device) -> dict[str, Any]:
    """DIR/evaluation.json: reused when made from this model with these settings, else computed."""
    cfg = evaluate_config(plan)
    made_from = {"model": model_id(out), "config": cfg.to_dict()}
    evaluation = out / EVALUATION_FILE
    if evaluation.is_file() and manifest.data["made_from"].get("evaluate") == made_from:
        print(f"      reusing {evaluation}", flush=True)
        return json.loads(evaluation.read_text())
    manifest.create(EVALUATION_FILE)
    start = time.perf_counter()
    result = evaluate_checkpoint(out / "viscoin" / "viscoin", cfg, device)
    write_json(evaluation, result)
    manifest.record("made_from", "evaluate", made_from)
    manifest.record("seconds", "evaluate", time.perf_counter() - start)
    return result


def report_stage(plan: FitPlan, out: Path, manifest: Manifest, result: dict[str, Any], device: torch.device,
                 overwrite: bool) -> Path:
    """DIR/report/: reused when made from this model and evaluation with these settings, else written."""
    evaluation = out / EVALUATION_FILE
    made_from = {"model": model_id(out), "evaluation": sha256_file(evaluation), "settings": report_settings(plan)}
    index = out / REPORT_DIR / "index.html"
    if index.is_file() and manifest.data["made_from"].get("report") == made_from:
        print(f"      reusing {index}", flush=True)
        return index
    manifest.create(REPORT_DIR)
    start = time.perf_counter()
    index = write_report(out / "viscoin" / "viscoin", out / REPORT_DIR, metrics=result, device=device,
                         metrics_source=str(evaluation), overwrite=overwrite, **report_settings(plan))
    manifest.record("made_from", "report", made_from)
    manifest.record("seconds", "report", time.perf_counter() - start)
    return index


def run_fit(
    folder: str | Path,
    out: str | Path,
    budget: str = "quick",
    minutes: float | None = None,
    resolution: int = 0,
    classifier: str = "",
    generator: str = "",
    finetune_generator: bool = False,
    overrides: Sequence[str] = (),
    device: str = "auto",
    devices: int = 0,
    plan_only: bool = False,
    overwrite: bool = False,
) -> dict[str, Any] | None:
    """`viscoin fit` (see the module docstring); returns the evaluation (None with `plan_only`)."""
    start = time.perf_counter()
    out = Path(out).expanduser().resolve()
    classifier, generator = _absolute(classifier), _absolute(generator)   # recorded by the checkpoints
    if generator and not finetune_generator and generator_network(generator) != resolve(generator):
        generator = str(generator_network(generator))          # a generator run folder: its G_ema
    if minutes is not None and not minutes > 0:
        raise ValueError(f"--minutes: expected > 0, got {minutes}")
    if resolution and (resolution < MIN_RESOLUTION or resolution & (resolution - 1) or resolution > 1024):
        raise ValueError(f"--resolution: expected a power of two from {MIN_RESOLUTION} to 1024, got {resolution}")
    split_overrides(overrides)                                  # bad overrides: refused before anything else
    previous = claim_output(out)
    made = not plan_only and not out.exists()
    if not plan_only:
        out.mkdir(parents=True, exist_ok=True)                  # an --out that cannot be written: refused now
    try:
        info = inspect_folder(folder)
        request = FitRequest(folder=info.root, budget=budget, minutes=minutes, resolution=resolution,
                             classifier=classifier, generator=generator, finetune_generator=finetune_generator,
                             overrides=tuple(overrides), hardware=detect_hardware(device, devices))
        plan = plan_fit(request, info, out, previous, overwrite, start)
    except BaseException:
        if made and not any(out.iterdir()):
            out.rmdir()                                         # leave nothing behind a refusal
        raise
    if plan_only:
        return None

    manifest = Manifest(out, plan, previous)
    steps = [s for s in TRAINED if not plan.recipe(s).skipped]
    total = len(steps) + 2
    force = False                                               # a stage after a (re)trained one is trained again
    for number, stage in enumerate(steps, 1):
        cfg = stage_config(plan, stage, out)
        print(f"[{number}/{total}] {stage}", flush=True)
        force = train_stage(stage, cfg, out, manifest, overwrite, force) != "reused" or force

    device_ = torch.device("cuda" if plan.request.hardware.accelerator == "cuda" else "cpu")
    print(f"[{total - 1}/{total}] evaluating", flush=True)
    result = evaluate_stage(plan, out, manifest, device_)
    print(f"[{total}/{total}] writing the report", flush=True)
    index = report_stage(plan, out, manifest, result, device_, overwrite)
    print()
    print(markdown_tables(result))
    print(summary(result, index, time.perf_counter() - start))
    print(stage_times(plan, manifest.data["seconds"]))
    print(f"  explore the concepts in the browser: viscoin explore {out / 'viscoin' / 'viscoin'}   (needs pip install 'viscoin[app]')")
    return result


def stage_times(plan: FitPlan, seconds: dict[str, float]) -> str:
    """One line: each stage's time against its estimate."""
    parts = []
    for stage in STAGES:
        r = plan.recipe(stage)
        if r.skipped:
            continue
        took = seconds.get(stage)
        parts.append(f"{stage} {_minutes(took) if took is not None else '-'} (est. {_minutes(r.estimate_s)})")
    return "  time per stage: " + ", ".join(parts)
