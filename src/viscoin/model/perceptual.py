"""The perceptual term of VisCoIN's reconstruction loss (paper eq. 3: ``β · LPIPS(x, x̃)``).

Two interchangeable distances, both taking images in [-1, 1] (``[N, 3, H, W]``) and giving one
distance per sample (``[N]``), differentiable with respect to both inputs:

- `LPIPSDistance` (``loss.perceptual = "lpips"``, the paper's and the default): LPIPS-VGG of the
  `lpips` package (v0.1, as the authors' code uses it). viscoin never downloads: the lpips
  module is built with a randomly initialised trunk (so torchvision fetches nothing), then the
  trunk gets torchvision's VGG16 ImageNet weights from a local file -- ``loss.lpips_vgg_path``
  or torchvision's cache ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth`` -- and the
  calibrated linear layers are read from the copy shipped inside the pip package, both with
  ``torch.load(weights_only=True)``.
- `ClassifierFeatureDistance` (``loss.perceptual = "classifier"``, for offline use with no VGG16
  file): an LPIPS-like distance without learned weights on the frozen classifier's own taps
  (channel-normalised feature maps, squared difference, mean over channels and positions, sum
  over taps). It is *not* LPIPS; which one ran is recorded by its `name`, which the trainer
  writes into the config and every report.

Both are frozen: always in eval mode (``train()`` keeps them there), and no parameter requires
grad; gradients still flow through them to the inputs.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from viscoin.utils.weights import imagenet_cache_path, imagenet_weights_url, read_state_dict_file
from viscoin.classifier.model import Classifier, resolve_tap
from viscoin.utils.io import CheckpointError, copy_named_tensors

VGG_ARCH = "vgg16"
VGG_RELEASE = "IMAGENET1K_V1"            # torchvision's VGG16 ImageNet release lpips uses (vgg16-397923af.pth)
LPIPS_VERSION = "0.1"                     # lpips's default and latest linear-layer calibration
VGG_PATH_OPTION = "loss.lpips_vgg_path"   # config option naming a local VGG16 file
PERCEPTUAL_OPTION = "loss.perceptual"     # config option choosing the distance
NORM_EPS = 1e-10                          # as lpips.normalize_tensor

# lpips's VGG16 trunk splits torchvision's ``features[0:30]`` into slice1..slice5 (0-3, 4-8, 9-15,
# 16-22, 23-29); its modules keep torchvision's index as their name, so ``net.slice2.5.weight`` is
# ``features.5.weight``: the mapping below is by that index.


def _check_pair(x: Tensor, y: Tensor) -> None:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor) or t.ndim != 4 or t.shape[1] != 3 or not t.is_floating_point():
            desc = f"{list(t.shape)} {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name}: expected a floating-point image batch [N, 3, H, W] in [-1, 1], got {desc}")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {list(x.shape)} and {list(y.shape)}")


def normalize_channels(feat: Tensor, eps: float = NORM_EPS) -> Tensor:
    """Unit-normalise the channel vector at each position of ``[N, C, H, W]`` (as lpips does)."""
    return feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class PerceptualDistance(nn.Module):
    """Base of the perceptual distances: frozen, always in eval mode, no trainable parameters.

    ``forward(x, y)``: images ``[N, 3, H, W]`` in [-1, 1] -> per-sample distance ``[N]``.
    `name` says which distance this is (recorded in the config and in every report).
    """

    name: str = "perceptual"

    def _freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> PerceptualDistance:
        # A loss network never trains: dropout (lpips's linear layers) and BatchNorm stay in eval.
        return super().train(False)

    def describe(self) -> dict[str, Any]:
        """What ran, for configs and reports: at least ``{"perceptual": name}``."""
        return {"perceptual": self.name}

    def forward(
        self,
        x: Tensor,
        y: Tensor,
        feats_x: Mapping[str, Tensor] | None = None,   # f's features of x, for distances that read them
        feats_y: Mapping[str, Tensor] | None = None,   # f's features of y
    ) -> Tensor:  # pragma: no cover - abstract
        """Per-sample distance ``[N]``; every distance takes this one signature (others ignore feats_*)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


# ==================================================================== LPIPS-VGG


def vgg16_weights_url() -> str:
    """torchvision's download URL of the VGG16 ImageNet weights lpips uses (no network access)."""
    return imagenet_weights_url(VGG_ARCH, VGG_RELEASE)


def vgg16_cache_path() -> Path:
    """torchvision's cache file of those weights: ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth``."""
    return imagenet_cache_path(VGG_ARCH, VGG_RELEASE)


def vgg16_weights_file(vgg_weights_path: str | None) -> Path:
    """The VGG16 file to read: `vgg_weights_path` if given, else torchvision's cache file."""
    return Path(vgg_weights_path).expanduser() if vgg_weights_path is not None else vgg16_cache_path()


