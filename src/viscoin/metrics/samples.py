"""A class-conditional generator's samples measured with the classifier f and the attribute probe.

VisCoIN's G only helps if it draws what was asked for. Two questions about G's samples of every
class, answered by f (the classifier VisCoIN explains) and by the attribute probe of the
ground-truth metrics (`viscoin.metrics.ground_truth`):

1. **Agreement.** Does f recognise the class G was asked for? ``per_class`` samples of every class
   c = 0..C-1 are drawn: sample i asks for class ``i % C`` (one-hot c), with z drawn as
   ``torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))`` (n = per_class·C),
   truncation ψ = 1, constant noise (``noise_mode="const"``), in batches of ``batch_size``; the
   images are clamped to [-1, 1] and passed through f. Reported: the *agreement* (share of samples
   with argmax f = the asked class), the *mean probability* f gives the asked class (softmax), the
   same per class, and the *worst class* (lowest agreement; the first such on a tie). The result is
   deterministic for a fixed seed (and, for per_class = 21, batch_size = 63, the numbers of the
   shipped-generator check in ``tests/test_demo.py``).

2. **Attributes.** Does G draw the attributes that define the class? Where the data has binary
   attributes named ``group::value`` (CUB's ``has_wing_color::blue``, the synthetic birds'
   ``has_head_color::black``), an attribute *group* is the prefix before ``::`` (a name without one is
   its own group). A `ClassProbe` holds the probe and each class's value of every class-defining
   attribute (`fit_class_probe`: the within-class frequency on a seeded subset of the training
   split is >= purity (1) or <= 1-purity (0), for the attributes `class_defining` selects; NaN
   elsewhere). For a group with several class-defining attributes, a sample counts when the asked
   class has exactly one of them (the class decides the group's value), and the probe is right when
   its most probable attribute within the group is that one; a group with a single class-defining
   attribute is a yes/no question (probability > 0.5). Reported per group: the share of counted
   samples the probe gets right (overall and per class), and the share of samples (of classes that
   decide some group) with every group right. The same numbers on real test images of each class
   (`fit_class_probe`'s ``reference``) tell a probe failure from a generator failure.

3. **Diversity.** Do the samples of a class vary as much as the class's real images, or has G
   collapsed to a few images per class? Each image is average-pooled to 16 x 16 pixels and its
   background colour (the median of its border pixels) is subtracted (`pixel_features`: pose, size,
   shape and the colours against the background count; pixel noise and a uniform tint, such as the
   birds' random background colour, do not); a class's *spread* is
   the mean Euclidean distance over all pairs of its samples, and its *diversity* is that spread
   over the spread of the class's real test images (`fit_class_probe`'s ``real_spread``). 1 means
   as varied as the data; near 0, one image drawn again and again. Reported per class and the mean
   over classes, when the real images are known (with a probe fitted with a test split).

On the synthetic birds the groups are ``has_body_color``, ``has_head_color`` and
``has_wing_pattern``; the class decides all three.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from viscoin.metrics.ground_truth import (
    AttributeProbe,
    class_defining,
    class_frequencies,
    dataset_features,
    pooled_features,
)
from viscoin.utils.images import pixel_features
from viscoin.utils.iteration import batches, load_images

GROUP_SEPARATOR = "::"


class ClassProbe(NamedTuple):
    """The attribute probe and what it is asked about each class."""

    probe: AttributeProbe                # on `pooled_features` of f's features
    attribute_names: list[str]           # [A], e.g. "has_head_color::black"
    class_attributes: torch.Tensor       # [C, A]: 1 / 0 the class's value of an attribute, NaN: not decided
    reference: dict[str, Any] | None = None   # `group_accuracy` of the probe on real test images
    real_spread: list[float | None] | None = None   # [C] `class_spread` of the real test images' `pixel_features`


# ==================================================================== attribute groups


def attribute_groups(names: Sequence[str]) -> dict[str, list[int]]:
    """Columns of each attribute group, in order of first appearance: the name's prefix before ``::``
    (``"has_head_color::black"`` -> ``"has_head_color"``; a name without ``::`` is its own group)."""
    groups: dict[str, list[int]] = {}
    for a, name in enumerate(names):
        groups.setdefault(name.split(GROUP_SEPARATOR)[0], []).append(a)
    return groups


def group_targets(class_attributes: torch.Tensor, names: Sequence[str]) -> dict[str, tuple[list[int], torch.Tensor]]:
    """Per group with a decided attribute: its decided columns and each class's target [C] (long).

    Several columns: the target is the position (in the columns) of the one the class has, -1 when the class
    does not have exactly one of them decided as 1 and the others as 0. One column: 1 / 0 (present / absent),
    -1 when undecided. Groups no class decides are left out."""
    out: dict[str, tuple[list[int], torch.Tensor]] = {}
    for group, columns in attribute_groups(names).items():
        cols = [a for a in columns if not class_attributes[:, a].isnan().all()]
        if not cols:
            continue
        values = class_attributes[:, cols]                                      # [C, G]
        if len(cols) == 1:
            target = torch.nan_to_num(values[:, 0], nan=-1.0).long()            # [C]
        else:
            ones = values == 1
            decided = (ones | (values == 0)).all(dim=1) & (ones.sum(dim=1) == 1)
            target = torch.where(decided, ones.long().argmax(dim=1), -1)        # [C]
        if (target >= 0).any():
            out[group] = (cols, target)
    return out


def group_accuracy(
    probabilities: torch.Tensor,         # the probe's P(attribute) [N, A]
    labels: torch.Tensor,                # the class of each sample (asked or true) [N]
    class_attributes: torch.Tensor,      # [C, A] (see `ClassProbe`)
    names: Sequence[str],                # [A]
) -> dict[str, Any]:
    """Does the probe see each sample's class values? See the module docstring (2.); JSON-serialisable.

    ``groups``: per group, the share right among the counted samples; ``per_class``: the same per class (None
    where the class does not decide the group); ``all_groups``: the share of samples whose class decides some
    group with all its decided groups right (None when there are none), ``all_groups_per_class`` the same per
    class; ``count``: the samples."""
    num_classes = class_attributes.shape[0]
    labels = labels.long()
    counted_any = torch.zeros(len(labels), dtype=torch.bool)                   # [N]
    all_right = torch.ones(len(labels), dtype=torch.bool)                      # [N]
    groups: dict[str, float] = {}
    per_class: dict[str, list[float | None]] = {}
    for group, (cols, target) in group_targets(class_attributes, names).items():
        probs = probabilities[:, cols]                                          # [N, G]
        predicted = (probs[:, 0] > 0.5).long() if len(cols) == 1 else probs.argmax(dim=1)   # [N]
        wanted = target[labels]                                                 # [N]
        counted = wanted >= 0
        right = predicted == wanted
        groups[group] = _share(right[counted])
        per_class[group] = [_share(right[counted & (labels == c)]) if bool(target[c] >= 0) else None
                            for c in range(num_classes)]
        counted_any |= counted
        all_right &= right | ~counted
    return {"groups": groups, "per_class": per_class, "all_groups": _share(all_right[counted_any]),
            "all_groups_per_class": [_share(all_right[counted_any & (labels == c)]) for c in range(num_classes)],
            "count": len(labels)}


def class_spread(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """[C]: the mean Euclidean distance over all pairs of rows of `features` [N, D] of each class (`labels`
    [N]); None for a class with fewer than two rows."""
    out: list[float | None] = []
    for c in range(num_classes):
        x = features[labels == c].double()                                      # [n_c, D]
        n = x.shape[0]
        out.append(float(torch.pdist(x).mean()) if n >= 2 else None)          # n(n-1)/2 distances
    return out


def _share(flags: torch.Tensor) -> float | None:
    """Mean of a boolean tensor; None when it is empty."""
    return float(flags.float().mean()) if flags.numel() else None


# ==================================================================== the probe


def per_class_subset(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Up to `per_class` rows of every class (seeded choice), sorted: [n]."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen)                          # [N]
    shuffled = labels[order]
    rank = torch.zeros(len(labels), dtype=torch.long)                           # position within its class
    for c in shuffled.unique():
        mine = shuffled == c
        rank[mine] = torch.arange(int(mine.sum()))
    return order[rank < per_class].sort().values


def _labels(dataset: Any) -> torch.Tensor:
    """Labels [N] of an `ImageDataset` without reading its images."""
    return torch.tensor([label for _, label in dataset.samples], dtype=torch.long)


@torch.no_grad()
def fit_class_probe(
    f: Any,                              # the classifier (`Classifier`), in eval mode
    train_set: Any,                      # training split (`ImageDataset`), no augmentation, with attributes
    test_set: Any | None = None,         # test split with attributes: the probe's reference on real images
    per_class: int = 100,                # images of every class to fit on (and to measure the reference on)
    purity: float = 0.9,                 # `class_defining`'s purity, also deciding each class's values
    seed: int = 0,                       # seeds the choice of images
    batch_size: int = 64,
) -> ClassProbe:
    """The `AttributeProbe` on f's `pooled_features` of up to `per_class` training images of every class, each
    class's values of the class-defining attributes (on the same images) and, with `test_set`, the probe's
    `group_accuracy` on up to `per_class` test images of every class (their true classes as labels)."""
    if train_set.attributes is None:
        raise ValueError("fit_class_probe: the training split has no attribute labels")
    device = next(f.parameters()).device
    num_classes = train_set.num_classes
    names = list(train_set.attribute_names)
    labels = _labels(train_set)
    rows = per_class_subset(labels, per_class, seed)                            # [n]
    attrs = train_set.attributes[rows]                                          # [n, A]
    probe = AttributeProbe.fit(dataset_features(f.features, train_set, rows, batch_size, device), attrs)
    freq = class_frequencies(attrs, labels[rows], num_classes)                  # [C, A]
    values = torch.full_like(freq, float("nan"))
    values[freq >= purity] = 1.0
    values[freq <= 1 - purity] = 0.0
    values[:, ~class_defining(attrs, labels[rows], num_classes, purity)] = float("nan")
    reference, real_spread = None, None
    if test_set is not None:
        test_labels = _labels(test_set)
        test_rows = per_class_subset(test_labels, per_class, seed)
        feats = dataset_features(f.features, test_set, test_rows, batch_size, device)
        reference = group_accuracy(probe.probabilities(feats), test_labels[test_rows], values, names)
        pixels = torch.cat([pixel_features(load_images(test_set, test_rows[sl])[0])
                            for sl in batches(len(test_rows), batch_size)])     # [n, 768]
        real_spread = class_spread(pixels, test_labels[test_rows], num_classes)
    return ClassProbe(probe, names, values, reference, real_spread)


# ==================================================================== the samples


@torch.no_grad()
def sample_metrics(
    G: Any,                              # class-conditional generator (`Generator`, c_dim = C)
    f: Any,                              # classifier (`Classifier`, C classes), in eval mode
    *,
    per_class: int = 50,                 # samples of every class
    seed: int = 0,                       # seeds z
    batch_size: int = 64,
    probe: ClassProbe | None = None,     # also measure the class-defining attribute groups
    class_names: Sequence[str] | None = None,   # [C], for the worst class
) -> dict[str, Any]:
    """Agreement of f with the asked class, and the probe's attribute groups (see the module docstring); a
    JSON-serialisable dict. ValueError for an unconditional G or a class-count mismatch."""
    num_classes = int(G.c_dim)
    if num_classes == 0:
        raise ValueError("the generator is unconditional (c_dim=0): sample metrics need a class-conditional one")
    if num_classes != f.num_classes:
        raise ValueError(f"the generator draws {num_classes} classes (c_dim) but the classifier has "
                         f"{f.num_classes}; they must be the same classes")
    if per_class < 1 or batch_size < 1:
        raise ValueError(f"per_class and batch_size: expected >= 1, got {per_class} and {batch_size}")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names: expected {num_classes} names, got {len(class_names)}")
    if probe is not None and probe.class_attributes.shape[0] != num_classes:
        raise ValueError(f"probe: it knows {probe.class_attributes.shape[0]} classes, the generator {num_classes}")
    device = next(f.parameters()).device
    n = per_class * num_classes
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))   # [n, z_dim]
    asked = torch.arange(n) % num_classes                                         # [n]
    c = torch.nn.functional.one_hot(asked, num_classes).float()                   # [n, C]
    probs, pooled, pixels = [], [], []
    for sl in batches(n, batch_size):
        images = G(z[sl].to(G.device), c[sl].to(G.device), truncation_psi=1.0, noise_mode="const")  # [b, 3, R, R]
        pixels.append(pixel_features(images).cpu())                               # [b, 768]
        feats = f.features(images.clamp(-1, 1).to(device))
        probs.append(feats["logits"].float().softmax(dim=1).cpu())               # [b, C]
        if probe is not None:
            pooled.append(pooled_features(feats).cpu())                          # [b, D]
    p = torch.cat(probs)                                                          # [n, C]
    agree = p.argmax(dim=1) == asked                                              # [n]
    p_asked = p[torch.arange(n), asked]                                           # [n]
    per_class_agreement = [float(agree[asked == k].float().mean()) for k in range(num_classes)]
    per_class_probability = [float(p_asked[asked == k].mean()) for k in range(num_classes)]
    worst = min(range(num_classes), key=lambda k: per_class_agreement[k])
    result: dict[str, Any] = {
        "per_class": per_class, "seed": seed, "count": n, "num_classes": num_classes, "truncation_psi": 1.0,
        "noise_mode": "const", "class_names": None if class_names is None else list(class_names),
        "agreement": float(agree.float().mean()), "mean_probability": float(p_asked.mean()),
        "per_class_agreement": per_class_agreement, "per_class_probability": per_class_probability,
        "worst_class": {"class": worst, "name": None if class_names is None else class_names[worst],
                        "agreement": per_class_agreement[worst]},
        "probe": None, "diversity": None,
    }
    if probe is not None:
        feats = torch.cat(pooled)                                                 # [n, D]
        attr_probs = probe.probe.probabilities(feats)                             # [n, A]
        result["probe"] = {"samples": group_accuracy(attr_probs, asked, probe.class_attributes, probe.attribute_names),
                           "real_images": probe.reference}
        spread = class_spread(torch.cat(pixels), asked, num_classes)
        real = probe.real_spread
        ratios = [None if real is None or s_c is None or not real[c] else s_c / real[c] for c, s_c in enumerate(spread)]
        known = [r for r in ratios if r is not None]
        result["diversity"] = {"per_class": ratios, "mean": sum(known) / len(known) if known else None,
                               "spread": spread, "real_spread": real}
    return result


def sample_table(result: dict[str, Any]) -> str:
    """`sample_metrics`'s result as a plain-text table: a row per class (agreement, mean probability, each
    group's probe accuracy), the overall row, the probe on real test images, the worst class."""
    num_classes = result["num_classes"]
    names = result["class_names"] or [f"class {k}" for k in range(num_classes)]
    samples = (result["probe"] or {}).get("samples") or {"groups": {}, "per_class": {}, "all_groups": None}
    real = (result["probe"] or {}).get("real_images")
    groups = list(samples["groups"])
    diversity = result.get("diversity") or {}
    div = ["diversity"] if diversity.get("mean") is not None else []
    headers = ["class", "agreement", "p(class)", *groups, *(["all groups"] if groups else []), *div]

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    rows = [[names[k], cell(result["per_class_agreement"][k]), cell(result["per_class_probability"][k]),
             *(cell(samples["per_class"][g][k]) for g in groups),
             *([cell(samples["all_groups_per_class"][k])] if groups else []),
             *([cell(diversity["per_class"][k])] if div else [])]
            for k in range(num_classes)]
    rows.append([f"all ({result['count']} samples, seed {result['seed']})", cell(result["agreement"]),
                 cell(result["mean_probability"]), *(cell(samples["groups"][g]) for g in groups),
                 *([cell(samples["all_groups"])] if groups else []), *([cell(diversity["mean"])] if div else [])])
    if real is not None and groups:
        rows.append([f"probe on real test images ({real['count']})", "", "",
                     *(cell(real["groups"].get(g)) for g in groups), cell(real["all_groups"]), *(["1.000"] if div else [])])
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    worst = result["worst_class"]
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows[:num_classes]),
                      line(["-" * w for w in widths]), *map(line, rows[num_classes:]),
                      f"worst class: {worst['class']} {names[worst['class']]}: agreement {worst['agreement']:.3f}"])
