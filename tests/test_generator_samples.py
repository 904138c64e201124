"""A conditional generator's samples measured with f and the attribute probe (`viscoin.metrics.samples`) and
`viscoin generator evaluate`."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from conftest import tiny_G
from viscoin.classifier.model import Classifier, ClassifierConfig, save_classifier
from viscoin.cli import main
from viscoin.data import DataConfig, build_dataset
from viscoin.data import synthetic as syn
from viscoin.metrics.ground_truth import AttributeProbe
from viscoin.metrics.samples import (
    ClassProbe,
    class_spread,
    attribute_groups,
    fit_class_probe,
    group_targets,
    per_class_subset,
    pixel_features,
    sample_metrics,
    sample_table,
)
from viscoin.stylegan import save_network

pytestmark = pytest.mark.usefixtures("one_thread")
C = len(syn.class_table())                       # 12 bird classes


@pytest.fixture(scope="module")
def birds(tmp_path_factory) -> DataConfig:
    """4 training and 2 test images of every bird class, 32x32."""
    return DataConfig(kind="synthetic", root=str(tmp_path_factory.mktemp("birds")), resolution=32,
                      synthetic_per_class=(4, 2))


def narrow_f(num_classes: int = C, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    cfg = ClassifierConfig(arch="resnet18", num_classes=num_classes, pretrained="none", width=8)
    return Classifier(cfg, load_pretrained=False).freeze()


class CodeG(nn.Module):
    """A fake conditional G: a flat image whose first pixel encodes the class it draws (the asked one, but class
    0 is drawn as class 1 when z_0 > 0 and `mistake`), and a last pixel of 3 (out of range: f must see it clamped)."""

    def __init__(self, c_dim: int, mistake: bool = True) -> None:
        super().__init__()
        self.c_dim, self.z_dim, self.mistake = c_dim, 3, mistake
        self.anchor = nn.Parameter(torch.zeros(1))

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1.0,
                noise_mode: str = "random") -> torch.Tensor:
        assert truncation_psi == 1.0 and noise_mode == "const"
        drawn = c.argmax(dim=1)
        if self.mistake:
            drawn = torch.where((drawn == 0) & (z[:, 0] > 0), 1, drawn)
        img = ((drawn.float() + 0.5) / self.c_dim * 2 - 1)[:, None, None, None].repeat(1, 3, 4, 4)
        img[:, :, -1, -1] = 3.0
        return img


class CodeF(nn.Module):
    """A fake f: reads the class from the first pixel; logits 4 for it, 0 elsewhere; a feature map holding the
    attributes it `sees` for that class."""

    def __init__(self, num_classes: int, sees: torch.Tensor | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.sees = torch.zeros(num_classes, 1) if sees is None else sees       # [C, A]
        self.anchor = nn.Parameter(torch.zeros(1))
        self.largest = 0.0

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.largest = max(self.largest, float(x.abs().max()))
        k = ((x[:, 0, 0, 0] + 1) / 2 * self.num_classes).long().clamp(0, self.num_classes - 1)
        return {"map": self.sees[k][:, :, None, None].repeat(1, 1, 2, 2),
                "logits": 4 * nn.functional.one_hot(k, self.num_classes).float()}


# ---------------------------------------------------------------------------------------------
# Agreement


def test_agreement_and_probability_of_a_hand_made_case():
    per_class, seed, c = 10, 3, 5
    f = CodeF(c)
    result = sample_metrics(CodeG(c), f, per_class=per_class, seed=seed, batch_size=7, class_names="abcde")
    n = per_class * c
    z = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed))       # the documented protocol
    wrong = int(((torch.arange(n) % c == 0) & (z[:, 0] > 0)).sum())
    assert 0 < wrong < per_class
    assert f.largest == 1.0                                                      # clamped before f
    assert result["count"] == n and result["num_classes"] == c
    assert result["agreement"] == pytest.approx((n - wrong) / n, abs=1e-7)
    right_p, wrong_p = math.exp(4) / (math.exp(4) + c - 1), 1 / (math.exp(4) + c - 1)
    assert result["mean_probability"] == pytest.approx(((n - wrong) * right_p + wrong * wrong_p) / n, rel=1e-6)
    assert result["per_class_agreement"] == pytest.approx([1 - wrong / per_class, 1, 1, 1, 1], abs=1e-7)
    assert result["per_class_probability"][1] == pytest.approx(right_p, rel=1e-6)
    assert result["worst_class"] == {"class": 0, "name": "a", "agreement": result["per_class_agreement"][0]}
    assert result["probe"] is None
    json.dumps(result)                                                           # plain JSON


def test_agreement_is_that_of_f_on_the_real_images_drawn(birds):
    """A fake G that draws the real test image of the asked class: the agreement is f's accuracy on them."""
    test = build_dataset(birds, "test")
    x = torch.stack([test[i]["image"] for i in range(len(test))])
    y = torch.tensor([test[i]["label"] for i in range(len(test))])
    per_class = 2                                                                # every test image once

    class RealG(CodeG):
        def forward(self, z, c, truncation_psi=1.0, noise_mode="random"):
            asked = c.argmax(dim=1)
            seen = torch.zeros(C, dtype=torch.long)
            rows = []
            for k in asked.tolist():                                             # the next image of class k
                rows.append(int(torch.nonzero(y == k)[(self.calls[k] + seen[k]) % per_class]))
                seen[k] += 1
            self.calls += seen
            return x[rows]

    G = RealG(C)
    G.calls = torch.zeros(C, dtype=torch.long)
    f = narrow_f()
    result = sample_metrics(G, f, per_class=per_class, batch_size=5)
    with torch.no_grad():
        probs = f(x).softmax(dim=1)
    assert result["agreement"] == pytest.approx(float((probs.argmax(dim=1) == y).float().mean()), abs=1e-7)
    assert result["mean_probability"] == pytest.approx(float(probs[torch.arange(len(y)), y].mean()), rel=1e-5)


