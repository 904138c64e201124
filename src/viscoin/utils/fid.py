"""Fréchet distance between two image sets in a feature space (FID; paper section 4.1 and appendix C.2).

``FD = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2})`` on the features' means and covariances, in
float64, with scipy's matrix square root and the standard fallback of pytorch-fid / the TTUR code
when the product is (nearly) singular, as it is with fewer samples than feature dimensions:
add ``eps·I`` to both covariances and retry.

Feature extractors (`build_fid_features`), each with a `label` that is always stored and printed
next to the number:

- ``"inception"`` -> "Inception": torchmetrics' `NoTrainInceptionV3` (torch-fidelity's port of
  the TF Inception of the FID paper, 2048-d pool features) with the standard weights file
  ``weights-inception-2015-12-05-6726825d.pth``, read from a given path or torch hub's cache
  (``torch.hub.get_dir()/checkpoints/``). viscoin never downloads: a missing file is an error
  that names it, where to put it, and the offline substitute.
- ``"classifier"`` -> "classifier features": the pooled penultimate features of the concept
  model's own classifier f (input of its final linear layer), given as a function. Not comparable
  to published FIDs.

It sits in `viscoin.utils` because both the metrics and generator training use it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from collections.abc import Callable
from typing import Literal

import numpy as np
import scipy.linalg
import torch
from torch import nn

from viscoin.utils.weights import read_state_dict_file

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
FID_EPS = 1e-6  # diagonal offset of the singular-covariance fallback (pytorch-fid's default)


# ==================================================================== the distance


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of features [N, D], in float64 (N >= 2)."""
    feats = np.asarray(features.detach().cpu().double() if isinstance(features, torch.Tensor) else features,
                       dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"FID: expected features [N >= 2, D], got shape {list(feats.shape)}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False).reshape(feats.shape[1], feats.shape[1])


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = FID_EPS) -> float:
    """Fréchet distance of N(μ₁, Σ₁) and N(μ₂, Σ₂) (the FID formula), float64.

    When ``sqrtm(Σ₁Σ₂)`` is not finite, retry with ``Σ + eps·I``; a tiny imaginary part from
    round-off is dropped (a large one is an error, as in pytorch-fid).
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"FID: mismatched statistics {mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag)):.3g} in sqrtm(Σ₁Σ₂)")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _sqrtm(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # singular input is expected with few samples; the caller checks the result
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        out = scipy.linalg.sqrtm(a)
    return out[0] if isinstance(out, tuple) else out  # older scipy returned (sqrtm, errest) with disp=False


def fid_from_features(real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray) -> float:
    """FID between two feature sets [N, D] and [M, D]."""
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake))


# ==================================================================== feature extractors


class FIDFeatures(nn.Module):
    """Images [N, 3, H, W] in [-1, 1] -> features [N, D] (float32). `label` names the space in reports."""

    label: str = "features"


def inception_cache_path() -> Path:
    """Where torch hub caches the standard FID Inception weights: ``torch.hub.get_dir()/checkpoints/``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def inception_weights_file(path: str | os.PathLike | None) -> Path:
    """The Inception weights file to read: `path` if given, else torch hub's cache file; checked to exist."""
    explicit = path is not None
    file = Path(path).expanduser() if explicit else inception_cache_path()
    if not file.is_file():
        where = f"--inception {file} does not exist" if explicit else f"expected torch hub's cache file {file}"
        raise FileNotFoundError(
            f"FID Inception weights not found: {where}. viscoin never downloads; fetch {INCEPTION_URL} and put it "
            f"at {file} (or anywhere, and pass --inception PATH / inception_path=PATH), or use "
            f"--fid-features classifier (FID on f's own features, labelled as such; not comparable to published FIDs)"
        )
    return file


class InceptionFeatures(FIDFeatures):
    """2048-d pool features of the standard FID Inception (torchmetrics / torch-fidelity), local weights only."""

    label = "Inception"

    def __init__(self, weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        file = inception_weights_file(weights_path)
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise ImportError(f"FID with Inception features needs torchmetrics ({exc}): pip install "
                              "'torchmetrics[image]', or use --fid-features classifier") from exc
        read_state_dict_file(file)  # weights_only check first: torch-fidelity itself unpickles freely
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=str(file))
        self.weights_file = str(file)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torchmetrics' convention: uint8 images in [0, 255] (it resizes to 299 itself).
        img = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return self.net(img).float()


class ClassifierFeatures(FIDFeatures):
    """Pooled penultimate features of the classifier f (the input of its last linear layer)."""

    label = "classifier features"

    def __init__(
        self,
        embed: Callable[[torch.Tensor], torch.Tensor],   # images [N, 3, R, R] -> [N, D]: f's embedding
    ) -> None:
        super().__init__()
        self._embed = embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._embed(x).flatten(1).float()


FIDKind = Literal["inception", "classifier"]


def build_fid_features(kind: FIDKind, embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       inception_path: str | os.PathLike | None = None) -> FIDFeatures:
    """The FID feature extractor `kind`; its `label` says which one ran."""
    if kind == "inception":
        return InceptionFeatures(inception_path)
    if kind == "classifier":
        if embed is None:
            raise ValueError("fid_features=classifier needs the classifier f's embedding function")
        return ClassifierFeatures(embed)
    raise ValueError(f"fid_features: expected 'inception' or 'classifier', got {kind!r}")
