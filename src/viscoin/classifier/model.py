"""The classifier `f` of VisCoIN (paper section 3.1): a torchvision ResNet with a new head.

`f` is an ImageNet-initialised ResNet (ResNet50 in the paper, any of ResNet18/34/50/101/152
here) fine-tuned on the task (paper appendix B.2), then frozen while Ψ, Θ and Ω train.
Two conventions are fixed here so that the rest of viscoin cannot get them wrong:

- inputs are images in [-1, 1] (the StyleGAN convention used everywhere in viscoin); the
  ImageNet input normalisation ``((x + 1) / 2 - mean) / std`` happens *inside* the module
  (a known pitfall of public ports);
- Ψ reads hidden layers of `f` (paper appendix B.1.1): the output of ``layer2``, of ``layer3`` and of
  the penultimate block of ``layer4``. These are named *taps*; `Classifier.features` returns
  them together with the logits from one forward pass (no hooks).

Tap names: ``"layerK"`` is the output of stage K (1..4); ``"layerK.i"`` is the output of block i
of stage K, where a negative i counts from the end (``"layer4.-2"`` is the penultimate block,
resolved to ``"layer4.1"`` for ResNet50 and ``"layer4.0"`` for ResNet18).

Parameter names are torchvision's under the ``net`` submodule (``net.layer1.0.conv1.weight``),
so ImageNet state dicts load into ``model.net`` by name (`viscoin.classifier.pretrained`).
"""

from __future__ import annotations

from collections.abc import Sequence

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torchvision
from torch import Tensor, nn

from viscoin.classifier.pretrained import load_imagenet_weights
from viscoin.utils.checkpoint import (
    WEIGHTS_NAME,
    check_module_size,
    load_checkpoint_tensors,
    read_checkpoint_folder_info,
    save_checkpoint_folder,
)
from viscoin.utils.config import ConfigError, DictConfig
from viscoin.utils.io import CheckpointError, copy_named_tensors

Arch = Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]

# Blocks per stage (layer1..layer4) and the channel expansion of the block type, per torchvision.
ARCH_BLOCKS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
}
ARCH_EXPANSION: dict[str, int] = {"resnet18": 1, "resnet34": 1, "resnet50": 4, "resnet101": 4, "resnet152": 4}
# ImageNet releases torchvision publishes for each arch (torchvision.models.ResNet*_Weights).
ARCH_RELEASES: dict[str, tuple[str, ...]] = {
    "resnet18": ("IMAGENET1K_V1",),
    "resnet34": ("IMAGENET1K_V1",),
    "resnet50": ("IMAGENET1K_V1", "IMAGENET1K_V2"),
    "resnet101": ("IMAGENET1K_V1", "IMAGENET1K_V2"),
    "resnet152": ("IMAGENET1K_V1", "IMAGENET1K_V2"),
}
# torchvision's ImageNet input normalisation (applied to images in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MAX_CLASSES = 100_000  # classifier.num_classes (ImageNet-21k has 21,843)
MAX_WIDTH = 1024      # classifier.width (torchvision's ResNets: 64)

_TAP_RE = re.compile(r"^layer([1-4])(?:\.(-?\d+))?$")
LOGITS = "logits"  # key of the logits in `Classifier.features`
EMBEDDING = "embedding"  # the pooled input of the head (`Classifier.embedding`)
STAGES = ("layer1", "layer2", "layer3", "layer4")  # `Classifier.stage_output`


def resolve_tap(tap: str, arch: str) -> str:
    """Canonical name of tap `tap` for `arch`: ``"layerK"`` or ``"layerK.i"`` with 0 <= i < blocks.

    Raises `ConfigError` (naming ``classifier.taps``) for a malformed name or a block index out
    of range for the architecture.
    """
    m = _TAP_RE.match(tap) if isinstance(tap, str) else None
    if m is None:
        raise ConfigError(
            f'classifier.taps: malformed tap {tap!r}; expected "layerK" (stage output, K in 1..4) '
            f'or "layerK.i" (block i of stage K, negative i counts from the end), e.g. "layer4.-2"'
        )
    stage = int(m.group(1))
    if m.group(2) is None:
        return f"layer{stage}"
    n = ARCH_BLOCKS[arch][stage - 1]
    i = int(m.group(2))
    if not -n <= i < n:
        raise ConfigError(
            f"classifier.taps: tap {tap!r} is out of range: layer{stage} of {arch} has {n} blocks "
            f"(valid indices {-n}..{n - 1})"
        )
    return f"layer{stage}.{i % n}"