def test_tiny_generator_shapes_determinism_and_seeds():
    G, f = tiny_G(32, c_dim=C), narrow_f()
    first = sample_metrics(G, f, per_class=2, seed=0, batch_size=10)
    assert set(first) >= {"agreement", "mean_probability", "per_class_agreement", "per_class_probability",
                          "worst_class", "count", "seed", "per_class", "probe"}
    assert first["count"] == 2 * C and len(first["per_class_agreement"]) == len(first["per_class_probability"]) == C
    assert 0 <= first["agreement"] <= 1 and 0 < first["mean_probability"] < 1
    worst = first["worst_class"]
    assert worst["agreement"] == min(first["per_class_agreement"]) and worst["name"] is None
    assert sample_metrics(G, f, per_class=2, seed=0, batch_size=10) == first                  # deterministic
    assert sample_metrics(G, f, per_class=2, seed=0, batch_size=24)["mean_probability"] == pytest.approx(
        first["mean_probability"], abs=1e-5)                                                     # batches don't matter
    assert sample_metrics(G, f, per_class=2, seed=1, batch_size=10)["mean_probability"] != first["mean_probability"]


def test_refusals():
    with pytest.raises(ValueError, match=r"unconditional \(c_dim=0\)"):
        sample_metrics(tiny_G(32), narrow_f(), per_class=1)
    with pytest.raises(ValueError, match=r"draws 4 classes .* classifier has 5"):
        sample_metrics(CodeG(4), CodeF(5), per_class=1)


# ---------------------------------------------------------------------------------------------
# Attribute groups and the probe


NAMES = ["has_color::red", "has_color::blue", "has_pattern::plain", "has_pattern::spots", "has_pattern::stripes",
         "has_beak::long", "has_size::small"]
NAN = float("nan")
VALUES = torch.tensor([                        # 4 classes; beak undecided for class 2; size decided nowhere
    [1, 0, 1, 0, 0, 1, NAN],
    [0, 1, 0, 1, 0, 0, NAN],
    [1, 0, 0, 0, 1, NAN, NAN],
    [0, 1, 1, 0, 0, 0, NAN],
])


def test_attribute_groups_and_targets():
    assert attribute_groups(NAMES + ["Smiling"]) == {"has_color": [0, 1], "has_pattern": [2, 3, 4], "has_beak": [5],
                                                     "has_size": [6], "Smiling": [7]}
    targets = group_targets(VALUES, NAMES)
    assert list(targets) == ["has_color", "has_pattern", "has_beak"]
    assert targets["has_color"][1].tolist() == [0, 1, 0, 1]
    assert targets["has_pattern"][1].tolist() == [0, 1, 2, 0]
    assert targets["has_beak"][0] == [5] and targets["has_beak"][1].tolist() == [1, 0, -1, 0]