def _missing_vgg_message(path: Path, explicit: bool) -> str:
    url = vgg16_weights_url()
    alt = f"or set {PERCEPTUAL_OPTION}=classifier (a distance on the classifier's features, not LPIPS)"
    if explicit:
        return (
            f"VGG16 ImageNet weights for LPIPS not found: {VGG_PATH_OPTION} = {path} does not exist. "
            f"viscoin never downloads; fetch {url} (torchvision's VGG16 {VGG_RELEASE} weights) and put it at "
            f"{path}, or unset {VGG_PATH_OPTION} to use torchvision's cache file {vgg16_cache_path()}, {alt}"
        )
    return (
        f"VGG16 ImageNet weights for LPIPS not found: expected torchvision's cache file {path} "
        f"(file {path.name} in folder {path.parent}). viscoin never downloads; fetch {url} and put it there "
        f"(for example: mkdir -p {path.parent} && curl -L -o {path} {url}), or set the config option "
        f"{VGG_PATH_OPTION} to a local copy (.pth or .safetensors), {alt}. "
        f"(The folder follows torch.hub.get_dir(): $TORCH_HOME/hub, default ~/.cache/torch/hub.)"
    )


def _import_lpips() -> Any:
    try:
        import lpips
    except ImportError as exc:
        raise ImportError(
            f"LPIPS needs the `lpips` package ({exc}): pip install lpips, "
            f"or use {PERCEPTUAL_OPTION}=classifier (a distance on the classifier's features, not LPIPS)"
        ) from exc
    return lpips


