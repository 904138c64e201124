"""Every metric of the paper (section 4.1, appendices B.3 and C) on a trained concept model (`viscoin evaluate`).

    result = evaluate_checkpoint("runs/viscoin-cub/viscoin", EvaluateConfig(fid_features="classifier"))
    print(markdown_tables(result))

The data config is the one saved with the checkpoint (``extra["data"]``), changed by
``data.KEY=VALUE`` overrides. Test split: accuracy of g and f and their agreement, reconstruction
MSE / LPIPS / FID, whether f classifies each reconstruction as it classifies the input (the share
that agree, and the mean of eq. 4's γ term without γ: `viscoin.metrics.fidelity`), faithfulness
(median FF_x at each τ, with the random baseline). Training and test splits (no augmentation):
consistency (mean ± std over concepts, per λ) and, when the dataset has attribute labels
(synthetic birds, CUB, CelebA-HQ), the ground-truth metrics of `viscoin.metrics.ground_truth`
(concept-attribute alignment, visualisation correctness). Training split: the visualisation FID
of appendix C.2 (`viscoin.metrics.visualisation_fid`). Everything is seeded
(`EvaluateConfig.seed`) and batched; `markdown_tables` lays the numbers out like the paper's
tables 1 and 2. Every model is measured through the concept-model contract
(`viscoin.model.contract`), so VisCoIN and the baselines go through the same code.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from viscoin.data import DataConfig
from viscoin.interpret.visualise import LAMBDA_MAX, ActivationMaximisationConfig
from viscoin.metrics.consistency import DEFAULT_C_GRID, consistency
from viscoin.metrics.faithfulness import faithfulness
from viscoin.metrics.fidelity import fidelity_pass
from viscoin.metrics.ground_truth import SWEEP_EDITS, ground_truth_metrics
from viscoin.metrics.visualisation_fid import visualisation_fid
from viscoin.model.contract import ConceptModel
from viscoin.model.loading import load_trained
from viscoin.model.passes import encode_dataset
from viscoin.model.perceptual import PerceptualDistance, build_perceptual
from viscoin.utils.config import ConfigError, DictConfig
from viscoin.utils.device import environment_info
from viscoin.utils.fid import FIDFeatures, build_fid_features
from viscoin.utils.iteration import seeded_subset

METRICS = ("accuracy", "reconstruction", "faithfulness", "consistency", "ground_truth", "visualisation_fid")
TABLE2_METRICS = ("reconstruction", "faithfulness", "consistency", "visualisation_fid")   # the paper's table 2
DATASET_NAMES = {"cub": "CUB", "cars": "Stanford Cars", "celebahq": "CelebA-HQ", "synthetic": "Synthetic birds"}


@dataclass(frozen=True)
class EvaluateConfig(DictConfig):
    """What `evaluate_model` computes and how (defaults: the paper's protocol, appendix B.3)."""

    metrics: tuple[str, ...] = METRICS                     # subset of METRICS (default: all)
    n_faithfulness: int = 1000                             # random test samples for faithfulness (capped at the test size)
    thresholds: tuple[float, ...] = (0.1, 0.2, 0.4)        # τ of faithfulness
    consistency_lambdas: tuple[float, ...] = (2.0, 4.0)    # λ of consistency (2: main text; higher: appendix C)
    consistency_samples: int = 100                         # samples per set and concept (each gives 2 images)
    consistency_fill: bool = True                          # fill each set to consistency_samples from the next most relevant classes
    consistency_scaler: bool = False                       # StandardScaler before the SVM (not in the paper)
    max_concepts: int = 0                                  # consistency on all concepts (0) or the M most relevant
    relevance_threshold: float = 0.5                       # r_{k,c} above which class c is one of concept k's
    svm_c_grid: tuple[float, ...] = DEFAULT_C_GRID         # C values of the linear SVM
    cv_folds: int = 5                                      # cross-validation folds choosing C
    fid_features: Literal["inception", "classifier", "none"] = "inception"  # FID feature space (none: no FID)
    inception_path: str | None = None                      # FID Inception weights; None -> torch hub's cache
    lpips: bool = True                                     # LPIPS (skipped with a note when VGG16 weights are missing)
    lpips_vgg_path: str | None = None                      # VGG16 weights for LPIPS; None -> torchvision's cache
    batch_size: int = 64                                   # images per forward pass
    seed: int = 0                                          # seeds every random choice
    progress: bool = True                                  # tqdm progress bars
    max_test_samples: int = 0                              # cap on test samples (seeded subset; 0: all)
    max_train_samples: int = 0                             # cap on training samples for relevance/consistency (0: all)
    gt_purity: float = 0.9                                 # ground truth: class-defining = within-class frequency <= 1-p or >= p
    gt_lambdas: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)   # ground truth: λ of the judged sweeps
    gt_concepts: int = 10                                  # ground truth: most relevant concepts judged
    gt_images: int = 16                                    # ground truth: images swept per concept
    gt_min_gain: float = 0.1                               # ground truth: probe gain that makes a sweep correct
    gt_edit: str = "pattern"                               # ground truth: the swept map, λ·φ_k(x*) or λ·φ_max ("constant")
    vis_fid_pairs: int = 400                               # visualisation FID: relevant class-concept pairs drawn (C.2)
    vis_fid_per_pair: int = 3                              # visualisation FID: maximally activating samples per pair
    vis_fid_lambda: float = LAMBDA_MAX                     # visualisation FID: λ of decoder visualisations (VisCoIN's largest)
    am: ActivationMaximisationConfig = ActivationMaximisationConfig()  # visualisation FID: FLINT's activation maximisation

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ConfigError(f"evaluate.metrics: unknown {unknown}; expected some of {list(METRICS)}")
        for name in ("n_faithfulness", "consistency_samples", "batch_size", "vis_fid_pairs", "vis_fid_per_pair"):
            if getattr(self, name) < 1:
                raise ConfigError(f"evaluate.{name}: expected >= 1, got {getattr(self, name)}")
        if self.cv_folds < 2:
            raise ConfigError(f"evaluate.cv_folds: expected >= 2, got {self.cv_folds}")
        if not all(-1 <= t < 1 for t in self.thresholds):
            raise ConfigError(f"evaluate.thresholds: expected values in [-1, 1), got {list(self.thresholds)}")
        if not 0.5 < self.gt_purity <= 1:
            raise ConfigError(f"evaluate.gt_purity: expected 0.5 < purity <= 1, got {self.gt_purity}")
        if len(self.gt_lambdas) < 2 or self.gt_concepts < 1 or self.gt_images < 1:
            raise ConfigError("evaluate.gt_lambdas / gt_concepts / gt_images: expected >= 2 λ values and >= 1 "
                              f"concept and image, got {list(self.gt_lambdas)}, {self.gt_concepts}, {self.gt_images}")
        if self.gt_edit not in SWEEP_EDITS:
            raise ConfigError(f"evaluate.gt_edit: expected one of {list(SWEEP_EDITS)}, got {self.gt_edit!r}")
        if self.fid_features not in ("inception", "classifier", "none"):
            raise ConfigError(f"evaluate.fid_features: expected inception, classifier or none, got {self.fid_features!r}")


