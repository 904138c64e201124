"""The classifier `f` of VisCoIN: a torchvision ResNet with a new head, inputs in [-1, 1].

    f = Classifier(ClassifierConfig(arch="resnet50", num_classes=200))   # ImageNet weights from a local file
    logits = f(x)                        # x in [-1, 1], [N, 3, H, W] -> [N, C]
    feats = f.features(x)                # {"layer2": ..., "layer3": ..., "layer4.1": ..., "logits": ...}
    save_classifier(f, "nets/cub_f");  f = load_classifier("nets/cub_f")   # frozen by default
"""

from viscoin.classifier.model import (
    ARCH_BLOCKS,
    FORMAT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LOGITS,
    Classifier,
    ClassifierConfig,
    load_classifier,
    read_classifier_info,
    resolve_tap,
    save_classifier,
)
from viscoin.classifier.pretrained import load_imagenet_weights

__all__ = [
    "ARCH_BLOCKS",
    "FORMAT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LOGITS",
    "Classifier",
    "ClassifierConfig",
    "load_classifier",
    "load_imagenet_weights",
    "read_classifier_info",
    "resolve_tap",
    "save_classifier",
]