def test_probe_group_accuracy_of_a_hand_made_case():
    """f sees every class's values, but spots instead of plain wings on class 3."""
    sees = torch.nan_to_num(VALUES, nan=0.0)
    sees[3, 2:5] = torch.tensor([0.0, 1.0, 0.0])
    f = CodeF(4, sees)
    d = len(NAMES) + 4                                           # pooled features: the 7 attributes, then 4 logits
    weight = torch.cat([10 * torch.eye(len(NAMES)), torch.zeros(4, len(NAMES))]).double()
    probe = AttributeProbe(weight, torch.full((len(NAMES),), -5.0, dtype=torch.float64),
                           torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64))
    result = sample_metrics(CodeG(4, mistake=False), f, per_class=3, probe=ClassProbe(probe, NAMES, VALUES))
    got = result["probe"]["samples"]
    assert got["groups"] == {"has_color": 1.0, "has_pattern": 0.75, "has_beak": 1.0}
    assert got["per_class"] == {"has_color": [1.0] * 4, "has_pattern": [1.0, 1.0, 1.0, 0.0],
                                "has_beak": [1.0, 1.0, None, 1.0]}
    assert got["all_groups"] == 0.75 and got["all_groups_per_class"] == [1.0, 1.0, 1.0, 0.0] and got["count"] == 12
    assert result["probe"]["real_images"] is None
    table = sample_table(result)
    assert "has_pattern" in table and "has_size" not in table and "worst class: 0 class 0: agreement 1.000" in table


def test_class_spread_and_diversity_of_a_hand_made_case():
    """Spread: mean pairwise distance within a class; diversity: the samples' spread over the real images'."""
    feats = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [1.0, 1.0], [2.0, 2.0]])
    assert class_spread(feats, torch.tensor([0, 0, 1, 1, 2]), 4) == [5.0, 0.0, None, None]
    three = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 8.0]])                  # pairs: 6, 8, 10
    assert class_spread(three, torch.zeros(3, dtype=torch.long), 1) == [pytest.approx(8.0)]

    # CodeG draws one image per class: a fully collapsed generator has diversity 0 in every class.
    sees = torch.nan_to_num(VALUES, nan=0.0)
    d = len(NAMES) + 4
    probe = AttributeProbe(torch.zeros(d, len(NAMES), dtype=torch.float64), torch.zeros(len(NAMES), dtype=torch.float64),
                           torch.zeros(d, dtype=torch.float64), torch.full((d,), 2.0, dtype=torch.float64))
    real = [1.0, 2.0, None, 4.0]
    result = sample_metrics(CodeG(4, mistake=False), CodeF(4, sees), per_class=3,
                            probe=ClassProbe(probe, NAMES, VALUES, None, real))
    div = result["diversity"]
    assert div["spread"] == [0.0] * 4 and div["real_spread"] == real
    assert div["per_class"] == [0.0, 0.0, None, 0.0] and div["mean"] == 0.0
    assert "diversity" in sample_table(result)
    # Without the real images' spread there is no ratio; without a probe no diversity at all.
    assert sample_metrics(CodeG(4, mistake=False), CodeF(4, sees), per_class=3,
                          probe=ClassProbe(probe, NAMES, VALUES))["diversity"]["mean"] is None
    assert sample_metrics(CodeG(4), CodeF(4), per_class=2)["diversity"] is None


def test_per_class_subset():
    labels = torch.tensor([0, 1, 0, 2, 0, 1, 0])
    rows = per_class_subset(labels, 2, seed=0)
    assert rows.tolist() == sorted(rows.tolist()) and torch.bincount(labels[rows]).tolist() == [2, 2, 1]
    assert torch.equal(rows, per_class_subset(labels, 2, seed=0))
    assert torch.equal(per_class_subset(labels, 9, seed=1), torch.arange(7))


def test_fit_class_probe_on_the_birds(birds):
    train, test = build_dataset(birds, "train", augment=False), build_dataset(birds, "test")
    f = narrow_f()
    fitted = fit_class_probe(f, train, test, per_class=3, seed=0, batch_size=16)
    assert fitted.attribute_names == syn.ATTRIBUTE_NAMES
    expected = torch.stack([torch.from_numpy(syn.attribute_vector({**row, "body_shape": "round", "size": "small",
                                                                   "beak": "short"}))
                            for row in syn.class_table()])                       # [12, 17]
    defining = [n in syn.CLASS_DEFINING for n in syn.ATTRIBUTE_NAMES]
    assert torch.equal(fitted.class_attributes[:, defining], expected[:, defining])
    assert fitted.class_attributes[:, [not d for d in defining]].isnan().all()
    assert list(group_targets(fitted.class_attributes, fitted.attribute_names)) == [
        "has_body_color", "has_head_color", "has_wing_pattern"]
    ref = fitted.reference
    assert ref["count"] == 2 * C and set(ref["groups"]) == {"has_body_color", "has_head_color", "has_wing_pattern"}
    assert all(0 <= v <= 1 for v in ref["groups"].values())
    assert len(fitted.real_spread) == C and all(v > 0 for v in fitted.real_spread)    # 2 test images per class
    result = sample_metrics(tiny_G(32, c_dim=C), f, per_class=2, probe=fitted)
    assert set(result["probe"]["samples"]["groups"]) == set(ref["groups"]) and result["probe"]["real_images"] == ref
    assert all(r is not None and r >= 0 for r in result["diversity"]["per_class"])