@dataclass(frozen=True)
class ClassifierConfig(DictConfig):
    """The classifier `f`: which ResNet, how many classes, how it is initialised, what Ψ reads."""

    arch: Arch = "resnet50"                      # torchvision ResNet (the paper uses resnet50)
    num_classes: int = 200                       # C, size of the new head (CUB-200: 200); 0 = from the data, resolved by the trainer
    pretrained: Literal["imagenet", "none"] = "imagenet"  # initialisation of the backbone
    weights_path: str | None = None              # ImageNet weights file (.pth or .safetensors); None -> torchvision's cache
    imagenet_weights: Literal["IMAGENET1K_V1", "IMAGENET1K_V2"] = "IMAGENET1K_V1"  # torchvision release to look for in the cache
    taps: tuple[str, ...] = ("layer2", "layer3", "layer4.-2")  # hidden outputs Ψ reads (see module docstring)
    width: int = 64                              # channels of layer1 (64: torchvision's ResNets; smaller: a narrow ResNet trained from scratch)

    def __post_init__(self) -> None:
        if self.arch not in ARCH_BLOCKS:
            raise ConfigError(f"classifier.arch: expected one of {sorted(ARCH_BLOCKS)}, got {self.arch!r}")
        if (isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
                or not 0 <= self.num_classes <= MAX_CLASSES):
            raise ConfigError(
                f"classifier.num_classes: expected an integer from 2 to {MAX_CLASSES:,} (or 0: from the data), "
                f"got {self.num_classes!r}"
            )
        if self.num_classes == 1:
            raise ConfigError(
                "classifier.num_classes: 1 class: there is nothing to classify; the data needs at least two classes "
                "(one sub-folder per class; a flat folder of images is a single class, which only generator training "
                "accepts)"
            )
        if self.pretrained not in ("imagenet", "none"):
            raise ConfigError(f"classifier.pretrained: expected 'imagenet' or 'none', got {self.pretrained!r}")
        if self.weights_path is not None and (not isinstance(self.weights_path, str) or not self.weights_path):
            raise ConfigError(f"classifier.weights_path: expected a file path or null, got {self.weights_path!r}")
        if self.imagenet_weights not in ARCH_RELEASES[self.arch]:
            raise ConfigError(
                f"classifier.imagenet_weights: torchvision has no {self.imagenet_weights!r} weights for "
                f"{self.arch}; expected one of {list(ARCH_RELEASES[self.arch])}"
            )
        if isinstance(self.width, bool) or not isinstance(self.width, int) or not 1 <= self.width <= MAX_WIDTH:
            raise ConfigError(f"classifier.width: expected an integer from 1 to {MAX_WIDTH}, got {self.width!r}")
        if self.width != 64 and self.pretrained == "imagenet":
            raise ConfigError(
                f"classifier.width: ImageNet weights exist only for width 64, got {self.width}; "
                "set classifier.pretrained=none to train a narrow ResNet from scratch"
            )
        if isinstance(self.taps, str) or not isinstance(self.taps, Iterable):
            raise ConfigError(f"classifier.taps: expected a list of tap names, got {self.taps!r}")
        object.__setattr__(self, "taps", tuple(self.taps))
        resolved = self.resolved_taps()
        dupes = sorted({t for t in resolved if resolved.count(t) > 1})
        if dupes:
            raise ConfigError(f"classifier.taps: {list(self.taps)} name the same tap more than once: {dupes}")

    def resolved_taps(self) -> list[str]:
        """The tap names in canonical form (negative block indices resolved), in config order."""
        return [resolve_tap(t, self.arch) for t in self.taps]

    @property
    def expansion(self) -> int:
        """Channel expansion of the residual block (1: BasicBlock, 4: Bottleneck)."""
        return ARCH_EXPANSION[self.arch]