def dataset_name(data: DataConfig) -> str:
    """Display name of a dataset: CUB, Stanford Cars, CelebA-HQ, or the folder's name."""
    return DATASET_NAMES.get(data.kind) or Path(data.root).name or data.kind


def _lpips(cfg: EvaluateConfig) -> tuple[PerceptualDistance | None, str | None]:
    """LPIPS-VGG, or (None, why) when off or when its weights are missing and no path was given."""
    if not cfg.lpips:
        return None, "off (lpips=false)"
    try:
        return build_perceptual("lpips", vgg_weights_path=cfg.lpips_vgg_path), None
    except (FileNotFoundError, ImportError) as exc:
        if cfg.lpips_vgg_path is not None:
            raise
        return None, f"skipped: {str(exc).split('. ')[0]} (give --lpips-vgg PATH)"


def evaluate_model(
    model: ConceptModel,
    train_set: Any,          # training split without augmentation (relevance, consistency)
    test_set: Any,           # test split
    cfg: EvaluateConfig = EvaluateConfig(),
    name: str = "dataset",   # dataset name for the tables
) -> dict[str, Any]:
    """All metrics chosen in `cfg.metrics` on a loaded model; a JSON-serialisable dict (see module docstring)."""
    model.eval()
    device = model.device
    result: dict[str, Any] = {"dataset": name, "model": model.family, "num_concepts": model.num_concepts,
                              "num_classes": model.num_classes, "config": cfg.to_dict(), "timings": {},
                              "environment": environment_info(device)}
    timings = result["timings"]
    test_idx = seeded_subset(len(test_set), cfg.max_test_samples, cfg.seed)
    fid: FIDFeatures | None = None
    if cfg.fid_features != "none" and ("reconstruction" in cfg.metrics or "visualisation_fid" in cfg.metrics):
        fid = build_fid_features(cfg.fid_features, model.classifier_embedding, cfg.inception_path).to(device)

    if "accuracy" in cfg.metrics or "reconstruction" in cfg.metrics:
        start = time.perf_counter()
        recon = "reconstruction" in cfg.metrics
        lpips, lpips_note = _lpips(cfg) if recon else (None, None)
        if lpips is not None:
            lpips = lpips.to(device)
        out = fidelity_pass(model, test_set, test_idx, cfg.batch_size, lpips, fid if recon else None, cfg.progress)
        result["accuracy"] = {"g": out["accuracy_g"], "f": out["accuracy_f"], "agreement": out["agreement"],
                              "count": out["count"]}
        if recon:
            result["reconstruction"] = {
                "count": out["count"], "mse": out["mse"],
                "reconstruction_agreement": out["reconstruction_agreement"],
                "reconstruction_ce": out["reconstruction_ce"],
                "lpips": out.get("lpips"), "lpips_name": out.get("lpips_name"), "lpips_note": lpips_note,
                "fid": out.get("fid"), "fid_features": out.get("fid_features"),
            }
        timings["accuracy+reconstruction"] = time.perf_counter() - start

    ground_truth = "ground_truth" in cfg.metrics
    if ground_truth and (getattr(test_set, "attributes", None) is None or getattr(train_set, "attributes", None) is None):
        result["ground_truth"] = {"skipped": "the dataset has no attribute labels"}
        ground_truth = False
    test_enc = train_enc = None
    if "faithfulness" in cfg.metrics or "consistency" in cfg.metrics or ground_truth:
        start = time.perf_counter()
        test_enc = encode_dataset(model, test_set, test_idx, cfg.batch_size, progress=cfg.progress, desc="encode test")
        timings["encode test"] = time.perf_counter() - start

    if "faithfulness" in cfg.metrics:
        assert test_enc is not None
        start = time.perf_counter()
        rows = seeded_subset(len(test_enc), cfg.n_faithfulness, cfg.seed)
        result["faithfulness"] = faithfulness(model, test_enc.select(rows), cfg.thresholds, cfg.seed,
                                              cfg.batch_size, cfg.progress)
        timings["faithfulness"] = time.perf_counter() - start

    vis_fid = "visualisation_fid" in cfg.metrics
    if vis_fid and fid is None:
        result["visualisation_fid"] = {"skipped": "fid_features=none"}
        vis_fid = False
    if "consistency" in cfg.metrics or ground_truth or vis_fid:
        start = time.perf_counter()
        train_idx = seeded_subset(len(train_set), cfg.max_train_samples, cfg.seed)
        train_enc = encode_dataset(model, train_set, train_idx, cfg.batch_size, progress=cfg.progress,
                                   desc="encode train")
        timings["encode train"] = time.perf_counter() - start

    if "consistency" in cfg.metrics:
        assert test_enc is not None and train_enc is not None
        start = time.perf_counter()
        result["consistency"] = consistency(
            model, train_enc, test_enc, cfg.consistency_lambdas, cfg.consistency_samples,
            max_concepts=cfg.max_concepts, relevance_threshold=cfg.relevance_threshold, c_grid=cfg.svm_c_grid,
            folds=cfg.cv_folds, seed=cfg.seed, batch_size=cfg.batch_size, progress=cfg.progress,
            fill=cfg.consistency_fill, scaler=cfg.consistency_scaler,
        )
        timings["consistency"] = time.perf_counter() - start

    if ground_truth:
        assert test_enc is not None and train_enc is not None
        start = time.perf_counter()
        result["ground_truth"] = ground_truth_metrics(
            model, train_set, test_set, train_enc, test_enc, purity=cfg.gt_purity, lambdas=cfg.gt_lambdas,
            top_concepts=cfg.gt_concepts, num_images=cfg.gt_images, min_gain=cfg.gt_min_gain,
            batch_size=cfg.batch_size, progress=cfg.progress, seed=cfg.seed, edit=cfg.gt_edit,
        )
        timings["ground_truth"] = time.perf_counter() - start

    if vis_fid:
        assert train_enc is not None and fid is not None
        start = time.perf_counter()
        result["visualisation_fid"] = visualisation_fid(
            model, train_enc, train_set, fid, pairs=cfg.vis_fid_pairs, per_pair=cfg.vis_fid_per_pair,
            threshold=cfg.relevance_threshold, lambda_max=cfg.vis_fid_lambda, am=cfg.am, seed=cfg.seed,
            batch_size=cfg.batch_size, progress=cfg.progress,
        )
        timings["visualisation_fid"] = time.perf_counter() - start
    return result