class LPIPSDistance(PerceptualDistance):
    """LPIPS-VGG (v0.1) of the `lpips` package, loaded from local files only (the paper's term).

    Inputs in [-1, 1] go to lpips as they are (its ``normalize=False`` convention); lpips applies
    its own scaling layer. Output: ``[N]``, zero for identical images.
    """

    def __init__(self, vgg_weights_path: str | None = None) -> None:
        super().__init__()
        lpips = _import_lpips()
        self.name = "lpips-vgg"
        path = vgg16_weights_file(vgg_weights_path)
        if not path.is_file():
            raise FileNotFoundError(_missing_vgg_message(path, explicit=vgg_weights_path is not None))
        vgg_tensors = read_state_dict_file(path)  # first: an unreadable file fails before VGG16 is built

        # pretrained=False: lpips does not torch.load its linear layers (done below, weights_only);
        # pnet_rand=True: torchvision builds VGG16 with random weights and downloads nothing.
        # verbose=False and the redirect silence its prints; torchvision's `pretrained=` deprecation
        # warnings (lpips still uses that argument) are silenced too.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            net = lpips.LPIPS(
                net="vgg", version=LPIPS_VERSION, lpips=True, pretrained=False, pnet_rand=True, verbose=False
            )
        self.lpips = net

        self._load_vgg(path, vgg_tensors)
        lin_path = Path(lpips.__file__).resolve().parent / "weights" / f"v{LPIPS_VERSION}" / "vgg.pth"
        self._load_lins(lin_path)
        self.vgg_weights_file = str(path)
        self.lpips_weights_file = str(lin_path)
        self._freeze()

    def _load_vgg(self, path: Path, tensors: Mapping[str, Tensor]) -> None:
        trunk = self.lpips.net
        mapped: dict[str, Tensor] = {}
        used: set[str] = set()
        for key in trunk.state_dict():
            # "slice{k}.{i}.{param}" <- torchvision's "features.{i}.{param}"
            _, index, param = key.split(".", 2)
            src = f"features.{index}.{param}"
            if src in tensors:
                mapped[key] = tensors[src]
                used.add(src)
        unexpected = sorted(k for k in tensors if k.startswith("features.") and k not in used)
        convs = sorted({int(k.split(".")[1]) for k in trunk.state_dict()})
        expected = ", ".join(f"features.{i}" for i in convs)
        try:
            if unexpected:
                raise CheckpointError(
                    f"VGG16 weights file {path} has conv entries VGG16 does not: {unexpected[:8]}"
                )
            copy_named_tensors(trunk, mapped, where=f"VGG16 weights file {path}")
        except CheckpointError as exc:
            raise CheckpointError(
                f"{exc}. Expected torchvision's VGG16 ImageNet state dict ({VGG_RELEASE}, {vgg16_weights_url()}: "
                f"conv layers {expected}); check {VGG_PATH_OPTION}"
            ) from exc

    def _load_lins(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(
                f"lpips's linear-layer weights {path} are missing from the installed lpips package; "
                f"reinstall it (pip install --force-reinstall lpips) or use {PERCEPTUAL_OPTION}=classifier"
            )
        tensors = read_state_dict_file(path)  # torch.load(weights_only=True)
        # The file names them "lin{k}.model.1.weight"; lpips.LPIPS.lins[k] is the same module.
        renamed = {k[len("lin"):]: v for k, v in tensors.items() if k.startswith("lin")}
        copy_named_tensors(self.lpips.lins, renamed, where=f"lpips linear-layer weights {path}")

    def describe(self) -> dict[str, Any]:
        return {
            "perceptual": self.name,
            "lpips_version": LPIPS_VERSION,
            "vgg_weights_file": self.vgg_weights_file,
            "lpips_weights_file": self.lpips_weights_file,
        }

    def forward(
        self,
        x: Tensor,
        y: Tensor,
        feats_x: Mapping[str, Tensor] | None = None,   # unused (LPIPS runs its own VGG16)
        feats_y: Mapping[str, Tensor] | None = None,   # unused
    ) -> Tensor:
        """LPIPS-VGG of ``x`` and ``y`` (``[N, 3, H, W]`` in [-1, 1]) -> ``[N]``."""
        _check_pair(x, y)
        d = self.lpips(x, y, normalize=False)   # [N, 1, 1, 1]
        return d.reshape(x.shape[0])


# ==================================================================== classifier features


class ClassifierFeatureDistance(PerceptualDistance):
    """LPIPS-like distance on the frozen classifier's taps, with no learned weights (offline use).

    For each tap t: unit-normalise the channel vector at each position (eps 1e-10), take the
    squared difference, average over channels and positions; sum over taps. Output ``[N]``.

    The classifier is frozen (`Classifier.freeze`) but is *not* a submodule: it is kept by
    reference, so its parameters are neither in this module's ``state_dict()`` nor in its
    ``parameters()``; ``.to()`` / ``.half()`` etc. still move it along. Gradients flow through it
    to the inputs.
    """

    def __init__(self, classifier: nn.Module, taps: Sequence[str] | None = None) -> None:
        super().__init__()
        if not isinstance(classifier, Classifier):
            raise TypeError(f"classifier: expected a viscoin Classifier, got {type(classifier).__name__}")
        available = list(classifier.tap_names)
        if taps is None:
            resolved = available
        else:
            if isinstance(taps, str):
                raise ValueError(f"taps: expected a list of tap names, got the string {taps!r}")
            resolved = [resolve_tap(t, classifier.config.arch) for t in taps]
            if not resolved:
                raise ValueError("taps: expected at least one tap name")
            dupes = sorted({t for t in resolved if resolved.count(t) > 1})
            if dupes:
                raise ValueError(f"taps: {list(taps)} name the same tap more than once: {dupes}")
            absent = [t for t in resolved if t not in available]
            if absent:
                raise ValueError(
                    f"taps: {absent} are not taps of the classifier (it computes {available}, "
                    f"set by classifier.taps)"
                )
        if not classifier.frozen:
            classifier.freeze()
        self.taps: list[str] = resolved
        # A list hides the classifier from nn.Module's registration (no state_dict / parameters).
        self._classifier_ref: list[Classifier] = [classifier]
        self.name = f"classifier-features({','.join(resolved)})"
        self._freeze()

    @property
    def classifier(self) -> nn.Module:
        return self._classifier_ref[0]

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .half(), ... move the classifier too
        self._classifier_ref[0]._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def describe(self) -> dict[str, Any]:
        return {"perceptual": self.name, "taps": list(self.taps)}

    def _feats(self, img: Tensor, given: Mapping[str, Tensor] | None, which: str) -> Mapping[str, Tensor]:
        if given is None:
            return self.classifier.features(img)
        missing = [t for t in self.taps if t not in given]
        if missing:
            raise ValueError(f"{which}: precomputed features lack taps {missing} (have {sorted(given)})")
        return given

    def forward(
        self,
        x: Tensor,
        y: Tensor,
        feats_x: Mapping[str, Tensor] | None = None,   # classifier.features(x), reused if given
        feats_y: Mapping[str, Tensor] | None = None,   # classifier.features(y), reused if given
    ) -> Tensor:
        """Distance of ``x`` and ``y`` (``[N, 3, H, W]`` in [-1, 1]) -> ``[N]``."""
        _check_pair(x, y)
        fx = self._feats(x, feats_x, "feats_x")
        fy = self._feats(y, feats_y, "feats_y")
        total = x.new_zeros(x.shape[0], dtype=torch.float32)
        for t in self.taps:
            a, b = fx[t], fy[t]
            if a.shape != b.shape or a.ndim != 4 or a.shape[0] != x.shape[0]:
                raise ValueError(
                    f"tap {t}: feature maps of x and y must both be [N={x.shape[0]}, C, H, W], "
                    f"got {list(a.shape)} and {list(b.shape)}"
                )
            # float32: sums of squared activations can overflow in half precision.
            diff = normalize_channels(a.float()) - normalize_channels(b.float())
            total = total + diff.pow(2).mean(dim=(1, 2, 3))
        return total


# ==================================================================== factory


def build_perceptual(
    kind: Literal["lpips", "classifier"],       # loss.perceptual
    classifier: nn.Module | None = None,        # the frozen classifier f (kind="classifier")
    vgg_weights_path: str | None = None,        # loss.lpips_vgg_path (kind="lpips"); None -> torchvision's cache
) -> PerceptualDistance:
    """The perceptual distance chosen by ``loss.perceptual``; its ``name`` says which one it is."""
    if kind == "lpips":
        return LPIPSDistance(vgg_weights_path)
    if kind == "classifier":
        if classifier is None:
            raise ValueError(f"{PERCEPTUAL_OPTION}=classifier needs the classifier f (classifier=None given)")
        return ClassifierFeatureDistance(classifier)
    raise ValueError(f"{PERCEPTUAL_OPTION}: expected 'lpips' or 'classifier', got {kind!r}")
