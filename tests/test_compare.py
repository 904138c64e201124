"""Concept visualisations of any concept model (activation maximisation, decoded scaled concepts), the
visualisation FID of appendix C.2, `viscoin compare` and the report's comparison page."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import ListDataset, active_model, save_tiny_setup
from viscoin.apps.demo import BASELINES, training_length
from viscoin.cli import main
from viscoin.interpret.explainer import ConceptExplainer
from viscoin.interpret.visualise import (
    AM_BOUND,
    ActivationMaximisationConfig,
    activation_maximisation,
    concept_activation,
    concept_visualisations,
)
from viscoin.metrics.compare import differences, paper_claims, system_names, write_comparison
from viscoin.metrics.evaluate import EvaluateConfig, evaluate_model, markdown_tables
from viscoin.metrics.visualisation_fid import relevant_pairs, visualisation_fid
from viscoin.model.contract import Encoding
from viscoin.model.loading import load_trained
from viscoin.model.passes import Encoded
from viscoin.report.html import COMPARISON, write_comparison_page, write_report
from viscoin.training.config import load_config
from viscoin.utils.config import ConfigError
from viscoin.utils.fid import ClassifierFeatures, fid_from_features
from viscoin.utils.iteration import seeded_subset

pytestmark = pytest.mark.usefixtures("one_thread")

# Few steps, and a TV weight the tiny random f's weak input gradients can beat (FLINT's 80/240 smooth a
# random tiny model's inputs faster than they raise its concepts).
SHORT_AM = ActivationMaximisationConfig(rounds=2, steps_a=4, steps_b=3, tv_a=1.0, tv_b=3.0, lr=0.05)


def smooth_images(n: int, res: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 8, 8, generator=gen) * 2 - 1, size=res, mode="bilinear")


# ---------------------------------------------------------------------------------------------
# Activation maximisation and each family's visualisation


def test_am_config_reaches_the_paper_and_the_code_settings():
    assert ActivationMaximisationConfig().total_steps == 1000                      # the VisCoIN paper
    code = ActivationMaximisationConfig.flint_code()
    assert (code.rounds, code.steps_a, code.steps_b, code.total_steps) == (12, 200, 180, 4560)
    assert AM_BOUND == pytest.approx(2.5 * 2 * 0.226)                              # 2.5 ImageNet σ in [-1, 1] units
    assert code.shift_pixels(224) == 10 and code.shift_pixels(256) == 11 and code.shift_pixels(32) == 1
    with pytest.raises(ConfigError, match="rounds"):
        ActivationMaximisationConfig(rounds=0)
    with pytest.raises(ConfigError, match="at least one step"):
        ActivationMaximisationConfig(steps_a=0, steps_b=0)


def test_activation_maximisation_raises_the_concept_and_stays_in_range():
    model = active_model()
    model.train()
    x0 = smooth_images(4)
    concepts = torch.tensor([0, 1, 2, 3])
    result = activation_maximisation(model, x0, concepts, SHORT_AM)
    rec = result.record
    assert rec["steps"] == SHORT_AM.total_steps == 14 and (rec["rounds"], rec["steps_a"], rec["steps_b"]) == (2, 4, 3)
    assert rec["concepts"] == [0, 1, 2, 3] and rec["lambda_tv"] == [1.0, 3.0] and rec["shift_pixels"] == 1
    with torch.no_grad():
        start = concept_activation(model, SHORT_AM.start(x0), concepts)
        final = concept_activation(model, result.images, concepts)
    torch.testing.assert_close(torch.tensor(rec["initial_activation"]), start)
    torch.testing.assert_close(torch.tensor(rec["final_activation"]), final)
    assert (final > start).all(), (start, final)
    assert result.images.shape == x0.shape and result.images.abs().max() <= 1
    assert model.training                                                       # mode restored
    assert all(p.grad is None for p in model.parameters())                      # gradients reach x only


def test_activation_maximisation_clamps_to_the_image_range_and_counts_steps():
    model = active_model()
    x0 = torch.ones(1, 3, 32, 32)
    cfg = ActivationMaximisationConfig(rounds=1, steps_a=2, steps_b=0, init_scale=1.0, activation_weight=1e4,
                                       range_penalty=0.0, tv_a=0.0, lr=0.5)
    result = activation_maximisation(model, x0[0], 2, cfg)                       # one image [3, R, R]
    assert result.record["steps"] == 2 and result.images.shape == (1, 3, 32, 32)
    assert result.images.min() >= -1 and result.images.max() <= 1


def test_activation_maximisation_is_deterministic_under_a_seed():
    model = active_model()
    x0 = smooth_images(2)
    a = activation_maximisation(model, x0, [1, 3], SHORT_AM)
    b = activation_maximisation(model, x0, [1, 3], SHORT_AM)
    c = activation_maximisation(model, x0, [1, 3], ActivationMaximisationConfig(**{**SHORT_AM.to_dict(), "seed": 5}))
    assert torch.equal(a.images, b.images) and a.record == b.record
    assert not torch.equal(a.images, c.images)                                    # other shifts


def test_activation_maximisation_needs_a_gradient_to_x(monkeypatch):
    model = active_model()
    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda x: Encoding(*(None if t is None else t.detach() for t in encode(x))))
    with pytest.raises(ValueError, match="no gradient w.r.t. x"):
        activation_maximisation(model, smooth_images(1), 0, SHORT_AM)


def test_concept_visualisations_follow_the_family():
    model = active_model()
    x = smooth_images(3)
    concepts = torch.tensor([2, 0, 2])
    vis = concept_visualisations(model, x, concepts, lambda_max=3.0)
    assert vis.kind == "decoder" and vis.record["lambda"] == 3.0 and "λ = 3" in vis.what
    explainer = ConceptExplainer(model)
    for i, j in enumerate(concepts.tolist()):                                    # φ_j × λ_max, decoded
        expected = explainer.lambda_sweep(x[i:i + 1], j, (3.0,))[0, 0].clamp(-1, 1)
        torch.testing.assert_close(vis.images[i], expected)

    model.visualisation = "activation_maximisation"                              # as FLINT declares it
    vis = concept_visualisations(model, x, concepts, am=SHORT_AM, batch_size=2)  # two batches
    assert vis.kind == "activation_maximisation" and "14 steps" in vis.what
    assert vis.record["steps"] == 14 and len(vis.record["final_activation"]) == 3
    first = activation_maximisation(model, x[:2], concepts[:2], SHORT_AM)
    torch.testing.assert_close(vis.images[:2], first.images)

    model.visualisation = "painting"
    with pytest.raises(ValueError, match="painting"):
        concept_visualisations(model, x, concepts)


# ---------------------------------------------------------------------------------------------
# Visualisation FID (appendix C.2)


def hand_built() -> tuple:
    """A tiny VisCoIN whose predictor reads concept c for class c (K = 4, C = 3), and a hand-built training
    encoding: pooled activations chosen so that global relevance (and the MAS) are known."""
    model = active_model()
    with torch.no_grad():
        model.theta.linear.weight.copy_(torch.eye(3, 4))
        if model.theta.linear.bias is not None:
            model.theta.linear.bias.zero_()
    pooled = torch.tensor([
        [3, 1, 1, 0], [2, 0, 1, .5], [5, 1, 0, 0],      # class 0: all predicted 0    -> r(0, 0) = 1
        [0, 2, 1, 0], [1, 4, 0, 0], [3, 1, 0, 0],       # class 1: two predicted 1    -> r(1, 1) = 2/3, r(0, 1) = 1/3
        [0, 1, 3, 0], [4, 0, 1, 0], [2, 1, 1, 0],       # class 2: one predicted 2    -> r(2, 2) = 1/3, r(0, 2) = 2/3
    ], dtype=torch.float32)
    phi = torch.zeros(9, 4, 3, 3)
    phi[:, :, 1, 2] = pooled                                                     # max over space = pooled
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    indices = torch.tensor([11, 3, 7, 0, 14, 5, 9, 2, 12])                       # rows -> dataset indices
    enc = Encoded(indices, labels, phi, torch.zeros(9, 36), torch.zeros(9, 3))
    data = ListDataset(smooth_images(15, seed=1), torch.zeros(15, dtype=torch.long))
    return model, enc, data


def test_visualisation_fid_uses_the_relevant_pairs_most_activating_samples():
    model, enc, data = hand_built()
    features = ClassifierFeatures(model.classifier_embedding)
    out = visualisation_fid(model, enc, data, features, pairs=400, per_pair=2, threshold=0.5)
    # relevant (r > 0.5): (class 0, concept 0), (1, 1), (2, 0); MAS: the class's rows by a_j, largest first
    assert out["relevant_pairs"] == 3 and out["pairs"] == 3 and out["images"] == 6
    assert [(s["class"], s["concept"]) for s in out["selected"]] == [(0, 0), (1, 1), (2, 0)]
    assert [s["relevance"] for s in out["selected"]] == pytest.approx([1, 2 / 3, 2 / 3])
    assert [s["indices"] for s in out["selected"]] == [[7, 11], [14, 0], [2, 12]]   # rows [2, 0], [4, 3], [7, 8]

    # data images = those samples; the other set = the model's visualisations of them
    idx = torch.tensor([7, 11, 14, 0, 2, 12])
    images = data.x[idx]
    vis = concept_visualisations(model, images, torch.tensor([0, 0, 1, 1, 0, 0]), batch_size=64)
    with torch.no_grad():
        expected = fid_from_features(features(images), features(vis.images))
    assert out["fid"] == pytest.approx(expected, rel=1e-6)
    assert out["fid_features"] == "classifier features" and out["visualisation"] == "decoder"


def test_visualisation_fid_draws_a_seeded_subset_of_the_pairs():
    model, enc, data = hand_built()
    features = ClassifierFeatures(model.classifier_embedding)
    out = visualisation_fid(model, enc, data, features, pairs=2, per_pair=1, threshold=0.5, seed=3)
    all_pairs = [(0, 0), (1, 1), (2, 0)]
    expected = [all_pairs[i] for i in seeded_subset(3, 2, 3).tolist()]
    assert [(s["class"], s["concept"]) for s in out["selected"]] == expected and out["relevant_pairs"] == 3
    rel = torch.zeros(3, 4)
    rel[0, 0], rel[1, 1], rel[2, 0] = 1.0, 0.7, 0.6
    assert relevant_pairs(rel, 0.5, 2, 3)["pairs"].tolist() == [list(p) for p in expected]
    none = visualisation_fid(model, enc, data, features, pairs=5, per_pair=1, threshold=0.99)
    assert none["fid"] is None and none["images"] == 1 and "at least 2" in none["skipped"]


def test_evaluate_model_reports_the_visualisation_fid():
    model = active_model()
    data = ListDataset(smooth_images(12, seed=2), torch.tensor([0, 1, 2] * 4))
    cfg = EvaluateConfig(metrics=("visualisation_fid",), fid_features="classifier", relevance_threshold=0.0,
                         vis_fid_pairs=3, batch_size=8, progress=False)
    res = evaluate_model(model, data, data, cfg, name="shapes")
    vis = res["visualisation_fid"]
    assert vis["pairs"] <= 3 and vis["images"] >= 2 and vis["fid"] >= 0 and "visualisation_fid" in res["timings"]
    assert res["config"]["am"]["rounds"] == 10 and res["config"]["vis_fid_pairs"] == 3
    assert "Vis. FID (classifier features)" in markdown_tables(res)
    off = evaluate_model(model, data, data, EvaluateConfig(metrics=("visualisation_fid",), fid_features="none",
                                                           progress=False), name="shapes")
    assert off["visualisation_fid"] == {"skipped": "fid_features=none"}


# ---------------------------------------------------------------------------------------------
# viscoin compare


def evaluation(model: str, acc_g: float, mse: float, vis_fid: float, dataset: str = "CUB", **changes) -> dict:
    """A hand-written `viscoin evaluate` result with distinct numbers."""
    result = {
        "checkpoint": f"runs/{model.lower()}-cub/{model.lower()}", "dataset": dataset, "model": model,
        "num_concepts": 256, "num_classes": 200,
        "data": {"kind": "cub", "root": "/data/CUB", "resolution": 256, "test_fraction": 0.2, "split_seed": 0,
                 "synthetic_per_class": [500, 100], "on_bad_image": "error", "crop_scale": [0.08, 1.0]},
        "config": {"seed": 0, "n_faithfulness": 1000, "batch_size": 64, "progress": True},
        "accuracy": {"g": acc_g, "f": 0.8056, "agreement": 0.9, "count": 5794},
        "reconstruction": {"mse": mse, "lpips": mse * 4, "fid": mse * 100, "fid_features": "Inception"},
        "faithfulness": {"thresholds": {"0.1": {"median": mse * 2, "random_median": 0.03}}},
        "consistency": {"lambdas": {"2.0": {"mean": acc_g + 0.05, "std": 0.1}}},
        "visualisation_fid": {"fid": vis_fid, "fid_features": "Inception", "visualisation": "decoder"},
    }
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            result[section][name] = value
        else:
            result[section] = value
    return result


def write_evaluations(folder: Path, *results: dict) -> list[Path]:
    paths = []
    for i, r in enumerate(results):
        path = folder / f"eval{i}-{r['model']}.json"
        path.write_text(json.dumps(r))
        paths.append(path)
    return paths


def test_compare_tables_come_from_the_right_files(tmp_path):
    files = write_evaluations(tmp_path, evaluation("VisCoIN", 0.7944, 0.161, 11.71),
                              evaluation("FLINT", 0.772, 0.113, 26.55), evaluation("FLAEM", 0.5176, 0.217, 31.0))
    md_path, json_path, md, diffs = write_comparison(files, tmp_path / "out")
    lines = md.splitlines()
    assert "| f (classifier) | 80.56 |" in lines
    assert {"| VisCoIN | 79.44 |", "| FLINT | 77.20 |", "| FLAEM | 51.76 |"} <= set(lines)
    header = next(line for line in lines if line.startswith("| Dataset | System |"))
    assert "FID (Inception)" in header and "Vis. FID (Inception)" in header and "FF τ=0.1" in header
    assert "| CUB | FLINT | 0.1130 | 0.452 | 11.30 | 0.226 (0.030) | 82.2 ± 10.0 | 26.55 |" in lines
    assert "| CUB | VisCoIN | 0.1610 | 0.644 | 16.10 | 0.322 (0.030) | 84.4 ± 10.0 | 11.71 |" in lines
    assert "Differences: none" in md and diffs == []
    data = json.loads(json_path.read_text())
    by_name = {s["name"]: s for s in data["systems"]}
    assert by_name["FLAEM"]["file"] == str(files[2]) and by_name["FLAEM"]["accuracy_g"] == 0.5176
    assert by_name["FLINT"]["visualisation_fid"] == 26.55 and by_name["VisCoIN"]["mse"] == 0.161
    assert data["differences"] == [] and data["written_by"] == "viscoin compare"
    assert md_path.read_text().splitlines()[1:] == lines


def test_compare_tables_show_whether_reconstructions_keep_the_class(tmp_path):
    """How often f classifies a system's reconstructions as their inputs (and the mean γ term without γ): a
    column pair of table 2, explained below it, and in the JSON; '–' for an evaluation written before it."""
    files = write_evaluations(
        tmp_path, evaluation("VisCoIN", 0.79, 0.16, 11.7, reconstruction__reconstruction_agreement=0.625,
                             reconstruction__reconstruction_ce=0.8125),
        evaluation("FLINT", 0.77, 0.11, 26.5, reconstruction__reconstruction_agreement=0.3,
                   reconstruction__reconstruction_ce=1.5),
        evaluation("FLAEM", 0.52, 0.22, 31.0))
    _, json_path, md, _ = write_comparison(files, tmp_path / "out")
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| Dataset | System |"))
    assert "| FID (Inception) | Rec. same class (%) | Rec. CE | FF τ=0.1 |" in header
    assert "| CUB | VisCoIN | 0.1600 | 0.640 | 16.00 | 62.5 | 0.812 | 0.320 (0.030) | 84.0 ± 10.0 | 11.70 |" in lines
    assert "| CUB | FLINT | 0.1100 | 0.440 | 11.00 | 30.0 | 1.500 | 0.220 (0.030) | 82.0 ± 10.0 | 26.50 |" in lines
    assert "| CUB | FLAEM | 0.2200 | 0.880 | 22.00 | – | – | 0.440 (0.030) | 57.0 ± 10.0 | 31.00 |" in lines
    assert any(line.startswith("Does the picture show the right class?") for line in lines)
    by_name = {s["name"]: s for s in json.loads(json_path.read_text())["systems"]}
    assert by_name["VisCoIN"]["reconstruction_agreement"] == 0.625 and by_name["FLINT"]["reconstruction_ce"] == 1.5
    assert by_name["FLAEM"]["reconstruction_agreement"] is None


def test_compare_reports_what_differs():
    results = [evaluation("VisCoIN", 0.79, 0.16, 11.7),
               evaluation("FLINT", 0.77, 0.11, 26.5, data__split_seed=1, accuracy__f=0.81, config__seed=4),
               evaluation("FLAEM", 0.50, 0.22, 31.0, dataset="Stanford Cars", data__crop_scale=[0.5, 1.0])]
    names = system_names(results, ["a", "b", "c"])
    diffs = differences(results, names)
    text = "\n".join(diffs)
    assert "different datasets: CUB (VisCoIN, FLINT), Stanford Cars (FLAEM)" in text
    assert 'CUB: test split differs: data.split_seed (VisCoIN: 0; FLINT: 1)' in text
    assert "CUB: f's test accuracy differs" in text
    assert "evaluation setting seed differs (VisCoIN: 0; FLINT: 4; FLAEM: 0)" in text
    assert "crop_scale" not in text and "batch_size" not in text                # no effect on the test split
    twice = system_names([evaluation("FLINT", 0.7, 0.1, 1.0), evaluation("FLINT", 0.7, 0.1, 1.0)], ["x", "y"])
    assert len(set(twice)) == 2 and all(n.startswith("FLINT (") for n in twice)


def test_compare_command_writes_both_files_and_refuses_foreign_ones(tmp_path, capsys):
    files = write_evaluations(tmp_path, evaluation("VisCoIN", 0.79, 0.16, 11.7),
                              evaluation("FLINT", 0.77, 0.11, 26.5, dataset="CelebA-HQ"))
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, files), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "Table 1" in printed.out and "| VisCoIN | 79.00 | – |" in printed.out
    assert "different datasets" in printed.out and "differ" in printed.err
    assert (out / "comparison.md").is_file() and (out / "comparison.json").is_file()
    assert main(["compare", *map(str, files), "--out", str(out)]) == 0                # its own files: rewritten

    (out / "comparison.md").write_text("my notes\n")
    assert main(["compare", *map(str, files), "--out", str(out)]) == 2
    assert "not written by `viscoin compare`" in capsys.readouterr().err
    assert (out / "comparison.md").read_text() == "my notes\n"
    assert main(["compare", *map(str, files), "--out", str(out), "--overwrite", "--names", "V", "F"]) == 0
    assert "| V | 79.00 | – |" in (out / "comparison.md").read_text()
    assert main(["compare", str(files[0]), "--out", str(out)]) == 2                   # one file: nothing to compare
    (tmp_path / "other.json").write_text("[1]")
    assert main(["compare", str(files[0]), str(tmp_path / "other.json"), "--out", str(out)]) == 2


# ---------------------------------------------------------------------------------------------
# The report's comparison page


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [v for k, v in attrs if k in ("src", "href") and v and not v.startswith(("data:", "#"))]


def test_report_comparison_page_renders(tmp_path):
    ckpt, _ = save_tiny_setup(tmp_path)
    viscoin = load_trained(ckpt)
    other = load_trained(ckpt)
    other.model.visualisation = "activation_maximisation"              # stands in for FLINT
    evals = [evaluation("VisCoIN", 0.79, 0.16, 11.7), evaluation("FLINT", 0.77, 0.11, 26.5)]
    page = write_comparison_page(tmp_path / "report", [viscoin, other], evals, pairs=2, samples=2, am=SHORT_AM)
    doc = page.read_text(encoding="utf-8")
    assert page.name == COMPARISON and "Table 1" in doc and "26.55" not in doc and "26.50" in doc
    assert "activation maximisation of φ_j" in doc and "λ ∈ {0, 1, 2, 4}" in doc and "14 steps" in doc
    parser = Links()
    parser.feed(doc)
    figures = [v for v in parser.links if v.endswith(".png")]
    assert figures and all((page.parent / v).is_file() for v in parser.links if v != "index.html")

    index = write_report(ckpt, tmp_path / "report", trained=viscoin, pairs=1, samples=2, comparison=[other],
                         comparison_metrics=evals, am=SHORT_AM)
    assert f'href="{COMPARISON}"' in index.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="at least 2 systems"):
        write_comparison_page(tmp_path / "report", [viscoin])


def test_paper_claims_say_which_hold_with_the_numbers():
    viscoin = evaluation("VisCoIN", 0.80, 0.16, 11.7)        # lpips .64, fid 16, ff .32, consistency 85%
    flint = evaluation("FLINT", 0.77, 0.11, 26.5)            # lpips .44 (lower than VisCoIN's), fid 11
    flaem = evaluation("FLAEM", 0.52, 0.22, 30.0)
    lines = paper_claims([viscoin, flint, flaem], ["VisCoIN", "FLINT", "FLAEM"])
    text = "\n".join(lines)
    assert len(lines) == 7
    assert lines[0].startswith("accuracy: VisCoIN's g within 2 points of f: holds") and "FLAEM 52.0%" in lines[0]
    assert lines[1].startswith("reconstruction LPIPS lower for VisCoIN than for every baseline: does not hold")
    assert "VisCoIN 0.64, FLINT 0.44, FLAEM 0.88" in lines[1]
    assert lines[2].startswith("reconstruction FID lower for VisCoIN than for every baseline: does not hold")
    assert "faithfulness (median, τ=0.1) of VisCoIN well above random: holds (VisCoIN 0.320 vs random 0.030" in text
    assert "consistency (λ=2.0) higher for VisCoIN than for every baseline: holds (VisCoIN 85.0%, FLINT 82.0%" in text
    assert lines[-1] == ("visualisation FID lower for VisCoIN than for FLINT's activation maximisation: holds "
                         "(VisCoIN 11.7, FLINT 26.5, FLAEM 30.0)")
    worse = evaluation("VisCoIN", 0.70, 0.16, 40.0, consistency={"lambdas": {"2.0": {"mean": 0.5, "std": 0.1}}})
    lines = paper_claims([worse, flint, flaem], ["VisCoIN", "FLINT", "FLAEM"])
    assert "within 2 points of f: does not hold" in lines[0] and "does not hold" in lines[-1]
    assert "higher for VisCoIN than for every baseline: does not hold" in lines[5]
    no_lpips = evaluation("VisCoIN", 0.80, 0.16, 11.7, reconstruction__lpips=None)
    assert "LPIPS lower for VisCoIN than for every baseline: not measured" in paper_claims(
        [no_lpips, flint, flaem], ["VisCoIN", "FLINT", "FLAEM"])[1]


def test_demo_compare_refuses_overrides(capsys):
    assert main(["demo", "--compare", "iterations=5"]) == 2
    assert "--compare runs the shipped configs" in capsys.readouterr().err


def test_demo_compare_says_how_long_each_baseline_trains_in_its_own_unit():
    flint = load_config(BASELINES["flint"], "birds", [], family="flint")
    flaem = load_config(BASELINES["flaem"], "birds", [], family="flaem")
    assert training_length(flint) == "400 steps"
    assert training_length(flaem) == "10 epochs"          # FLAEM counts epochs: iterations is 0
    assert training_length(load_config(BASELINES["flaem"], "birds", ["iterations=7"], family="flaem")) == "7 steps"