def evaluate_checkpoint(
    path: str | Path,                       # a concept-model checkpoint folder (f, G from the recorded paths)
    cfg: EvaluateConfig = EvaluateConfig(),
    device: str | torch.device = "cpu",
    data_overrides: Sequence[str] = (),     # "data.KEY=VALUE" changes to the saved data config
) -> dict[str, Any]:
    """Load a checkpoint and its datasets, run `evaluate_model`; adds checkpoint, data and device to the result."""
    trained = load_trained(path, data_overrides, device)
    test_set, train_set = trained.dataset("test"), trained.dataset("train")
    result = evaluate_model(trained.model, train_set, test_set, cfg, dataset_name(trained.data))
    return {"checkpoint": str(Path(path)), "data": trained.data.to_dict(), "device": str(device), **result}


# ==================================================================== tables


def fmt_number(value: float | None, fmt: str) -> str:
    """`value` in format `fmt`, or "–" when missing."""
    return "–" if value is None else format(value, fmt)


def markdown_tables(results: dict[str, Any] | Sequence[dict[str, Any]]) -> str:
    """Paper-style Markdown: table 1 (accuracy of f and g per dataset), table 2 (fidelity, faithfulness, consistency).

    Accuracies and consistency in %, faithfulness as "median (random baseline)". The FID's feature
    space is named in its column header (or in each cell when the datasets differ); so is the
    visualisation FID's (appendix C.2).
    """
    rows = [results] if isinstance(results, dict) else list(results)
    names = [r.get("dataset", "dataset") for r in rows]
    families = ", ".join(dict.fromkeys(str(r.get("model", "concept model")) for r in rows))
    out: list[str] = []
    if any("accuracy" in r for r in rows):
        out += ["Table 1: test accuracy (%)", "", "| Model | " + " | ".join(names) + " |",
                "|---|" + "---:|" * len(rows)]
        for label, key in (("f (classifier)", "f"), (f"g ({families})", "g"), ("agreement of g with f", "agreement")):
            cells = [fmt_number(100 * r["accuracy"][key], ".2f") if "accuracy" in r else "–" for r in rows]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
    if any(k in r for r in rows for k in TABLE2_METRICS):
        header, cells = table2_columns(rows)
        out += ["Table 2: reconstruction fidelity, faithfulness (median FF_x, random baseline in brackets), "
                "consistency (SVM test accuracy %, mean ± std over concepts), FID of concept visualisations "
                "(appendix C.2)", "",
                "| Dataset | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
        out += [f"| {n} | " + " | ".join(c) + " |" for n, c in zip(names, cells)]
        notes = {r["reconstruction"]["lpips_note"] for r in rows
                 if r.get("reconstruction", {}).get("lpips_note")}
        out += [""] + [f"LPIPS {note}" for note in sorted(notes)]
        out += ["", RECONSTRUCTION_CLASS_NOTE] if has_reconstruction_class(rows) else []
    if any("alignment" in r.get("ground_truth", {}) for r in rows):
        out += ["", "Ground truth: concept-attribute alignment (best ROC-AUC per attribute; captured: AUC >= 0.9), "
                "attribute-probe accuracy, visualisation correctness (share of the most relevant concepts whose "
                "λ sweep raises their attribute's probe probability)", "",
                "| Dataset | Mean AUC (class-defining) | Captured (class-defining) | Mean AUC (all) | "
                "Probe accuracy | Correct sweeps | Mean gain |", "|---|" + "---:|" * 6]
        for n, r in zip(names, rows):
            gt = r.get("ground_truth", {})
            if "alignment" not in gt:
                continue
            cd, al, vis = gt["alignment"]["class_defining"], gt["alignment"]["all"], gt["visualisation"]
            captured = ("–" if cd["captured"] is None
                        else f"{100 * cd['captured']:.0f}% ({cd['captured_count']}/{cd['count']})")
            probe = gt["probe"]["mean_class_defining"]
            out.append(f"| {n} | {fmt_number(cd['mean_auc'], '.3f')} | {captured} | {fmt_number(al['mean_auc'], '.3f')} | "
                       f"{fmt_number(None if probe is None else 100 * probe, '.1f')}% | "
                       f"{fmt_number(None if vis['correct'] is None else 100 * vis['correct'], '.0f')}% | "
                       f"{fmt_number(vis['mean_gain'], '+.3f')} |")
    return "\n".join(out).rstrip() + "\n"


def _fid_column(rows: list[dict[str, Any]], metric: str, title: str) -> tuple[str, list[str]]:
    """Header and cells of an FID column of `metric` ("reconstruction" or "visualisation_fid"): the feature
    space in the header when all rows share one, else in each cell."""
    labels = {r[metric].get("fid_features") for r in rows if r.get(metric, {}).get("fid") is not None} - {None}
    one_label = len(labels) == 1
    cells = []
    for r in rows:
        part = r.get(metric, {})
        cell = fmt_number(part.get("fid"), ".2f")
        if part.get("fid") is not None and not one_label:
            cell += f" ({part.get('fid_features')})"
        cells.append(cell)
    return (f"{title} ({next(iter(labels))})" if one_label else title), cells


RECONSTRUCTION_CLASS_NOTE = (
    "Does the picture show the right class? Rec. same class: the share (%) of test images whose reconstruction "
    "x̃ f classifies as it classifies the input x (argmax f(x̃) = argmax f(x)); Rec. CE: the mean cross-entropy "
    "CE(f(x̃), f(x)) of f's prediction on x̃ against its probabilities on x, the quantity eq. 4's γ term trains "
    "(without the weight γ; its floor is the entropy of f(x), not 0). A low share means the decoded images often "
    "show another class than their inputs, however close their pixels.")


def has_reconstruction_class(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether any result has the reconstruction's class agreement (evaluations before it was added do not)."""
    return any((r.get("reconstruction") or {}).get("reconstruction_agreement") is not None for r in rows)


def table2_columns(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Table 2's header and each result's cells: MSE, LPIPS, FID, the reconstructions' class agreement with
    the inputs and their CE (when any result has them), FF per τ, consistency per λ, and the visualisation
    FID when any result has it."""
    taus = list(dict.fromkeys(t for r in rows for t in r.get("faithfulness", {}).get("thresholds", {})))
    lams = list(dict.fromkeys(lam for r in rows for lam in r.get("consistency", {}).get("lambdas", {})))
    fid_header, fid_cells = _fid_column(rows, "reconstruction", "FID")
    rec_class = has_reconstruction_class(rows)
    header = ["MSE", "LPIPS", fid_header] + (["Rec. same class (%)", "Rec. CE"] if rec_class else [])
    header += [f"FF τ={t}" for t in taus] + [f"Consistency λ={lam}" for lam in lams]
    vis = any("visualisation_fid" in r for r in rows)
    vis_header, vis_cells = _fid_column(rows, "visualisation_fid", "Vis. FID")
    header += [vis_header] if vis else []
    table = []
    for i, r in enumerate(rows):
        rec = r.get("reconstruction", {})
        cells = [fmt_number(rec.get("mse"), ".4f"), fmt_number(rec.get("lpips"), ".3f"), fid_cells[i]]
        if rec_class:
            agree = rec.get("reconstruction_agreement")
            cells += [fmt_number(None if agree is None else 100 * agree, ".1f"),
                      fmt_number(rec.get("reconstruction_ce"), ".3f")]
        ff = r.get("faithfulness", {}).get("thresholds", {})
        cells += [f"{ff[t]['median']:.3f} ({ff[t]['random_median']:.3f})" if t in ff else "–" for t in taus]
        cons = r.get("consistency", {}).get("lambdas", {})
        for lam in lams:
            c = cons.get(lam)
            cells.append("–" if not c or c["mean"] is None else f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f}")
        cells += [vis_cells[i]] if vis else []
        table.append(cells)
    return header, table