# ---------------------------------------------------------------------------------------------
# viscoin generator evaluate


def test_cli_evaluate_end_to_end(birds, tmp_path, capsys):
    save_network(tiny_G(32, c_dim=C), tmp_path / "G", extra={"data": birds.to_dict()})
    save_classifier(narrow_f(), tmp_path / "f", extra={"classes": syn.class_names(), "data": {"resolution": 32}})
    out = tmp_path / "samples.json"
    argv = ["generator", "evaluate", "--generator", str(tmp_path / "G"), "--classifier", str(tmp_path / "f"),
            "--per-class", "2", "--probe-per-class", "2", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for text in ("agreement", "has_head_color", "all groups", syn.class_names()[5], "probe on real test images (24)",
                 "worst class:", f"wrote {out}"):
        assert text in printed
    saved = json.loads(out.read_text())
    assert saved["count"] == 2 * C and saved["class_names"] == syn.class_names() and saved["data"] == birds.to_dict()
    assert set(saved["probe"]["samples"]["groups"]) == {"has_body_color", "has_head_color", "has_wing_pattern"}

    assert main(argv) == 2                                                       # refuses to overwrite
    assert f"--out {out}: exists; give --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--seed", "1"]) == 0
    assert json.loads(out.read_text())["seed"] == 1


def test_cli_evaluate_without_data_and_refusals(tmp_path, capsys):
    save_network(tiny_G(32, c_dim=C), tmp_path / "G")                            # no extra.data
    save_network(tiny_G(32), tmp_path / "G0")
    save_classifier(narrow_f(), tmp_path / "f")
    save_classifier(narrow_f(3), tmp_path / "f3")
    base = ["generator", "evaluate", "--per-class", "1"]
    assert main([*base, "--generator", str(tmp_path / "G"), "--classifier", str(tmp_path / "f")]) == 0
    printed = capsys.readouterr().out
    assert "attribute probe skipped" in printed and "has_" not in printed and "class 11" in printed
    for args, message in [
        (["--generator", str(tmp_path / "G"), "--classifier", str(tmp_path / "f"), "--data-root", str(tmp_path)],
         "--data-root: the generator"),
        (["--generator", str(tmp_path / "G0"), "--classifier", str(tmp_path / "f")], "unconditional (c_dim=0)"),
        (["--generator", str(tmp_path / "G"), "--classifier", str(tmp_path / "f3")], "has 3 classes"),
        (["--generator", str(tmp_path / "missing"), "--classifier", str(tmp_path / "f")], "--generator: "),
        (["--generator", str(tmp_path / "G"), "--classifier", str(tmp_path / "missing")], "--classifier: "),
    ]:
        assert main([*base, *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_pixel_features_ignore_a_uniform_background_tint_but_not_the_object():
    """The background colour is subtracted: a bird on another background differs only where the bird is."""
    bird = torch.full((1, 3, 32, 32), -0.5)
    block = torch.zeros(1, 3, 32, 32, dtype=torch.bool)
    block[:, :, 8:16, 8:20] = True
    bird[:, 0][block[:, 0]] = 0.9                                               # a red block on grey
    tinted = torch.where(block, bird, torch.tensor([0.25, 0.1, -0.2]).view(1, 3, 1, 1))   # another background
    moved = torch.roll(bird, shifts=(10, 6), dims=(2, 3))
    f_bird, f_tinted, f_moved = (pixel_features(x, size=16) for x in (bird, tinted, moved))
    assert f_bird.shape == (1, 3 * 16 * 16)
    # the background becomes 0; the block keeps its contrast with it
    assert torch.allclose(f_bird[0].view(3, 16, 16)[:, 0], torch.zeros(3, 16))
    red = f_bird[0].view(3, 16, 16)[0, 4:8, 4:10]
    assert torch.allclose(red, torch.full_like(red, 1.4))
    assert torch.allclose(f_tinted[0].view(3, 16, 16)[:, 8:], torch.zeros(3, 8, 16))
    # the tint changes only the block's contrast (24 of 256 pooled pixels); moving the bird changes 48
    pooled = lambda x: torch.nn.functional.adaptive_avg_pool2d(x, 16).flatten(1)   # noqa: E731
    tint = float((f_bird - f_tinted).norm())
    assert tint == pytest.approx((24 * (0.75**2 + 0.6**2 + 0.3**2)) ** 0.5, rel=1e-5)
    assert tint < float((pooled(bird) - pooled(tinted)).norm()) / 3              # without the subtraction
    assert float((f_bird - f_moved).norm()) == pytest.approx(1.4 * 48**0.5, rel=1e-5)
