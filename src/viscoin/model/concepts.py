"""VisCoIN's trainable parts: the concept extractor Ψ, the predictor Θ and the concept translator Ω.

Shapes follow the paper (section 3.2, appendix B.1.1: Ψ, Θ, Ω and the reconstruction); every size is
derived from the classifier's taps and the input resolution, never fixed to ResNet50 at 256x256.
In dependency order: `TapAdapter` -> `ConceptExtractor` (Ψ) -> `ConceptPredictor` (Θ) ->
`ConceptTranslator` (Ω).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CONCEPT_GRID = 3  # each concept is a 3x3 map (method: φ_k(x) ∈ R^{3x3})


class TapAdapter(nn.Module):
    """Conv + ReLU bringing one classifier tap to the lowest tap resolution (Ψ's first layer).

    Stride s = H_tap / H_low; kernel 2·(s//2)+1 for s > 1 (5x5 for s = 4, 3x3 for s = 2 as in the
    paper), 3x3 for s = 1; padding keeps the output at H_low. Should an odd map size make it miss
    by one pixel, adaptive average pooling fixes the size.
    """

    def __init__(
        self,
        in_channels: int,      # channels of the tap
        in_size: int,          # spatial size of the tap
        out_size: int,         # target spatial size (the smallest tap's)
        channels: int,         # output channels (512 in the paper)
    ) -> None:
        super().__init__()
        stride = max(1, in_size // out_size)
        kernel = 2 * (stride // 2) + 1 if stride > 1 else 3
        self.out_size = out_size
        self.conv = nn.Conv2d(in_channels, channels, kernel, stride=stride, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        if x.shape[-1] != self.out_size or x.shape[-2] != self.out_size:
            x = F.adaptive_avg_pool2d(x, self.out_size)
        return x


class ConceptExtractor(nn.Module):
    """Ψ: classifier taps -> concept maps Φ(x) [N, K, 3, 3] (non-negative) and support Φ'(x) [N, 9K]."""

    def __init__(
        self,
        tap_shapes: dict[str, tuple[int, int, int]],  # (C, H, W) of each classifier tap at the input resolution
        num_concepts: int,                            # K
        adapter_channels: int = 512,                  # channels of each tap after its adapter conv
        use_support: bool = True,                     # False: no support branch (ablation); Φ' is None
    ) -> None:
        super().__init__()
        self.tap_names = list(tap_shapes)
        self.num_concepts = num_concepts
        self.use_support = use_support
        low = min(h for _, h, _ in tap_shapes.values())
        self.low_size = low
        self.adapters = nn.ModuleDict(
            {name.replace(".", "_"): TapAdapter(c, h, low, adapter_channels) for name, (c, h, _) in tap_shapes.items()}
        )
        fused = adapter_channels * len(tap_shapes)
        self.fuse = nn.Conv2d(fused, fused, 3, padding=1)
        # Concept branch: the 1x1 conv whose weights the orthogonality loss acts on.
        self.concept_conv = nn.Conv2d(fused, num_concepts, 1)
        size = num_concepts * CONCEPT_GRID * CONCEPT_GRID
        if use_support:
            self.support = nn.Sequential(
                nn.Flatten(),
                nn.Linear(fused * CONCEPT_GRID * CONCEPT_GRID, size),
                nn.ReLU(),
                nn.Linear(size, size),
            )

    def forward(self, taps: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        missing = [t for t in self.tap_names if t not in taps]
        if missing:
            raise ValueError(f"Ψ expects classifier taps {self.tap_names}; missing {missing}")
        x = torch.cat([self.adapters[t.replace(".", "_")](taps[t]) for t in self.tap_names], dim=1)
        x = F.relu(self.fuse(x))                                           # [N, fused, h, h]
        phi = F.adaptive_avg_pool2d(F.relu(self.concept_conv(x)), CONCEPT_GRID)  # [N, K, 3, 3]
        support = None
        if self.use_support:
            support = self.support(F.adaptive_avg_pool2d(x, CONCEPT_GRID))  # [N, 9K]
        return phi, support

    def orthogonality_loss(self, reduction: str = "sum") -> torch.Tensor:
        """L_orth = ‖VᵀV − I‖²_F, V = the concept conv weights as (inputs × K), columns L2-normalised (eq. 5).

        reduction "sum": the Frobenius norm as written in eq. 5, a sum over the K² entries (about
        K²/inputs at initialisation: ≈43 for K = 256 at the paper's size, against O(1) for every
        other term); "mean": divided by K², so its scale no longer grows with K.
        """
        v = self.concept_conv.weight.flatten(1).t()                         # [inputs, K]
        v = F.normalize(v, dim=0)
        gram = v.t() @ v
        sq = (gram - torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)).square()
        if reduction == "sum":
            return sq.sum()
        if reduction == "mean":
            return sq.mean()
        raise ValueError(f"orthogonality reduction: expected 'sum' or 'mean', got {reduction!r}")


class ConceptPredictor(nn.Module):
    """Θ: g(x) = softmax(Wᵀ maxpool(Φ(x))) (section 3.2), with dropout on the concept maps. Returns the logits.

    The paper's g has no bias, so a class's logit is a sum of concept contributions only (and the
    relevance of section 3.3 accounts for all of it); ``bias=True`` adds one per class.
    """

    def __init__(
        self,
        num_concepts: int,       # K
        num_classes: int,        # C
        dropout: float = 0.01,   # dropout on Φ before pooling (authors' code)
        bias: bool = False,      # a bias per class (not in the paper)
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(num_concepts, num_classes, bias=bias)

    def pool(self, phi: torch.Tensor) -> torch.Tensor:
        """Pooled activations a_j(x) = maxpool(φ_j(x)): [N, K, 3, 3] -> [N, K]."""
        return phi.amax(dim=(2, 3))

    def forward(self, phi: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pool(self.dropout(phi)))                    # [N, C] logits


class ConceptTranslator(nn.Module):
    """Ω: one plain linear layer per W+ vector; the offsets it predicts are added to G's w̄ (eq. 1).

    Vectors [0, support_first) and [num_ws − support_last, num_ws) read Φ'(x) (9K numbers), the
    others read Φ(x) flattened (paper: first 3 and last 2 at 256x256; the same rule at every
    resolution is ours). Without a support branch every vector reads Φ(x).
    """

    def __init__(
        self,
        num_concepts: int,        # K
        num_ws: int,              # number of W+ vectors of G
        w_dim: int,               # size of each W+ vector
        use_support: bool = True, # whether Φ' exists
        support_first: int = 3,   # leading W+ vectors predicted from Φ'
        support_last: int = 2,    # trailing W+ vectors predicted from Φ'
        init: str = "default",    # "default": PyTorch's uniform init; "zeros": all weights and biases 0 (below)
    ) -> None:
        super().__init__()
        if use_support and support_first + support_last >= num_ws:
            raise ValueError(
                f"Ω: {support_first} + {support_last} W+ vectors from Φ' leave none for Φ (G has num_ws={num_ws}); "
                "use a generator of at least 16x16 or fewer support vectors"
            )
        self.num_ws = num_ws
        self.w_dim = w_dim
        in_features = num_concepts * CONCEPT_GRID * CONCEPT_GRID
        self.from_support = [
            use_support and (i < support_first or i >= num_ws - support_last) for i in range(num_ws)
        ]
        self.layers = nn.ModuleList(nn.Linear(in_features, w_dim) for _ in range(num_ws))
        if init == "zeros":
            for layer in self.layers:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        elif init != "default":
            raise ValueError(f"Ω init: expected 'default' or 'zeros', got {init!r}")

    def forward(self, phi: torch.Tensor, support: torch.Tensor | None) -> torch.Tensor:
        """Offsets from w̄: [N, num_ws, w_dim]."""
        flat = phi.flatten(1)
        if any(self.from_support) and support is None:
            raise ValueError("Ω: this model uses a support branch; Φ' is required")
        out = [layer(support if s else flat) for layer, s in zip(self.layers, self.from_support)]
        return torch.stack(out, dim=1)