def _halve(size: int) -> int:
    """Spatial size after a stride-2 layer of ResNet (7x7/p3 conv, 3x3/p1 max-pool or conv, 1x1 conv)."""
    return (size - 1) // 2 + 1


def _build_resnet(config: ClassifierConfig) -> torchvision.models.ResNet:
    """torchvision's ResNet of ``config.arch`` (never downloads); with ``config.width != 64`` every
    stage's channels are scaled by ``width / 64`` (same blocks, same parameter names)."""
    builder = getattr(torchvision.models, config.arch)
    net: torchvision.models.ResNet = builder(weights=None, num_classes=config.num_classes)
    if config.width == 64:
        return net
    block = type(net.layer1[0])
    width = config.width
    net.inplanes = width                                # torchvision's _make_layer reads and updates it
    net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    for stage, blocks in enumerate(ARCH_BLOCKS[config.arch], start=1):
        stride = 1 if stage == 1 else 2
        setattr(net, f"layer{stage}", net._make_layer(block, width * 2 ** (stage - 1), blocks, stride=stride))
    net.fc = nn.Linear(width * 8 * ARCH_EXPANSION[config.arch], config.num_classes)
    for m in net.modules():                             # torchvision's initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return net


class Classifier(nn.Module):
    """VisCoIN's classifier `f`: torchvision ResNet + new C-class head, inputs in [-1, 1].

    ``forward(x)`` gives logits ``[N, C]``; ``features(x)`` gives the taps Ψ reads plus the logits
    from one pass. The backbone is built with ``weights=None`` (torchvision never downloads);
    ImageNet weights are loaded from a local file by `load_imagenet_weights`.
    """

    def __init__(
        self,
        config: ClassifierConfig,                # architecture, classes, initialisation, taps
        load_pretrained: bool = True,            # False: skip ImageNet loading (tests, or a viscoin checkpoint is loaded next)
    ) -> None:
        super().__init__()
        if not isinstance(config, ClassifierConfig):
            raise TypeError(f"config: expected a ClassifierConfig, got {type(config).__name__}")
        if config.num_classes < 1:
            raise ConfigError(
                f"classifier.num_classes: {config.num_classes} (from the data) must be resolved to the "
                "dataset's class count before a Classifier is built"
            )
        self.config = config
        self.num_classes = config.num_classes
        self.tap_names: list[str] = config.resolved_taps()
        self._frozen = False
        self.imagenet_source: dict[str, Any] | None = None  # set by load_imagenet_weights
        self.net: torchvision.models.ResNet = _build_resnet(config)
        # ImageNet normalisation of (x + 1) / 2, as constant buffers ([1, 3, 1, 1]); not saved in
        # checkpoints (they are fixed by the definition), but they follow .to(device / dtype).
        self.register_buffer("input_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._tap_set = frozenset(self.tap_names)
        if load_pretrained and config.pretrained == "imagenet":
            load_imagenet_weights(self)

    # ---------------------------------------------------------------- forward

    def normalize(self, x: Tensor) -> Tensor:
        """[-1, 1] image -> ImageNet-normalised input of the ResNet: ``((x + 1) / 2 - mean) / std``."""
        return ((x + 1) * 0.5 - self.input_mean) / self.input_std

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 3:
            shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected an image batch [N, 3, H, W] in [-1, 1], got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"x: expected a floating-point image in [-1, 1], got dtype {x.dtype}")

    def _run(self, x: Tensor, taps: frozenset[str], stop_after: str | None = None) -> dict[str, Tensor]:
        """One pass through the ResNet's parts; returns the requested taps and the logits.

        With `stop_after` (a stage such as ``"layer2"``) the pass ends there: no logits.
        ``"embedding"`` (the pooled input of the head) is returned when it is in `taps`.
        """
        self._check_input(x)
        net = self.net
        out: dict[str, Tensor] = {}
        h = self.normalize(x)                                   # [N, 3, H, W]
        h = net.maxpool(net.relu(net.bn1(net.conv1(h))))        # [N, width, H/4, W/4]
        for stage in range(1, 5):
            layer = getattr(net, f"layer{stage}")
            for i, block in enumerate(layer):
                h = block(h)                                    # [N, width*2^(stage-1)*exp, H/2^(stage+1), ...]
                name = f"layer{stage}.{i}"
                if name in taps:
                    out[name] = h
            if f"layer{stage}" in taps:
                out[f"layer{stage}"] = h
            if stop_after == f"layer{stage}":
                return out
        h = torch.flatten(net.avgpool(h), 1)                    # [N, 8*width*exp]
        if EMBEDDING in taps:
            out[EMBEDDING] = h
        logits = net.fc(h)                                      # [N, C]
        assert logits.shape == (x.shape[0], self.num_classes), (logits.shape, self.num_classes)
        out[LOGITS] = logits
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[N, C]`` of images ``x`` in [-1, 1], ``[N, 3, H, W]``."""
        return self._run(x, frozenset())[LOGITS]

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """``{tap name: feature map [N, C_t, H_t, W_t], ..., "logits": [N, C]}`` from one pass.

        Taps come in `tap_names` order, ``"logits"`` last. The maps are the ResNet's own
        activations (not copies): gradients flow from them back to ``x``.
        """
        found = self._run(x, self._tap_set)
        out = {name: found[name] for name in self.tap_names}
        out[LOGITS] = found[LOGITS]
        return out

    def features_at(self, x: Tensor, taps: Sequence[str]) -> dict[str, Tensor]:
        """Like `features`, for any taps (``"layer3"``, ``"layer4.1"``, ...; see `resolve_tap`): ``{tap: map, ..., "logits"}``."""
        names = [resolve_tap(t, self.config.arch) for t in taps]
        found = self._run(x, frozenset(names))
        missing = [t for t in names if t not in found]
        if missing:
            raise ValueError(f"taps {missing}: not taps of a {self.config.arch} (blocks per stage: "
                             f"{ARCH_BLOCKS.get(self.config.arch)})")
        out = {name: found[name] for name in names}
        out[LOGITS] = found[LOGITS]
        return out

    def stage_output(self, x: Tensor, stage: str) -> Tensor:
        """Output of ResNet stage `stage` (``"layer1"`` .. ``"layer4"``) [N, C_s, H_s, W_s]; the pass stops there."""
        if stage not in STAGES:
            raise ValueError(f"stage: expected one of {list(STAGES)}, got {stage!r}")
        return self._run(x, frozenset({stage}), stop_after=stage)[stage]

    def embedding(self, x: Tensor) -> Tensor:
        """The pooled penultimate features (the input of the C-class head) [N, 8·width·expansion]."""
        return self._run(x, frozenset({EMBEDDING}))[EMBEDDING]

    # ---------------------------------------------------------------- shapes

    def tap_channels(self) -> dict[str, int]:
        """Channel count of each tap (every block of stage K outputs width * 2^(K-1) * expansion)."""
        return {name: self._stage_channels(int(name[5])) for name in self.tap_names}

    def _stage_channels(self, stage: int) -> int:
        return self.config.width * 2 ** (stage - 1) * self.config.expansion

    def tap_shapes(self, resolution: int | tuple[int, int]) -> dict[str, tuple[int, int, int]]:
        """``(C, H, W)`` of each tap for an input of ``resolution`` (square side, or ``(H, W)``).

        Computed analytically: the stem (stride-2 conv, stride-2 max-pool) and the first block of
        layer2, layer3 and layer4 each map a side s to ``(s - 1) // 2 + 1``; every block of a stage
        has the stage's output size. ResNet50 at 256: layer2 (512, 32, 32), layer3 (1024, 16, 16),
        layer4.1 (2048, 8, 8) (paper appendix B.1.1).
        """
        if isinstance(resolution, int):
            resolution = (resolution, resolution)
        hw = tuple(int(s) for s in resolution)
        if len(hw) != 2 or min(hw) < 1:
            raise ValueError(f"resolution: expected a positive side or (H, W), got {resolution!r}")
        sizes = {}
        h, w = _halve(_halve(hw[0])), _halve(_halve(hw[1]))    # after conv1 and maxpool
        for stage in range(1, 5):
            if stage > 1:
                h, w = _halve(h), _halve(w)
            sizes[stage] = (h, w)
        return {
            name: (self._stage_channels(int(name[5])), *sizes[int(name[5])]) for name in self.tap_names
        }

    # ---------------------------------------------------------------- parameters

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the new C-class head (``net.fc``)."""
        return list(self.net.fc.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the head's (the ImageNet-initialised part)."""
        head = {id(p) for p in self.net.fc.parameters()}
        return [p for p in self.parameters() if id(p) not in head]

    # ---------------------------------------------------------------- freezing

    @property
    def frozen(self) -> bool:
        """True after `freeze()`: eval mode, no parameter gradients, and ``train()`` keeps it in eval."""
        return self._frozen

    def freeze(self) -> Classifier:
        """Freeze `f` as VisCoIN uses it (paper section 3.1): eval mode, ``requires_grad=False``.

        While frozen, ``train()`` (for example from a parent module) leaves it in eval mode, so its
        BatchNorm statistics never change; gradients still flow through it to its input.
        """
        self._frozen = True
        self.requires_grad_(False)
        return super().train(False)

    def unfreeze(self) -> Classifier:
        """Undo `freeze()`: parameters require grad again; the mode is left as is (eval)."""
        self._frozen = False
        self.requires_grad_(True)
        return self

    def train(self, mode: bool = True) -> Classifier:
        return super().train(False if self._frozen else mode)

    def extra_repr(self) -> str:
        return f"arch={self.config.arch}, num_classes={self.num_classes}, taps={self.tap_names}, frozen={self._frozen}"


# -------------------------------------------------------------------- checkpoints

FORMAT = "viscoin.classifier"
NETWORK = "classifier"
_HINT = "expected a folder written by viscoin.classifier.save_classifier (a fine-tuned classifier)"


def save_classifier(
    model: Classifier,                           # the classifier to save
    out_dir: str | os.PathLike,                  # checkpoint folder (created if needed)
    source: dict[str, Any] | None = None,        # provenance; the ImageNet file it started from is added as "imagenet"
    extra: dict[str, Any] | None = None,         # anything else worth keeping (JSON-serialisable)
) -> Path:
    """Save `model` (config + every parameter and persistent buffer) as a viscoin checkpoint folder
    (``config.json`` + ``weights.safetensors``, format ``viscoin.classifier``)."""
    if not isinstance(model, Classifier):
        raise TypeError(f"expected a viscoin Classifier, got {type(model).__name__}")
    source = dict(source or {})
    if model.imagenet_source is not None:
        source.setdefault("imagenet", dict(model.imagenet_source))
    return save_checkpoint_folder(
        out_dir, FORMAT, NETWORK, model.config.to_dict(), model.state_dict(), source=source, extra=extra
    )


def read_classifier_info(path: str | os.PathLike) -> dict[str, Any]:
    """The validated ``config.json`` of a classifier checkpoint folder (plus ``_dir``)."""
    return read_checkpoint_folder_info(path, FORMAT, {NETWORK}, hint=_HINT)


def load_classifier(
    path: str | os.PathLike,                     # checkpoint folder (or its config.json)
    device: str | torch.device = "cpu",          # where to put the model
    frozen: bool = True,                         # VisCoIN's f: eval mode, no parameter gradients, stays in eval
) -> Classifier:
    """A classifier from a viscoin checkpoint folder; ImageNet weights are not read.

    With `frozen` (default, as VisCoIN uses `f`) it is frozen by `Classifier.freeze`: eval mode,
    ``requires_grad=False``, and ``train()`` keeps it in eval; gradients still reach its input.
    Without, it is in train mode with trainable parameters (to continue fine-tuning).
    """
    info = read_classifier_info(path)
    cfg_path = Path(info["_dir"]) / "config.json"
    try:
        config = ClassifierConfig.from_dict(info.get("config"), where=f"{cfg_path}: config")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    check_module_size(lambda: Classifier(config, load_pretrained=False), f"{cfg_path}: config")
    tensors = load_checkpoint_tensors(info)
    model = Classifier(config, load_pretrained=False)
    copy_named_tensors(model, tensors, where=str(Path(info["_dir"]) / WEIGHTS_NAME))
    model = model.to(device)
    if frozen:
        model.freeze()
    else:
        model.train().requires_grad_(True)
    return model
