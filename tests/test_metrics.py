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
from viscoin.model.passes import Encoded, encode_dataset
from viscoin.model.relevance import global_relevance
from viscoin.metrics.consistency import FEATURE_LAYER, consistency, relevant_classes
from viscoin.cli.evaluate import add_evaluate_arguments, run_evaluate_command
from viscoin.metrics.evaluate import EvaluateConfig, evaluate_checkpoint, markdown_tables
from viscoin.metrics.faithfulness import faithfulness, random_masks
from viscoin.utils.fid import ClassifierFeatures, FIDFeatures, InceptionFeatures, fid_from_features
from viscoin.metrics.fidelity import fidelity_pass
from viscoin.model import save_viscoin
from viscoin.stylegan.checkpoint import save_network


pytestmark = pytest.mark.usefixtures("one_thread")  # torch on one thread: the CPU is shared


def set_theta(model, weight: list[list[float]]) -> None:
    with torch.no_grad():
        model.theta.linear.weight.copy_(torch.tensor(weight))
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
    assert set(res["faithfulness"]["thresholds"]) == {"0.1", "0.2", "0.4"} and res["faithfulness"]["count"] == 5
    assert set(res["consistency"]["lambdas"]) == {"2.0", "4.0"} and len(res["consistency"]["concepts"]) == 2
    json.dumps(res)  # JSON-serialisable
    md = markdown_tables(res)
    assert "| f (classifier) |" in md and "| g (VisCoIN) |" in md
    assert "FID (classifier features)" in md and "FF τ=0.1" in md and "Consistency λ=2.0" in md
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


def test_encode_dataset_matches_the_model():
    model = tiny_model().eval()
    ds = ListDataset(torch.rand(5, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 2, 0, 1]))
    enc = encode_dataset(model, ds, [4, 1, 2], batch_size=2, keep_f=True)
    phi, support = model.concepts(ds.x[[4, 1, 2]])
    torch.testing.assert_close(enc.phi, phi.detach())
    torch.testing.assert_close(enc.support, support.detach())
    assert enc.labels.tolist() == [1, 1, 2] and enc.logits_f.shape == (3, 3)
