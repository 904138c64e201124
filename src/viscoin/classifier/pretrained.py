"""ImageNet initialisation of the classifier (paper appendix B.2: `f` is an
ImageNet-initialised ResNet fine-tuned on the task) -- from local files only.

viscoin never downloads: the weights come from ``classifier.weights_path`` (a ``.pth`` read with
``torch.load(weights_only=True)``, or a ``.safetensors`` file) or, when that is unset, from
torchvision's cache, ``torch.hub.get_dir()/checkpoints/<file name of torchvision's release>``
(the place torchvision itself would download to). A missing file gives a `FileNotFoundError`
that says which URL to fetch and where to put it. The ImageNet head (``fc.*``, 1000 classes) is
dropped: the model keeps its own C-class head.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from viscoin.utils.io import CheckpointError, copy_named_tensors
from viscoin.utils.weights import imagenet_cache_path, imagenet_weights_file, imagenet_weights_url, read_state_dict_file


def _missing_message(arch: str, release: str, path: Path, explicit: bool) -> str:
    url = imagenet_weights_url(arch, release)
    cache = imagenet_cache_path(arch, release)
    if explicit:
        return (
            f"ImageNet weights for {arch} not found: classifier.weights_path = {path} does not exist. "
            f"viscoin never downloads; fetch {url} (torchvision's {release} weights) and put it at {path}, "
            f"or unset classifier.weights_path to use torchvision's cache file {cache}"
        )
    return (
        f"ImageNet weights for {arch} ({release}) not found: expected torchvision's cache file {path} "
        f"(file {path.name} in folder {path.parent}). viscoin never downloads; fetch {url} and put it "
        f"there (for example: mkdir -p {path.parent} && curl -L -o {path} {url}), or set the config "
        f"option classifier.weights_path to a local copy (.pth or .safetensors). "
        f"(The folder follows torch.hub.get_dir(): $TORCH_HOME/hub, default ~/.cache/torch/hub.)"
    )


def load_imagenet_weights(model: nn.Module) -> None:
    """Initialise `model`'s backbone (a `viscoin.classifier.Classifier`) from torchvision's ImageNet weights, read from a local file.

    The file is ``model.config.weights_path`` or, if unset, torchvision's cache file of
    ``model.config.imagenet_weights`` for ``model.config.arch``. Its ``fc.*`` entries (the
    1000-class head) are dropped; everything else must match the backbone by name and shape
    (BatchNorm's ``num_batches_tracked`` may be absent, as in torchvision's older files).
    Records ``model.imagenet_source = {"imagenet_weights_file": ..., "release": ...}``.

    Raises `FileNotFoundError` (message: expected path, download URL, ``classifier.weights_path``)
    when the file is missing, and `CheckpointError` naming the file and the offending keys when it
    is not a matching state dict.
    """
    cfg = model.config
    path = imagenet_weights_file(cfg.arch, cfg.imagenet_weights, cfg.weights_path)
    if not path.is_file():
        raise FileNotFoundError(_missing_message(cfg.arch, cfg.imagenet_weights, path, cfg.weights_path is not None))
    tensors = read_state_dict_file(path)
    net = model.net
    own = net.state_dict()
    backbone = {k: v for k, v in tensors.items() if not k.startswith("fc.")}
    # The new head keeps its own initialisation; old torchvision files lack num_batches_tracked.
    for name, value in own.items():
        if name.startswith("fc.") or (name.endswith("num_batches_tracked") and name not in backbone):
            backbone[name] = value
    where = f"ImageNet weights file {path}"
    try:
        copy_named_tensors(net, backbone, where=where)
    except CheckpointError as exc:
        raise CheckpointError(
            f"{exc}. Expected torchvision's {cfg.arch} ImageNet state dict (classifier.arch = {cfg.arch!r}); "
            f"check classifier.weights_path / classifier.arch"
        ) from exc
    model.imagenet_source = {
        "imagenet_weights_file": str(path),
        "release": cfg.imagenet_weights if cfg.weights_path is None else None,
    }
