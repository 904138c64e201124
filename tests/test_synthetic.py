"""The synthetic birds (`viscoin.data.synthetic`) and the ground-truth metrics (`viscoin.metrics.ground_truth`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from viscoin.data import DataConfig, build_dataset
from viscoin.data import synthetic as syn
from viscoin.metrics.ground_truth import (
    AttributeProbe,
    class_defining,
    concept_alignment,
    roc_auc_matrix,
    visualisation_correctness,
)
from viscoin.model.passes import Encoded
from viscoin.utils.config import ConfigError


def small(tmp_path, **kw) -> DataConfig:
    return DataConfig(kind="synthetic", root=str(tmp_path), resolution=64, synthetic_per_class=(4, 2), **kw)


# ---------------------------------------------------------------------------------------------
# The dataset


def test_class_table_and_attributes():
    table = syn.class_table()
    assert len(table) == 12 and len({tuple(c.values()) for c in table}) == 12
    assert len(syn.ATTRIBUTE_NAMES) == 17 and len(syn.CLASS_DEFINING) == 11
    heads = [c["head_color"] for c in table]
    assert all(heads.count(h) == 3 for h in syn.HEAD_COLORS)          # each head colour in 3 classes
    v = syn.attribute_vector({"body_color": "blue", "wing_pattern": "spots"})
    assert v.sum() == 2 and v[syn.ATTRIBUTE_NAMES.index("has_body_color::blue")] == 1
    assert v[syn.ATTRIBUTE_NAMES.index("has_wing_pattern::spots")] == 1


def test_drawing_is_deterministic_and_factors_change_pixels():
    a, la, attrs_a = syn.render_split("train", 2, seed=3)
    b, lb, attrs_b = syn.render_split("train", 2, seed=3)
    c, _, _ = syn.render_split("train", 2, seed=4)
    assert la == lb == list(range(12)) * 2
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert np.array_equal(attrs_a, attrs_b)
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    assert a[0].size == (64, 64) and a[0].mode == "RGB"
    # one value per factor; the class decides body colour, head colour and wing pattern
    assert (attrs_a.sum(axis=1) == len(syn.FACTORS)).all()
    for label, row in zip(la, attrs_a):
        for factor in syn.CLASS_FACTORS:
            assert row[syn.ATTRIBUTE_NAMES.index(f"has_{factor}::{syn.class_table()[label][factor]}")] == 1
    # the body colour is what the pixels show: the same nuisance draws with another colour differ
    rng1, rng2 = np.random.default_rng(7), np.random.default_rng(7)
    f = syn.sample_factors(0, np.random.default_rng(1))
    red = np.asarray(syn.draw_bird(f, rng1)).astype(int)
    blue = np.asarray(syn.draw_bird({**f, "body_color": "blue"}, rng2)).astype(int)
    changed = np.abs(red - blue).sum(axis=2) > 60
    assert 0.05 < changed.mean() < 0.6                                  # the body, not the background


def test_build_dataset_generates_once_and_reuses(tmp_path):
    cfg = small(tmp_path)
    train = build_dataset(cfg, "train")
    test = build_dataset(cfg, "test", augment=False)
    assert len(train) == 48 and len(test) == 24 and train.num_classes == 12
    assert train.attribute_names == syn.ATTRIBUTE_NAMES and test.attributes.shape == (24, 17)
    item = test[5]
    assert item["image"].shape == (3, 64, 64) and item["label"] == 5
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    folder = syn.dataset_folder(tmp_path, 0, (4, 2))
    stamp = (folder / "attributes.json").stat().st_mtime_ns
    again = build_dataset(cfg, "test", augment=False)
    assert (folder / "attributes.json").stat().st_mtime_ns == stamp
    assert torch.equal(again[5]["image"], item["image"])
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]       # no temporary folder left
    # 32x32 is an option
    small32 = build_dataset(DataConfig(kind="synthetic", root=str(tmp_path), resolution=32,
                                       synthetic_per_class=(4, 2)), "test")
    assert small32[0]["image"].shape == (3, 32, 32)


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = syn.draw_bird

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 20:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(syn, "draw_bird", failing)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(small(tmp_path), "train")
    assert list(tmp_path.iterdir()) == []


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="synthetic_per_class"):
        DataConfig(kind="synthetic", synthetic_per_class=(0, 2))
    with pytest.raises(ConfigError, match="data.kind"):
        DataConfig(kind="birds")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        build_dataset(DataConfig(kind="synthetic", root=str(tmp_path / "file")), "train")


def test_default_root_follows_the_cache_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("VISCOIN_CACHE", str(tmp_path / "vc"))
    assert syn.default_root() == tmp_path / "vc" / "datasets"
    monkeypatch.delenv("VISCOIN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert syn.default_root() == tmp_path / "xdg" / "viscoin" / "datasets"


# ---------------------------------------------------------------------------------------------
# Ground-truth metrics


def test_roc_auc_matrix_matches_scikit_learn():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (200, 4), generator=gen).float()     # many ties
    scores[:, 3] += torch.rand(200, generator=gen)
    attrs = (torch.rand(200, 3, generator=gen) < 0.3).float()
    attrs[:, 2] = (scores[:, 1] > 2).float()                            # a detectable attribute
    auc = roc_auc_matrix(scores, attrs)
    for a in range(3):
        for k in range(4):
            assert auc[a, k].item() == pytest.approx(roc_auc_score(attrs[:, a], scores[:, k]), abs=1e-6)
    assert auc[2, 1] == pytest.approx(1.0)
    constant = roc_auc_matrix(scores, torch.ones(200, 1))
    assert torch.isnan(constant).all()


def test_class_defining_finds_exactly_the_class_factors():
    _, labels, attrs = syn.render_split("train", 20, seed=0)
    defining = class_defining(torch.from_numpy(attrs), torch.tensor(labels), 12)
    assert [n for n, d in zip(syn.ATTRIBUTE_NAMES, defining) if d] == syn.CLASS_DEFINING


def test_alignment_of_known_concepts():
    gen = torch.Generator().manual_seed(1)
    attrs = (torch.rand(300, 3, generator=gen) < 0.5).float()
    phi = torch.rand(300, 4, 3, 3, generator=gen) * 0.1
    phi[:, 1, 1, 1] += attrs[:, 0]                 # concept 1 detects attribute 0 perfectly
    phi[:, 2, 0, 0] += 0.5 * attrs[:, 1] + 0.8 * torch.rand(300, generator=gen)   # concept 2: attribute 1, noisily
    out = concept_alignment(phi.amax(dim=(2, 3)), attrs, torch.tensor([True, True, False]), ["a0", "a1", "a2"])
    rows = {r["attribute"]: r for r in out["attributes"]}
    assert rows["a0"]["concept"] == 1 and rows["a0"]["auc"] == pytest.approx(1.0)
    assert rows["a1"]["concept"] == 2 and 0.8 < rows["a1"]["auc"] < 1.0
    assert rows["a2"]["auc"] < 0.7                  # nothing detects attribute 2
    cd = out["class_defining"]
    assert cd["count"] == 2 and cd["mean_auc"] == pytest.approx((1.0 + rows["a1"]["auc"]) / 2)
    assert cd["captured_count"] == (1 + (rows["a1"]["auc"] >= 0.9)) and out["all"]["count"] == 3


def test_attribute_probe_learns_linear_attributes():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(400, 6, generator=gen)
    attrs = torch.stack([(x[:, 0] > 0), (x[:, 1] + x[:, 2] > 0.5)], dim=1).float()
    probe = AttributeProbe.fit(x[:300], attrs[:300])
    acc = ((probe.probabilities(x[300:]) > 0.5).float() == attrs[300:]).float().mean(dim=0)
    assert (acc > 0.95).all()


class _CellModel:
    """A stand-in concept model for `visualisation_correctness`: 2 concepts on 3x3 maps, 'decoding' returns
    the maps themselves, and f's features are (concept 0's bottom-right cell, the sum of its other cells)."""

    num_classes = 2
    device = torch.device("cpu")

    def relevance(self, phi, labels):
        return phi.amax(dim=(2, 3))                           # concept 0 fires more: the most relevant

    def decode(self, phi, support):
        return phi

    def classifier_features(self, x):
        cells = x[:, 0].flatten(1)                            # concept 0's 9 cells
        return {"logits": torch.stack([cells[:, 8], cells[:, :8].sum(dim=1)], dim=1)}


def test_visualisation_correctness_sweeps_the_concepts_own_pattern_or_a_constant_map():
    """Concept 0 only ever fires in its bottom-right cell, and the 'decoder' draws the attribute for that
    cell alone and breaks when another cell is on (as an Ω that never saw those cells). The paper's edit
    (λ times the concept's strongest map) raises the attribute; a constant map breaks the picture."""
    n = 8
    phi = torch.zeros(n, 2, 3, 3)
    phi[:4, 0, 2, 2] = torch.tensor([1.0, 2.0, 0.5, 3.0])    # images 0-3 show the attribute, x* = image 3
    phi[:, 1] = 0.1
    enc = Encoded(indices=torch.arange(10, 10 + n), labels=torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), phi=phi,
                  support=None, logits_g=torch.zeros(n, 2))
    attrs = torch.zeros(10 + n, 1)
    attrs[10:14] = 1
    images = type("Images", (), {"attributes": attrs})()
    # P(attribute) = sigmoid(4·(bottom-right − 1) − 50·(sum of the others)): drawn for cell >= ~1.5, alone.
    probe = AttributeProbe(torch.tensor([[4.0], [-50.0]], dtype=torch.float64), torch.tensor([-4.0], dtype=torch.float64),
                           torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    alignment = {"auc": torch.tensor([[1.0, 0.5]]), "attributes": [{"attribute": "has_x"}]}
    lambdas = (0.0, 1.0, 2.0, 4.0)
    out = visualisation_correctness(_CellModel(), enc, enc, images, probe, alignment, lambdas, top_concepts=1,
                                    num_images=3)
    (c,) = out["concepts"]
    assert out["edit"] == "pattern" and c["concept"] == 0 and c["attribute"] == "has_x" and c["images"] == 3
    assert c["pattern"] == [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 3.0]] and c["pattern_source"] == 13
    expected = [float(torch.sigmoid(torch.tensor(4.0 * (lam * 3.0 - 1.0)))) for lam in lambdas]
    assert [c["probability"][lam] for lam in lambdas] == pytest.approx(expected, abs=1e-6)
    assert c["gain"] == pytest.approx(expected[-1] - expected[0], abs=1e-6) and c["correct"] and out["correct"] == 1.0
    const = visualisation_correctness(_CellModel(), enc, enc, images, probe, alignment, lambdas, top_concepts=1,
                                      num_images=3, edit="constant")
    (c,) = const["concepts"]
    assert const["edit"] == "constant" and c["pattern"] == [[3.0] * 3] * 3 and c["pattern_source"] is None
    assert c["probability"][4.0] < 1e-6 and not c["correct"] and const["correct"] == 0.0
    with pytest.raises(ValueError, match="edit: expected one of"):
        visualisation_correctness(_CellModel(), enc, enc, images, probe, alignment, lambdas, edit="mean")
