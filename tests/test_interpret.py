"""viscoin.interpret: relevance on a hand-built Θ, top concepts, most activating samples, λ sweeps,
difference images, and the `viscoin explain` figure (paper section 3.5, appendix E)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CLASSES, active_model, make_folder, save_tiny_setup
from viscoin.data import DataConfig
from viscoin.interpret import (
    ConceptExplainer,
    difference,
    difference_energy,
    reverse_difference,
)
from viscoin.cli.explain import add_explain_arguments, run_explain_command
from viscoin.interpret.plot import cell_size_for
from viscoin.model.passes import Encoded
from viscoin.model.relevance import select_concepts
from viscoin.model import VisCoIN

pytestmark = pytest.mark.usefixtures("one_thread")  # torch on one thread: the CPU is shared


# ---------------------------------------------------------------------------------------------
# Relevance


def hand_built() -> tuple[VisCoIN, torch.Tensor]:
    """Θ with known weights and concept maps with known pooled activations a = maxpool(Φ)."""
    model = active_model()
    with torch.no_grad():
        model.theta.linear.weight.copy_(torch.tensor([[1.0, -2.0, 0.0, 0.5],
                                                      [0.0, 1.0, 1.0, 0.0],
                                                      [0.0, 0.0, 0.0, 0.0]]))
        if model.theta.linear.bias is not None:
            model.theta.linear.bias.zero_()
    a = torch.tensor([[1.0, 1.0, 2.0, 2.0],     # logits (0, 3, 0): ĉ = 1
                      [2.0, 0.5, 0.0, 1.0]])    # logits (1.5, 0.5, 0): ĉ = 0
    phi = torch.rand(2, 4, 3, 3) * 0.4 * a[:, :, None, None]   # below the max ...
    phi[:, :, 1, 2] = a                                         # ... which sits in one cell
    return model, phi


def test_local_relevance_on_a_hand_built_theta():
    model, phi = hand_built()
    assert torch.equal(model.theta.pool(phi), phi.amax(dim=(2, 3)))
    r = model.relevance(phi)
    # r_{j,x} = a_j W_{j,ĉ} / max_l |a_l W_{l,ĉ}|: sample 0 -> (0, 1, 2, 0) / 2; sample 1 -> (2, -1, 0, 0.5) / 2
    expected = torch.tensor([[0.0, 0.5, 1.0, 0.0], [1.0, -0.5, 0.0, 0.25]])
    assert torch.allclose(r, expected, atol=1e-6)
    # top concepts by threshold and by top-k
    sel = select_concepts(r[1], threshold=0.2)
    assert sel["concepts"].tolist() == [0, 3] and torch.allclose(sel["relevance"], torch.tensor([1.0, 0.25]))
    assert select_concepts(r[1], k=1)["concepts"].tolist() == [0]
    assert select_concepts(r[0], k=3, threshold=-1)["concepts"].tolist() == [2, 1, 0]  # ties: lower index first
    assert select_concepts(r[1])["concepts"].tolist() == [0, 3, 2, 1]


def test_global_relevance_and_class_top_concepts():
    model, phi = hand_built()
    explainer = ConceptExplainer(model)
    rel = model.relevance(phi)
    # three samples: the two above with true labels 2 and 2, and the first again with label 0
    phi3 = torch.cat([phi, phi[:1]])
    acts = Encoded(torch.arange(3), torch.tensor([2, 2, 0]), phi3, None, model.predict_from(phi3))
    g = explainer.global_relevance(acts)
    assert g.shape == (3, 4)
    assert torch.allclose(g[2], (rel[0] + rel[1]) / 2) and torch.allclose(g[0], rel[0])
    assert torch.equal(g[1], torch.zeros(4))                  # a class without samples
    top = ConceptExplainer.class_top_concepts(g, 2, threshold=0.3)
    assert top["concepts"].tolist() == [0, 2]                 # (0 + 1) / 2 = 0.5 ties with (1 + 0) / 2: index order
    assert ConceptExplainer.top_pairs(g, 2) == [(0, 2, 1.0), (0, 1, 0.5)]


def test_top_concepts_of_images_match_local_relevance():
    model = active_model()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    explainer = ConceptExplainer(model)
    r = explainer.local_relevance(x)
    out = explainer.top_concepts(x, k=2)
    with torch.no_grad():
        probs = model.predict(x)
    for i, item in enumerate(out):
        assert item["class"] == int(probs[i].argmax())
        assert item["probability"] == pytest.approx(float(probs[i].max()), abs=1e-6)
        assert item["concepts"].tolist() == torch.argsort(r[i], descending=True, stable=True)[:2].tolist()
        assert torch.allclose(item["relevance"], r[i, item["concepts"]])
        assert float(item["relevance"].abs().max()) <= 1 + 1e-6
    single = explainer.top_concepts(x[0], threshold=0.0)
    assert len(single) == 1 and (single[0]["relevance"] > 0).all()


# ---------------------------------------------------------------------------------------------
# Most activating samples


def test_most_activating_on_hand_set_activations():
    a = torch.tensor([[0.1, 5.0], [0.9, 1.0], [0.5, 2.0], [0.9, 0.0], [0.3, 3.0]])
    labels = torch.tensor([0, 1, 0, 1, 2])
    acts = Encoded(torch.tensor([10, 11, 12, 13, 14]), labels, a[:, :, None, None], None, torch.zeros(5, 3))
    explainer = ConceptExplainer(active_model())
    top = explainer.most_activating(acts, concept=0, k=3)
    assert top["indices"].tolist() == [11, 13, 12]           # tie 0.9/0.9: dataset order
    assert torch.allclose(top["activations"], torch.tensor([0.9, 0.9, 0.5]))
    assert top["labels"].tolist() == [1, 1, 0]
    assert explainer.most_activating(acts, 1, k=5, per_class=0)["indices"].tolist() == [10, 12]
    assert explainer.most_activating(acts, 1, k=2, per_class=[1, 2])["indices"].tolist() == [14, 11]
    with pytest.raises(ValueError, match="concept"):
        explainer.most_activating(acts, 2, k=1)


def test_most_activating_on_a_dataset_is_one_cached_pass(tmp_path):
    from viscoin.data import build_dataset

    folder = make_folder(tmp_path / "shapes", per_class=3, size=40)
    data = build_dataset(DataConfig(kind="folder", root=str(folder), resolution=32), "train", augment=False)
    model = active_model()
    explainer = ConceptExplainer(model, batch_size=4)
    acts = explainer.activations(data)
    assert explainer.activations(data) is acts                 # cached
    x = torch.stack([data[i]["image"] for i in range(len(data))])
    pooled = model.pool(acts.phi)
    assert torch.allclose(pooled, explainer.pooled(x), atol=1e-5)
    assert acts.indices.tolist() == list(range(len(data)))
    top = explainer.most_activating(data, 1, k=2)
    assert top["indices"].tolist() == torch.argsort(pooled[:, 1], descending=True)[:2].tolist()


# ---------------------------------------------------------------------------------------------
# λ sweeps and differences


def test_lambda_one_is_the_reconstruction_and_sweeps_batch():
    model = active_model()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    explainer = ConceptExplainer(model)
    sweep = explainer.lambda_sweep(x[0], concept=1, lambdas=(0, 1, 2, 4))
    assert sweep.shape == (4, 3, 32, 32)
    with torch.no_grad():
        rec = model.reconstruct(x)
    assert torch.allclose(sweep[1], rec[0], atol=1e-5)
    batched = explainer.lambda_sweep(x, concept=1, lambdas=(0, 1))
    assert batched.shape == (2, 2, 3, 32, 32)
    assert torch.allclose(batched[:, 1], rec, atol=1e-5) and torch.allclose(batched[0], sweep[:2], atol=1e-5)


def test_sweep_of_a_concept_without_omega_weights_changes_nothing():
    model = active_model()
    j, other = 2, 3
    with torch.no_grad():
        for layer, from_support in zip(model.omega.layers, model.omega.from_support):
            if not from_support:
                layer.weight.view(layer.out_features, 4, 9)[:, j] = 0
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert (model.theta.pool(model.concepts(x)[0])[0, [j, other]] > 0).all()   # both concepts are active
    explainer = ConceptExplainer(model)
    still = explainer.lambda_sweep(x[0], j, (0, 1, 4))
    assert torch.allclose(still[0], still[1], atol=1e-6) and torch.allclose(still[2], still[1], atol=1e-6)
    moved = explainer.lambda_sweep(x[0], other, (0, 1, 4))
    assert (moved[0] - moved[1]).abs().max() > 1e-3 and (moved[2] - moved[1]).abs().max() > 1e-3


def test_difference_reverse_and_energy_on_known_images():
    a = torch.zeros(3, 2, 2)
    b = torch.zeros(3, 2, 2)
    a[0, 0, 0] = 1.0          # red added at (0, 0)
    b[2, 1, 1] = 0.5          # blue removed at (1, 1)
    b[:, 0, 1] = -1.0         # a brighter everywhere at (0, 1)
    d = difference(a, b)
    assert torch.equal(d, a - b) and torch.equal(reverse_difference(a, b), b - a)
    e = difference_energy(a, b)
    assert e.shape == (2, 2)
    assert torch.allclose(e, torch.tensor([[1.0, 3.0], [0.0, 0.25]]))
    assert difference_energy(a[None], b[None]).shape == (1, 2, 2)
    with pytest.raises(ValueError, match="shape"):
        difference(a, b[:, :1])


# ---------------------------------------------------------------------------------------------
# `viscoin explain`


def explain_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_explain_arguments(parser)
    return parser.parse_args(list(argv))


def test_explain_writes_a_readable_figure(tmp_path, capsys):
    ckpt, folder = save_tiny_setup(tmp_path)
    image = folder / CLASSES[1] / "000.png"
    out = tmp_path / "fig.png"
    assert run_explain_command(explain_args(str(ckpt), str(image), "--out", str(out), "--top-k", "3",
                                            "--threshold", "-1", "--device", "cpu")) == 0
    text = capsys.readouterr().out
    assert "predicted" in text and text.count("concept ") == 3 and f"wrote {out}" in text
    fig = Image.open(out)
    cell = cell_size_for(32)
    assert cell == 128
    # 7 columns (λ = 0, 1, 2, 4, Δ, reverse Δ, energy) of cell-wide images, and the input row + 3 concept rows
    assert fig.width >= 7 * cell and fig.height >= 4 * cell
    arr = np.asarray(fig.convert("RGB"))
    assert arr.std() > 10      # not blank
    # The figure exists now: a second run refuses to replace it, unless --overwrite.
    before = out.read_bytes()
    with pytest.raises(ValueError, match="fig.png: exists; give --overwrite"):
        run_explain_command(explain_args(str(ckpt), str(image), "--out", str(out), "--device", "cpu"))
    assert out.read_bytes() == before
    assert run_explain_command(explain_args(str(ckpt), str(image), "--out", str(out), "--top-k", "1",
                                            "--device", "cpu", "--overwrite")) == 0
    assert out.read_bytes() != before


def test_explain_names_a_file_that_is_not_an_image(tmp_path):
    ckpt, _ = save_tiny_setup(tmp_path, per_class=2)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    with pytest.raises(ValueError, match="notes.txt"):
        run_explain_command(explain_args(str(ckpt), str(notes), "--out", str(tmp_path / "x.png"), "--device", "cpu"))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        run_explain_command(explain_args(str(ckpt), str(tmp_path / "missing.png"), "--device", "cpu"))
    with pytest.raises(ValueError, match="--lambdas"):
        run_explain_command(explain_args(str(ckpt), str(notes), "--lambdas", "0,x", "--device", "cpu"))
