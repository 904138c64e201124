"""viscoin.metrics: relevance, faithfulness, consistency, FID, and `viscoin evaluate` end to end (CPU, tiny models)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import ListDataset, make_folder, tiny_model

from viscoin.classifier.model import save_classifier
from viscoin.interpret import ConceptExplainer
from viscoin.model.contract import ConceptModel, Encoding
from viscoin.model.passes import Encoded, agreement_check, encode_dataset
from viscoin.model.relevance import global_relevance
from viscoin.metrics.consistency import FEATURE_LAYER, consistency, relevant_classes
from viscoin.cli.evaluate import add_evaluate_arguments, run_evaluate_command
from viscoin.metrics.evaluate import EvaluateConfig, evaluate_checkpoint, evaluate_model, markdown_tables
from viscoin.metrics.faithfulness import faithfulness, random_masks
from viscoin.utils.fid import ClassifierFeatures, FIDFeatures, InceptionFeatures, fid_from_features
from viscoin.metrics.fidelity import fidelity_pass
from viscoin.model import save_viscoin
from viscoin.stylegan.checkpoint import save_network


pytestmark = pytest.mark.usefixtures("one_thread")  # torch on one thread: the CPU is shared


def set_theta(model, weight: list[list[float]]) -> None:
    with torch.no_grad():
        model.theta.linear.weight.copy_(torch.tensor(weight))
        if model.theta.linear.bias is not None:           # Θ has no bias by default (the paper's g)
            model.theta.linear.bias.zero_()


# -------------------------------------------------------------------- relevance


def test_local_relevance_matches_the_formula():
    model = tiny_model(k=4).eval()
    set_theta(model, [[2.0, -1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    phi = torch.zeros(3, 4, 3, 3)
    phi[0, 0, 1, 1], phi[0, 1, 0, 0] = 1.0, 1.0           # class 0: contributions 2, −1
    phi[1, 3, 2, 2], phi[1, 1, 0, 0] = 3.0, 0.5           # class 2: contribution 3 (concept 1 adds 0)
    # sample 2: all zero -> every contribution 0 -> relevance 0
    assert model.predict_from(phi)[:2].argmax(1).tolist() == [0, 2]
    r = model.relevance(phi)
    expected = torch.tensor([[1.0, -0.5, 0, 0], [0, 0, 0, 1.0], [0, 0, 0, 0]])
    torch.testing.assert_close(r, expected)
    # w.r.t. a given class: class 1 for sample 0 -> only concept 1 contributes
    torch.testing.assert_close(model.relevance(phi[:1], classes=torch.tensor([1])), torch.tensor([[0.0, 1.0, 0, 0]]))
    # the explainer's relevance of images is the model's relevance of their concept maps
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(ConceptExplainer(model).local_relevance(x), model.relevance(model.encode(x).phi))


def test_global_relevance_averages_over_true_labels():
    r = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    g = global_relevance(r, torch.tensor([0, 0, 2]), num_classes=3)
    torch.testing.assert_close(g, torch.tensor([[0.5, 0.5], [0.0, 0.0], [0.5, 0.5]]))


def test_global_relevance_over_a_dataset_equals_per_sample_mean():
    model = tiny_model(k=4).eval()
    ds = ListDataset(torch.rand(5, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 0, 2, 1]))
    g = ConceptExplainer(model, batch_size=2).global_relevance(ds)
    r = model.relevance(model.encode(ds.x).phi)
    assert g.shape == (3, 4)
    torch.testing.assert_close(g[0], r[[0, 2]].mean(0))
    torch.testing.assert_close(g[2], r[3])


# -------------------------------------------------------------------- a model with one concept that matters


def crafted_model(active: int = 0):
    """K=4, 3 classes. Only concept 0 moves the image (Ω's other concept columns are zero);
    Θ makes concept `active` decide class 0 (the others get small weights)."""
    model = tiny_model(k=4).eval()
    with torch.no_grad():
        for layer in model.omega.layers:
            w = layer.weight.view(layer.weight.shape[0], 4, 9)
            w[:, 0] *= 8.0                       # concept 0: strong effect on the latents
            w[:, 1:] = 0.0                       # concepts 1-3: none
    weight = [[0.05] * 4, [0.0] * 4, [0.0] * 4]
    weight[0][active] = 3.0
    set_theta(model, weight)
    return model


def crafted_encoding(model, n: int, seed: int) -> Encoded:
    gen = torch.Generator().manual_seed(seed)
    phi = torch.rand(n, 4, 3, 3, generator=gen) * 0.2
    phi[:, :2] += 1.0 + torch.rand(n, 2, 1, 1, generator=gen)
    support = torch.randn(n, 36, generator=gen) * 0.1
    logits = model.theta.linear(phi.amax(dim=(2, 3))).detach()
    return Encoded(torch.arange(n), torch.zeros(n, dtype=torch.long), phi, support, logits)


def point_f_at_concept_zero(model, enc: Encoded) -> None:
    """Set f's head so that class 0's logit grows along the feature shift concept 0 causes (others 0)."""
    feats = ClassifierFeatures(model.classifier_embedding)
    phi_off = enc.phi.clone()
    phi_off[:, 0] = 0
    with torch.no_grad():
        on = feats(model.generate(enc.phi, enc.support)).mean(0)
        off = feats(model.generate(phi_off, enc.support)).mean(0)
        d = on - off
        model.f.net.fc.weight.zero_()
        model.f.net.fc.bias.zero_()
        model.f.net.fc.weight[0] = 6.0 * d / d.square().sum()
        model.f.net.fc.bias[0] = -model.f.net.fc.weight[0] @ (on + off) / 2   # logit ≈ +3 (on), −3 (off)


def test_faithfulness_separates_a_concept_that_matters_from_one_that_cannot():
    model = crafted_model(active=0)
    enc = crafted_encoding(model, 12, seed=1)
    point_f_at_concept_zero(model, enc)
    res = faithfulness(model, enc, thresholds=(0.1, 0.4), seed=0, batch_size=5)
    assert res["count"] == 12
    for t in ("0.1", "0.4"):
        row = res["thresholds"][t]
        assert row["removed_mean"] == pytest.approx(1.0)       # only concept 0 is above τ
        assert row["median"] > 0.3
        assert row["random_median"] < 0.5 * row["median"]      # a random concept is concept 0 only 1 time in 4
    # Same decision, but made by concept 1, which cannot change the image: FF = 0.
    inert = crafted_model(active=1)
    inert.f.net.fc.load_state_dict(model.f.net.fc.state_dict())
    enc_inert = crafted_encoding(inert, 12, seed=1)
    res_inert = faithfulness(inert, enc_inert, thresholds=(0.1,), seed=0)
    assert abs(res_inert["thresholds"]["0.1"]["median"]) < 1e-6
    # Seeded and independent of the batch size.
    again = faithfulness(model, enc, thresholds=(0.1, 0.4), seed=0, batch_size=12)
    for t in ("0.1", "0.4"):
        assert again["thresholds"][t] == pytest.approx(res["thresholds"][t], abs=1e-5)


def test_random_masks_pick_the_requested_number_of_distinct_concepts():
    counts = torch.tensor([0, 1, 3, 5])
    m = random_masks(counts, 5, torch.Generator().manual_seed(0))
    assert m.sum(1).tolist() == [0, 1, 3, 5]


def test_consistency_separates_a_concept_that_matters_from_one_that_cannot():
    model = crafted_model(active=0)
    train, test = crafted_encoding(model, 12, seed=2), crafted_encoding(model, 12, seed=3)
    res = consistency(model, train, test, lambdas=(2.0,), samples=10, concepts=[0, 1], folds=3,
                      c_grid=(0.1, 10.0), batch_size=16)
    per = res["lambdas"]["2.0"]["per_concept"]
    assert per["0"] >= 0.9            # edits of concept 0 are linearly separable in layer2 features
    assert per["1"] == pytest.approx(0.5)   # concept 1's edits give identical images: chance
    assert res["lambdas"]["2.0"]["count"] == 2 and res["classes"]["0"] == [0]
    assert res["lambdas"]["2.0"]["mean"] == pytest.approx((per["0"] + per["1"]) / 2)


class PixelF(torch.nn.Module):
    """A hand-made f on 1x1 "images" whose channels are (a_0, a_1, 0): logits (0.5 a_0, a_1 + 0.5); its "layer2"
    is the image itself."""

    num_classes = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return torch.stack([0.5 * x[:, 0], x[:, 1] + 0.5], dim=1)

    def stage_output(self, x: torch.Tensor, stage: str) -> torch.Tensor:
        assert stage == FEATURE_LAYER
        return x


class HandModel(ConceptModel):
    """Two concepts; g's weights W [2, 2] (no bias); the decoder writes each concept's pooled activation into one
    channel of a 1x1 image, and records every Φ it is given."""

    family = "hand-made"

    def __init__(self, weight: list[list[float]]) -> None:
        super().__init__(PixelF(), resolution=1)
        self.weight = torch.nn.Parameter(torch.tensor(weight), requires_grad=False)
        self.decoded: list[torch.Tensor] = []

    @property
    def num_concepts(self) -> int:
        return 2

    def encode(self, x: torch.Tensor):
        raise NotImplementedError

    def predictor_weights(self):
        return self.weight, None

    def decode(self, phi: torch.Tensor, support: torch.Tensor | None) -> torch.Tensor:
        self.decoded.append(phi.detach().clone())
        a = self.pool(phi)
        return torch.stack([a[:, 0], a[:, 1], torch.zeros_like(a[:, 0])], dim=1)[:, :, None, None]


def hand_encoding(pooled: list[list[float]], logits_g: list[list[float]], labels: list[int], size: int = 1,
                  ) -> Encoded:
    """Φ [N, 2, size, size] whose maps peak at the given pooled activations (not constant maps when size > 1)."""
    pattern = torch.linspace(1.0, 0.25, size * size).view(size, size)         # its maximum is 1
    phi = torch.tensor(pooled)[:, :, None, None] * pattern
    n = len(pooled)
    return Encoded(torch.arange(n), torch.tensor(labels), phi, None, torch.tensor(logits_g))


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + float(np.exp(-v)))


def test_faithfulness_by_hand_uses_gs_class_and_fs_probabilities():
    """Sample A: g predicts class 0 while f (on the reconstruction) predicts class 1. FF zeroes the concepts relevant
    to g's class ĉ = 0 (concept 0, not concept 1) and reads f's probability of ĉ (not of f's own class)."""
    model = HandModel([[1.0, 0.05], [0.05, 1.0]])
    enc = hand_encoding([[1.0, 1.0], [0.2, 2.0]], logits_g=[[2.0, 0.0], [0.0, 3.0]], labels=[0, 1])
    # f on the reconstructions: A (0.5, 1.5) -> class 1; B (0.1, 2.5) -> class 1 = g's class
    assert model.classify(model.decode(enc.phi, None)).argmax(1).tolist() == [1, 1]
    p0_rec_a, p1_rec_b = sigmoid(0.5 - 1.5), sigmoid(2.5 - 0.1)
    # τ = 0.1: A's relevances for ĉ = 0 are (1, 0.05): concept 0 goes, f's logits (0, 1.5);
    #          B's for ĉ = 1 are (0.005, 1): concept 1 goes, f's logits (0.1, 0.5)
    ff_a, ff_b = p0_rec_a - sigmoid(0.0 - 1.5), p1_rec_b - sigmoid(0.5 - 0.1)
    # τ = 0.001: both of A's concepts go (logits (0, 0.5)); B keeps concept 0 again (0.005 > τ: goes too -> (0, 0.5))
    ff_a_low, ff_b_low = p0_rec_a - sigmoid(0.0 - 0.5), p1_rec_b - sigmoid(0.5 - 0.0)
    res = faithfulness(model, enc, thresholds=(0.1, 0.001), seed=0, batch_size=1)
    assert res["thresholds"]["0.1"]["median"] == pytest.approx((ff_a + ff_b) / 2, abs=1e-6)
    assert res["thresholds"]["0.1"]["mean"] == pytest.approx((ff_a + ff_b) / 2, abs=1e-6)
    assert res["thresholds"]["0.1"]["removed_mean"] == 1.0
    assert res["thresholds"]["0.001"]["median"] == pytest.approx((ff_a_low + ff_b_low) / 2, abs=1e-6)
    assert res["thresholds"]["0.001"]["removed_mean"] == 2.0
    # what the wrong choices would give (so the numbers above tell them apart)
    wrong_class = (1 - p0_rec_a) - (1 - sigmoid(0.0 - 1.5))             # f's class instead of g's for A
    wrong_concept = p0_rec_a - sigmoid(0.5 - 0.5)                       # A's concept 1 removed (relevant to class 1)
    assert len({round(v, 4) for v in (ff_a, wrong_class, wrong_concept)}) == 3
    # the random baseline removes one concept per sample at τ = 0.1: one of the two hand-computed outcomes each
    from viscoin.metrics.faithfulness import faithfulness_scores

    scores = faithfulness_scores(model, enc, thresholds=(0.1,), seed=3)
    a_options = (ff_a, wrong_concept)
    b_options = (ff_b, p1_rec_b - sigmoid(2.5 - 0.0))                   # B without concept 0: logits (0, 2.5)
    assert min(abs(float(scores["random@0.1"][0]) - v) for v in a_options) < 1e-6
    assert min(abs(float(scores["random@0.1"][1]) - v) for v in b_options) < 1e-6


def test_svm_is_fitted_on_the_training_set_and_scored_on_the_test_set():
    """Training set: classes at x < 0 and x > 0 (threshold ~0). Test set: 2 class-0 points at 3, 6 class-1 points at
    5..6. Fitted on the training set, every test point is called class 1: 6/8 = 0.75. The other way round
    (fitted on the test set, threshold ~4, scored on the training set) would give 4/8 = 0.5."""
    from viscoin.metrics.consistency import svm_accuracy

    x_train = np.array([[-2.0], [-1.8], [-1.6], [-1.4], [1.4], [1.6], [1.8], [2.0]])
    y_train = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    x_test = np.array([[3.0], [3.2], [5.0], [5.2], [5.4], [5.6], [5.8], [6.0]])
    y_test = np.array([0, 0, 1, 1, 1, 1, 1, 1])
    acc, _ = svm_accuracy(x_train, y_train, x_test, y_test, c_grid=(0.1, 1.0, 10.0), folds=2)
    assert acc == 0.75
    swapped, _ = svm_accuracy(x_test, y_test, x_train, y_train, c_grid=(0.1, 1.0, 10.0), folds=2)
    assert swapped == 0.5


def test_consistency_edits_phi_k_to_a_constant_lambda_phi_max_and_fits_on_train(monkeypatch):
    """The "on" images of both sets use the training pool's φ_max (3.0), not the test pool's own maximum (0.8)."""
    import viscoin.metrics.consistency as cons

    model = HandModel([[1.0, 0.0], [0.0, 1.0]])                         # g: ĉ = argmax a
    # concept 0 is relevant to class 0 only (r = 1 there, 0 for class 1); the two most activating of each split
    train = hand_encoding([[2.0, 0.5], [1.0, 0.2], [3.0, 0.1], [0.1, 1.5], [0.2, 2.5]], [[0, 0]] * 5,
                          labels=[0, 0, 0, 1, 1], size=3)
    test = hand_encoding([[0.5, 0.3], [0.8, 0.6], [0.1, 0.9], [0.3, 0.05]], [[0, 0]] * 4,
                         labels=[0, 0, 1, 0], size=3)
    calls = []

    def recording_svm(x_train, y_train, x_test, y_test, *args, **kwargs):
        calls.append((x_train, y_train, x_test, y_test))
        return 1.0, 1.0

    monkeypatch.setattr(cons, "svm_accuracy", recording_svm)
    res = consistency(model, train, test, lambdas=(2.0, 4.0), samples=2, concepts=[0], batch_size=3)
    assert res["classes"]["0"] == [0]
    assert res["phi_max"] == {"0": 3.0}                                 # the training pool's (test's own: 0.8)
    assert res["pools"]["0"] == {"train": {"classes": [0], "samples": 2}, "test": {"classes": [0], "samples": 2}}
    decoded = torch.cat(model.decoded)                                  # train's variants, then test's
    rows_tr, rows_te = [2, 0], [1, 0]                                   # top a_0 among class-0 samples
    phi_max = 3.0
    n = 2
    for part, enc, rows in ((decoded[:3 * n], train, rows_tr), (decoded[3 * n:], test, rows_te)):
        assert part.shape == (3 * n, 2, 3, 3)
        original = enc.phi[rows]
        for v, value in enumerate((0.0, 2.0 * phi_max, 4.0 * phi_max)):
            variant = part[v * n:(v + 1) * n]
            assert torch.equal(variant[:, 0], torch.full((n, 3, 3), value))   # constant map λ·φ_max (or 0)
            assert torch.equal(variant[:, 1], original[:, 1])                 # the other concept unchanged
    assert len(calls) == 2                                              # one fit per λ
    for (x_tr, y_tr, x_te, y_te), lam in zip(calls, (2.0, 4.0)):
        # features: f's "layer2" of the decoded image = (a_0', a_1', 0); "on" rows first, then "off" rows
        expected_tr = [[lam * 3.0, 0.1, 0], [lam * 3.0, 0.5, 0], [0, 0.1, 0], [0, 0.5, 0]]
        expected_te = [[lam * 3.0, 0.6, 0], [lam * 3.0, 0.3, 0], [0, 0.6, 0], [0, 0.3, 0]]
        assert np.allclose(x_tr, expected_tr) and y_tr.tolist() == [1, 1, 0, 0]
        assert np.allclose(x_te, expected_te) and y_te.tolist() == [1, 1, 0, 0]


def fill_case():
    """Three classes, g: W = [[1, 0], [0, 1], [0, 0]] (ĉ = argmax a). Concept 0's global relevance: class 0 1.0
    (every sample predicted 0), class 2 1/3 (one of its three training samples is predicted 0, the others 1),
    class 1 0 (all predicted 1). Relevance order 0, 2, 1 (index order would be 0, 1, 2); only class 0 has
    r > 0.5, and it has 2 training samples and 1 test sample, fewer than n = 4."""
    model = HandModel([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    model.num_classes = 3
    train = hand_encoding([[2.0, 0.5], [2.5, 3.0], [0.9, 0.1], [1.0, 0.2], [0.4, 0.6], [0.3, 1.5], [0.7, 0.8]],
                          [[0, 0]] * 7, labels=[0, 1, 2, 0, 2, 1, 2])
    test = hand_encoding([[0.9, 1.2], [0.6, 0.1], [0.5, 0.7], [0.3, 0.2]], [[0, 0]] * 4, labels=[1, 0, 2, 2])
    return model, train, test


def test_consistency_fills_the_pool_from_the_next_most_relevant_classes(monkeypatch):
    """Training: class 0's 2 samples, then class 2 (3 more: 5 >= 4), not class 1 (whose sample with a_0 = 2.5 would
    otherwise be the second most activating); the 4 most activating of that pool: a_0 = 2.0, 1.0, 0.9, 0.7.
    Test: class 0 (1), class 2 (2 more: 3 < 4), class 1 (1 more: 4). Without filling: 2 and 1 samples (skipped)."""
    import viscoin.metrics.consistency as cons

    model, train, test = fill_case()
    g = global_relevance(model.relevance(train.phi), train.labels, 3)
    torch.testing.assert_close(g[:, 0], torch.tensor([1.0, 0.0, 1 / 3]))
    calls = []

    def recording_svm(x_train, y_train, x_test, y_test, *args, **kwargs):
        calls.append((x_train, x_test))
        return 1.0, 1.0

    monkeypatch.setattr(cons, "svm_accuracy", recording_svm)
    res = consistency(model, train, test, lambdas=(2.0,), samples=4, concepts=[0], batch_size=8)
    assert res["classes"]["0"] == [0]                                   # r > 0.5
    assert res["pools"]["0"] == {"train": {"classes": [0, 2], "samples": 4},
                                 "test": {"classes": [0, 2, 1], "samples": 4}}
    assert res["phi_max"] == {"0": 2.0}
    assert res["protocol"]["fill"] is True and res["protocol"]["samples"] == 4
    (x_tr, x_te), = calls
    # "on" rows (φ_0 = 2·2.0), then "off" rows (φ_0 = 0); the second feature is each sample's a_1, most activating first
    assert np.allclose(x_tr, [[4.0, a1, 0] for a1 in (0.5, 0.2, 0.1, 0.8)] + [[0, a1, 0] for a1 in (0.5, 0.2, 0.1, 0.8)])
    assert np.allclose(x_te, [[4.0, a1, 0] for a1 in (1.2, 0.1, 0.7, 0.2)] + [[0, a1, 0] for a1 in (1.2, 0.1, 0.7, 0.2)])
    assert cons.pool_classes(g, train.labels, 0, samples=4, fill=False).tolist() == [0]
    strict = consistency(model, train, test, lambdas=(2.0,), samples=4, concepts=[0], fill=False)
    assert strict["pools"]["0"] == {"train": {"classes": [0], "samples": 2}, "test": {"classes": [0], "samples": 1}}
    assert "0" in strict["skipped"] and strict["protocol"]["fill"] is False and len(calls) == 1
    # enough samples in the relevant classes: nothing is added
    assert cons.pool_classes(g, train.labels, 0, samples=2).tolist() == [0]
    # the classes run out: every class with samples, in relevance order
    assert cons.pool_classes(g, train.labels, 0, samples=100).tolist() == [0, 2, 1]


def test_consistency_svm_has_no_feature_scaler_unless_asked(monkeypatch):
    """One feature on a tiny scale (spread 4e-3) around 1: at C = 1 the unscaled SVM cannot afford the |w| ≈ 1000 it
    would need and calls every test point one class (chance); standardised, the same points separate."""
    import viscoin.metrics.consistency as cons

    x_train = np.array([[1 - 2e-3], [1 - 1.5e-3], [1 - 1e-3], [1 + 1e-3], [1 + 1.5e-3], [1 + 2e-3]])
    y_train = np.array([0, 0, 0, 1, 1, 1])
    x_test, y_test = np.array([[1 - 1.8e-3], [1 - 1.2e-3], [1 + 1.2e-3], [1 + 1.8e-3]]), np.array([0, 0, 1, 1])
    assert cons.svm_accuracy(x_train, y_train, x_test, y_test, c_grid=(1.0,), folds=3)[0] == 0.5
    assert cons.svm_accuracy(x_train, y_train, x_test, y_test, c_grid=(1.0,), folds=3, scaler=False)[0] == 0.5
    assert cons.svm_accuracy(x_train, y_train, x_test, y_test, c_grid=(1.0,), folds=3, scaler=True)[0] == 1.0
    # consistency passes the choice on and records it; off by default, here and in `viscoin evaluate`'s config
    assert EvaluateConfig().consistency_scaler is False and EvaluateConfig().consistency_fill is True
    seen = []
    monkeypatch.setattr(cons, "svm_accuracy", lambda *args, scaler=None, **kwargs: seen.append(scaler) or (1.0, 1.0))
    model, train, test = fill_case()
    for kwargs in ({}, {"scaler": True}):
        res = consistency(model, train, test, lambdas=(2.0,), samples=4, concepts=[0], **kwargs)
        assert res["protocol"]["scaler"] is kwargs.get("scaler", False)
    assert seen == [False, True]


def test_relevant_classes_fall_back_to_top1_and_layer_features_shape():
    g = torch.tensor([[0.6, 0.1], [0.7, 0.3], [0.2, 0.2]])
    assert relevant_classes(g, 0).tolist() == [0, 1]
    assert relevant_classes(g, 1).tolist() == [1]
    model = tiny_model()
    assert model.classifier_stage(torch.zeros(2, 3, 32, 32), FEATURE_LAYER).shape == (2, 128, 4, 4)  # resnet18 layer2


# -------------------------------------------------------------------- FID


class PoolFeatures(FIDFeatures):
    """A tiny feature extractor: 2x2 average pool of the image (12 numbers)."""

    label = "pool2x2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)


def independent_fid(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance with numpy statistics and the eigenvalue form of Tr((Σ₁Σ₂)^{1/2})."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    tr_sqrt = np.sqrt(scipy.linalg.eigvals(s1 @ s2).astype(complex)).real.sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def test_fid_matches_an_independent_computation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 6))
    b = rng.normal(size=(150, 6)) @ rng.normal(size=(6, 6)) * 0.5 + 0.3
    assert fid_from_features(a, b) == pytest.approx(independent_fid(a, b), rel=1e-6)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    # fewer samples than dimensions: singular covariances, still finite
    assert np.isfinite(fid_from_features(rng.normal(size=(5, 12)), rng.normal(size=(5, 12))))


def test_fidelity_pass_fid_with_a_tiny_extractor():
    model = tiny_model().eval()
    ds = ListDataset(torch.rand(9, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 2] * 3))
    out = fidelity_pass(model, ds, batch_size=4, fid_features=PoolFeatures())
    with torch.no_grad():
        rec = model.reconstruct(ds.x)
        pred_g = model.logits(ds.x).argmax(1)
    feats = PoolFeatures()
    assert out["fid"] == pytest.approx(independent_fid(feats(ds.x).double().numpy(), feats(rec).double().numpy()),
                                       rel=1e-5, abs=1e-8)
    assert out["fid_features"] == "pool2x2" and out["count"] == 9
    assert out["mse"] == pytest.approx((rec - ds.x).square().mean().item(), rel=1e-5)
    assert out["accuracy_g"] == pytest.approx((pred_g == ds.y).float().mean().item())


class MeanF(torch.nn.Module):
    """A hand-made f whose logits are (m, 0, −m), m the image's mean: class 0 for a bright image, 2 for a dark one."""

    num_classes = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([m, torch.zeros_like(m), -m], dim=1)


class DecoderModel(ConceptModel):
    """One concept; Φ' carries the image itself and the decoder returns `decoder(x)`: its reconstruction."""

    family = "stub"

    def __init__(self, decoder) -> None:
        super().__init__(MeanF(), resolution=2)
        self.weight = torch.nn.Parameter(torch.tensor([[1.0], [0.0], [-1.0]]), requires_grad=False)
        self.decoder = decoder

    @property
    def num_concepts(self) -> int:
        return 1

    def encode(self, x: torch.Tensor) -> Encoding:
        phi = x.mean(dim=(1, 2, 3)).clamp_min(0)[:, None, None, None]
        return Encoding(self.classify(x), phi, x.flatten(1), self.predict_from(phi))

    def predictor_weights(self):
        return self.weight, None

    def decode(self, phi: torch.Tensor, support: torch.Tensor | None) -> torch.Tensor:
        return self.decoder(support.view(-1, 3, 2, 2))


def probs(m: float) -> list[float]:
    """softmax(m, 0, −m), by hand."""
    e = [np.exp(m), 1.0, np.exp(-m)]
    return [v / sum(e) for v in e]


MEANS = [1.0, 0.5, -0.5, -2.0]                      # f's classes of the inputs: 0, 0, 2, 2


def test_reconstruction_agreement_and_ce_by_hand():
    """f(x̃) against f(x): a decoder returning x agrees on every image and its CE is the entropy of f(x); one
    returning −x reverses f's classes (agreement 0); one returning a bright image agrees on the bright inputs."""
    ds = ListDataset(torch.tensor(MEANS)[:, None, None, None].expand(4, 3, 2, 2).clone(), torch.tensor([0, 0, 2, 2]))
    p = [probs(m) for m in MEANS]
    cases = {
        "identity": (lambda x: x, 1.0, np.mean([-sum(q * np.log(q) for q in pm) for pm in p])),
        "negated": (lambda x: -x, 0.0, np.mean([-sum(pm[c] * np.log(pm[2 - c]) for c in range(3)) for pm in p])),
        "bright": (lambda x: torch.ones_like(x), 0.5,
                   np.mean([-sum(pm[c] * np.log(probs(1.0)[c]) for c in range(3)) for pm in p])),
    }
    for name, (decoder, agreement, ce) in cases.items():
        model = DecoderModel(decoder)
        for out in (fidelity_pass(model, ds, batch_size=3), agreement_check(model, ds, batch_size=3)):
            assert out["reconstruction_agreement"] == pytest.approx(agreement), name
            assert out["reconstruction_ce"] == pytest.approx(ce, rel=1e-5), name
            assert out["count"] == 4 and out["accuracy_f"] == 1.0
    res = evaluate_model(DecoderModel(cases["bright"][0]), ds, ds, EvaluateConfig(
        metrics=("accuracy", "reconstruction"), fid_features="none", lpips=False, progress=False), name="means")
    rec = res["reconstruction"]
    assert rec["reconstruction_agreement"] == 0.5 and rec["reconstruction_ce"] == pytest.approx(cases["bright"][2])
    md = markdown_tables(res)
    assert "| MSE | LPIPS | FID | Rec. same class (%) | Rec. CE |" in md
    assert f"| 50.0 | {cases['bright'][2]:.3f} |" in md and "Does the picture show the right class?" in md
    old = {**res, "reconstruction": {k: v for k, v in rec.items() if not k.startswith("reconstruction_")}}
    assert "Rec. same class" not in markdown_tables(old)                  # evaluations written before it


def test_missing_inception_weights_give_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"weights-inception-2015-12-05-6726825d\.pth.*--fid-features classifier"):
        InceptionFeatures(tmp_path / "nope.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # restored afterwards (torch.hub.set_dir would stick)
    with pytest.raises(FileNotFoundError, match=r"torch hub's cache file .*hub/checkpoints/weights-inception"):
        InceptionFeatures()


def test_inception_features_load_a_local_weights_file(tmp_path, monkeypatch):
    """The standard Inception read from a file (random weights written here: nothing is downloaded)."""
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    with monkeypatch.context() as m:  # build the network once without weights, to get a state dict to save
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), tmp_path / "inception.pth")
    feats = InceptionFeatures(tmp_path / "inception.pth")
    assert feats.label == "Inception"
    assert feats(torch.rand(2, 3, 32, 32) * 2 - 1).shape == (2, 2048)


# -------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("eval")
    data = make_folder(root / "shapes", per_class=6, size=36)
    model = tiny_model(res=32, k=4)
    save_classifier(model.f, root / "f")
    save_network(model.G, root / "G")
    extra = {"data": {"kind": "folder", "root": str(data), "resolution": 32, "test_fraction": 0.5}}
    return save_viscoin(model, root / "run" / "viscoin", root / "f", root / "G", extra=extra)


def test_evaluate_checkpoint_end_to_end(checkpoint, tmp_path):
    cfg = EvaluateConfig(n_faithfulness=5, consistency_samples=4, max_concepts=2, cv_folds=2, svm_c_grid=(1.0,),
                         fid_features="classifier", lpips=False, batch_size=8, progress=False)
    res = evaluate_checkpoint(checkpoint, cfg)
    assert res["dataset"] == "shapes" and res["num_concepts"] == 4
    assert set(res["accuracy"]) == {"g", "f", "agreement", "count"} and res["accuracy"]["count"] == 9
    rec = res["reconstruction"]
    assert rec["fid_features"] == "classifier features" and rec["fid"] >= 0 and rec["lpips"] is None
    assert 0 <= rec["reconstruction_agreement"] <= 1 and rec["reconstruction_ce"] > 0
    assert set(res["faithfulness"]["thresholds"]) == {"0.1", "0.2", "0.4"} and res["faithfulness"]["count"] == 5
    cons = res["consistency"]
    assert set(cons["lambdas"]) == {"2.0", "4.0"} and len(cons["concepts"]) == 2
    # the protocol's choices are recorded: in the config and beside the numbers
    assert res["config"]["consistency_fill"] is True and res["config"]["consistency_scaler"] is False
    assert {k: cons["protocol"][k] for k in ("samples", "fill", "scaler")} == {"samples": 4, "fill": True, "scaler": False}
    assert set(cons["pools"]) == {str(k) for k in cons["concepts"]}
    for k, pool in cons["pools"].items():
        assert pool["train"]["samples"] == 4 and 1 <= pool["test"]["samples"] <= 4 and pool["train"]["classes"]
        assert (k in cons["phi_max"]) != (k in cons["skipped"])
    env = res["environment"]             # what float results depend on beyond code, config and seeds
    assert env["threads"] == torch.get_num_threads() and env["torch"] == torch.__version__
    assert env["cpu"] and isinstance(env["deterministic_algorithms"], bool)
    json.dumps(res)  # JSON-serialisable
    md = markdown_tables(res)
    assert "| f (classifier) |" in md and "| g (VisCoIN) |" in md
    assert "FID (classifier features)" in md and "FF τ=0.1" in md and "Consistency λ=2.0" in md
    assert "Rec. same class (%)" in md
    assert "LPIPS off" in md


def test_evaluate_command(checkpoint, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    out = tmp_path / "r.json"
    args = parser.parse_args([str(checkpoint), "data.test_fraction=0.5", "--out", str(out), "--device", "cpu",
                              "--metrics", "accuracy", "faithfulness", "--n-faithfulness", "4", "--thresholds", "0.2",
                              "--no-progress"])
    assert run_evaluate_command(args) == 0
    res = json.loads(out.read_text())
    assert "reconstruction" not in res and "consistency" not in res and res["faithfulness"]["count"] == 4
    printed = capsys.readouterr().out
    assert "Table 1" in printed and "FF τ=0.2" in printed and str(out) in printed


def test_evaluate_command_records_the_consistency_choices(checkpoint, tmp_path):
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    out = tmp_path / "evaluation.json"
    args = parser.parse_args([str(checkpoint), "--out", str(out), "--device", "cpu", "--metrics", "consistency",
                              "--lambdas", "2", "--consistency-samples", "3", "--max-concepts", "1",
                              "--consistency-scaler", "--consistency-strict", "--no-progress"])
    assert run_evaluate_command(args) == 0
    res = json.loads(out.read_text())
    assert res["config"]["consistency_scaler"] is True and res["config"]["consistency_fill"] is False
    cons = res["consistency"]
    assert cons["protocol"]["scaler"] is True and cons["protocol"]["fill"] is False
    assert cons["protocol"]["samples"] == 3 and "training set" in cons["protocol"]["phi_max"]
    (k,) = cons["concepts"]
    assert sorted(cons["pools"][str(k)]["train"]["classes"]) == cons["classes"][str(k)]  # strict: relevant classes only
    assert str(k) in cons["phi_max"] or str(k) in cons["skipped"]


def test_encode_dataset_matches_the_model():
    model = tiny_model().eval()
    ds = ListDataset(torch.rand(5, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 2, 0, 1]))
    enc = encode_dataset(model, ds, [4, 1, 2], batch_size=2, keep_f=True)
    phi, support = model.concepts(ds.x[[4, 1, 2]])
    torch.testing.assert_close(enc.phi, phi.detach())
    torch.testing.assert_close(enc.support, support.detach())
    assert enc.labels.tolist() == [1, 1, 2] and enc.logits_f.shape == (3, 3)
