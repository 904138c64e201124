"""What a concept looks like, for any concept model: each family's own visualisation of concept j.

The VisCoIN paper compares the visualisations of the three systems (section 4.2 and appendix C.2,
"FID of visualisations"); each family shows a concept its own way, named by the model's
``visualisation`` class attribute (`viscoin.model.contract.ConceptModel`):

- ``"decoder"`` (VisCoIN, FLAEM): the decoder's image of x's concepts with φ_j(x) multiplied by
  λ_max, all else fixed (VisCoIN: ``G(w̄ + Ω(Φ_λ(x), Φ'(x)))``, its largest λ; FLAEM: its
  decoder's image of the scaled concept). The scaling is the λ sweep of
  `viscoin.interpret.explainer.ConceptExplainer.lambda_sweep`.
- ``"activation_maximisation"`` (FLINT): starting from 0.5 × x (x a maximally activating sample),
  gradient ascent on the input of

      a·φ_j(x) − range_penalty·mean(|x|·[|x| > bound]) − λ_tv·TV(x),
      TV(x) = mean |∂_y x| + mean |∂_x x|,

  with φ_j = pool(Φ(x))_j through the frozen f (gradients reach x only), in rounds k = 0, 1, ...
  each with a fresh Adam at lr/1.5^k, a random circular shift of the input at every step, and two
  stages: λ_tv = 80 with `steps_a` steps a round, then from that result λ_tv = 240 with `steps_b`
  steps a round. FLINT's CUB code runs 12 rounds × (200 + 180) = 4,560 steps
  (`ActivationMaximisationConfig.flint_code()`); the VisCoIN paper ran 1000 steps, our default
  (10 rounds × (50 + 50)). The images stay in viscoin's [-1, 1] space, f's input; the result is
  clamped to [-1, 1].

Where FLINT works in f's ImageNet-normalised space ``x_n = ((x + 1)/2 − μ)/σ`` and we work on x in
[-1, 1]: ``x = 2σ·x_n + (2μ − 1)``, so a distance of 2.5 in normalised units (FLINT's bound, about
the edge of the valid pixel range there) is ``2.5 · 2σ`` in [-1, 1] units; with σ the mean of the
ImageNet channel deviations (0.226) the bound is 2.5 · 0.452 = 1.13, just beyond the edge (1) of
our range, as FLINT's is just beyond the edge of its own (−2.1 to 2.6). The penalty is taken about
0 (FLINT's about the channel means, a shift of 2μ − 1 ≈ −0.1 here). TV and the penalty are measured
in [-1, 1] units (1/(2σ) ≈ 2.2 times smaller than FLINT's for the same image); the weights are
FLINT's, configurable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from viscoin.classifier.model import IMAGENET_STD
from viscoin.interpret.explainer import DEFAULT_LAMBDAS, ConceptExplainer
from viscoin.model.contract import ConceptModel
from viscoin.utils.config import ConfigError, DictConfig
from viscoin.utils.iteration import batches, progress_bar

VISUALISATIONS = ("decoder", "activation_maximisation")
FLINT_BOUND = 2.5                                  # FLINT's range bound, in ImageNet-normalised units
AM_BOUND = FLINT_BOUND * 2 * sum(IMAGENET_STD) / len(IMAGENET_STD)   # the same in [-1, 1] units (1.13)
SHIFT_RESOLUTION = 224                             # FLINT's ±10-pixel shifts are at 224×224
LAMBDA_MAX = max(DEFAULT_LAMBDAS)                  # VisCoIN's largest λ (4)


@dataclass(frozen=True)
class ActivationMaximisationConfig(DictConfig):
    """FLINT's activation maximisation (module docstring); default: the VisCoIN paper's 1000 steps."""

    rounds: int = 10                  # rounds per stage, each with a fresh Adam at lr / lr_decay^k
    steps_a: int = 50                 # steps per round of stage a (λ_tv = tv_a)
    steps_b: int = 50                 # steps per round of stage b (λ_tv = tv_b), from stage a's result
    lr: float = 0.01                  # Adam's learning rate in round 0
    lr_decay: float = 1.5             # round k runs at lr / lr_decay^k
    tv_a: float = 80.0                # λ_tv of stage a
    tv_b: float = 240.0               # λ_tv of stage b
    activation_weight: float = 4.0    # a, the weight of φ_j(x)
    range_penalty: float = 20.0       # weight of mean(|x|·[|x| > bound])
    bound: float = AM_BOUND           # FLINT's 2.5 (normalised) in [-1, 1] units
    init_scale: float = 0.5           # start from init_scale × the maximally activating sample
    max_shift: int = 10               # random circular shift, ± pixels at 224×224 (scaled to the resolution)
    seed: int = 0                     # seeds the shifts

    def __post_init__(self) -> None:
        for name in ("rounds", "steps_a", "steps_b", "max_shift"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "rounds" else 0):
                raise ConfigError(f"am.{name}: expected an integer >= {1 if name == 'rounds' else 0}, got {value!r}")
        if self.steps_a + self.steps_b < 1:
            raise ConfigError("am.steps_a + am.steps_b: expected at least one step per round")
        if self.lr <= 0 or self.lr_decay < 1 or self.bound <= 0 or not 0 <= self.init_scale <= 1:
            raise ConfigError(f"am: expected lr > 0, lr_decay >= 1, bound > 0 and 0 <= init_scale <= 1; got "
                              f"{self.lr}, {self.lr_decay}, {self.bound}, {self.init_scale}")

    @property
    def total_steps(self) -> int:
        """Steps of both stages: rounds × (steps_a + steps_b)."""
        return self.rounds * (self.steps_a + self.steps_b)

    @classmethod
    def flint_code(cls, **changes: Any) -> ActivationMaximisationConfig:
        """FLINT's released CUB setting: 12 rounds × (200 + 180) = 4,560 steps."""
        return cls(**{"rounds": 12, "steps_a": 200, "steps_b": 180, **changes})

    def start(self, x0: torch.Tensor) -> torch.Tensor:
        """Where the optimisation starts: init_scale × the maximally activating samples, in [-1, 1]."""
        return (self.init_scale * x0.detach().float()).clamp(-1, 1)

    def shift_pixels(self, resolution: int) -> int:
        """The largest shift at `resolution`: max_shift scaled from 224 (at least 1 when max_shift > 0)."""
        return 0 if self.max_shift == 0 else max(1, round(self.max_shift * resolution / SHIFT_RESOLUTION))


class ActivationMaximisation(NamedTuple):
    """Result of `activation_maximisation`: images [N, 3, R, R] in [-1, 1] (CPU) and what ran."""

    images: torch.Tensor
    record: dict[str, Any]


def _concept_rows(concept: int | Sequence[int] | torch.Tensor, n: int, k: int) -> torch.Tensor:
    """One concept index per image [n] (int64, CPU), checked to be in [0, K)."""
    rows = torch.as_tensor(concept, dtype=torch.long).flatten().cpu()
    rows = rows.expand(n).clone() if rows.numel() == 1 else rows
    if rows.numel() != n:
        raise ValueError(f"concept: expected one index or one per image ({n}), got {rows.numel()}")
    if n and (int(rows.min()) < 0 or int(rows.max()) >= k):
        raise ValueError(f"concept: expected indices in [0, {k}), got {rows.tolist()}")
    return rows


def concept_activation(model: ConceptModel, x: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
    """a_j(x) = pool(Φ(x))_j of each image's concept [N] (differentiable w.r.t. x when x requires it)."""
    pooled = model.pool(model.encode(x).phi)                                   # [N, K]
    assert pooled.shape == (x.shape[0], model.num_concepts), (pooled.shape, model.num_concepts)
    return pooled.gather(1, concepts.to(pooled.device).view(-1, 1)).squeeze(1)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """TV(x) = mean |∂_y x| + mean |∂_x x| per image [N] (FLINT's smoothness term)."""
    return (x[:, :, 1:] - x[:, :, :-1]).abs().mean(dim=(1, 2, 3)) + (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3))


def range_excess(x: torch.Tensor, bound: float) -> torch.Tensor:
    """mean(|x|·[|x| > bound]) per image [N] (FLINT's range penalty)."""
    mag = x.abs()
    return (mag * (mag > bound)).mean(dim=(1, 2, 3))


def activation_maximisation(
    model: ConceptModel,
    x0: torch.Tensor,                                   # maximally activating samples [N, 3, R, R] (or [3, R, R]) in [-1, 1]
    concept: int | Sequence[int] | torch.Tensor,        # concept j, or one per image [N]
    cfg: ActivationMaximisationConfig = ActivationMaximisationConfig(),
) -> ActivationMaximisation:
    """FLINT's activation maximisation of concept j from ``init_scale × x0`` (module docstring), for any
    concept model. Images are optimised independently (one shared shift per step); the model's weights
    get no gradients. Seeded by ``cfg.seed``; the model's train/eval mode is restored."""
    x0 = x0.unsqueeze(0) if x0.ndim == 3 else x0
    model.check_images(x0)
    n = x0.shape[0]
    concepts = _concept_rows(concept, n, model.num_concepts)
    shift = cfg.shift_pixels(model.resolution)
    gen = torch.Generator().manual_seed(cfg.seed)
    was = model.training
    model.eval()
    x = cfg.start(x0).to(model.device)
    with torch.no_grad():
        initial = concept_activation(model, x, concepts).float().cpu()
    for stage, (steps, tv) in enumerate(((cfg.steps_a, cfg.tv_a), (cfg.steps_b, cfg.tv_b))):
        for k in range(cfg.rounds if steps else 0):
            x = x.detach().requires_grad_(True)
            opt = torch.optim.Adam([x], lr=cfg.lr / cfg.lr_decay ** k)
            for _ in range(steps):
                dy, dx = (torch.randint(-shift, shift + 1, (2,), generator=gen).tolist() if shift else (0, 0))
                with torch.enable_grad():
                    act = concept_activation(model, torch.roll(x, (dy, dx), dims=(2, 3)), concepts)
                    if not act.requires_grad:
                        raise ValueError(f"{model.family}: encode(x) gives Φ(x) no gradient w.r.t. x; activation "
                                         "maximisation needs it (see the contract's encode)")
                    objective = (cfg.activation_weight * act - cfg.range_penalty * range_excess(x, cfg.bound)
                                 - tv * total_variation(x))
                    (grad,) = torch.autograd.grad(-objective.sum(), x)      # to x only, never to the model
                opt.zero_grad(set_to_none=True)
                x.grad = grad
                opt.step()
    x = x.detach().clamp(-1, 1)
    with torch.no_grad():
        final = concept_activation(model, x, concepts).float().cpu()
    model.train(was)
    record = {"kind": "activation_maximisation", "steps": cfg.total_steps, "rounds": cfg.rounds,
              "steps_a": cfg.steps_a, "steps_b": cfg.steps_b, "lambda_tv": [cfg.tv_a, cfg.tv_b], "lr": cfg.lr,
              "lr_decay": cfg.lr_decay, "bound": cfg.bound, "shift_pixels": shift, "seed": cfg.seed,
              "concepts": concepts.tolist(), "initial_activation": initial.tolist(), "final_activation": final.tolist()}
    return ActivationMaximisation(x.cpu(), record)


# ---------------------------------------------------------------------------------------------
# Each family's visualisation


@dataclass
class Visualisation:
    """Each image's visualisation of its concept: images [N, 3, R, R] in [-1, 1] (CPU), what they show, what ran."""

    images: torch.Tensor
    kind: str                                        # "decoder" or "activation_maximisation"
    what: str                                        # one sentence for captions
    record: dict[str, Any] = field(default_factory=dict)


def visualisation_kind(model: ConceptModel) -> str:
    """The model's ``visualisation`` ("decoder" or "activation_maximisation"), checked."""
    kind = getattr(model, "visualisation", "decoder")
    if kind not in VISUALISATIONS:
        raise ValueError(f"{model.family}: visualisation {kind!r} is not one of {list(VISUALISATIONS)}")
    return str(kind)


def describe_visualisation(kind: str, lambdas: Sequence[float] = (LAMBDA_MAX,),
                           am: ActivationMaximisationConfig = ActivationMaximisationConfig()) -> str:
    """What a visualisation of `kind` shows (decoder: at each of `lambdas`), in one sentence."""
    if kind == "decoder":
        lam = f"λ = {lambdas[0]:g}" if len(lambdas) == 1 else f"λ ∈ {{{', '.join(f'{v:g}' for v in lambdas)}}}"
        return (f"the decoder's image of the sample's own concepts with φ_j multiplied by {lam} "
                "(the other concepts and Φ' fixed; λ = 1 is the reconstruction, λ = 0 removes the concept)")
    return (f"activation maximisation of φ_j from {am.init_scale:g} × the sample ({am.total_steps} steps: "
            f"{am.rounds} rounds × ({am.steps_a} + {am.steps_b}), TV and range penalties, random shifts)")


def concept_visualisations(
    model: ConceptModel,
    images: torch.Tensor,                               # samples [N, 3, R, R] in [-1, 1] (maximally activating ones)
    concept: int | Sequence[int] | torch.Tensor,        # concept j, or one per image [N]
    lambda_max: float = LAMBDA_MAX,                     # "decoder": the multiplier of φ_j
    am: ActivationMaximisationConfig = ActivationMaximisationConfig(),  # "activation_maximisation": its setting
    batch_size: int = 32,
    progress: bool = False,
) -> Visualisation:
    """What the model's family shows for each image's concept (module docstring): the decoded image with φ_j
    scaled to `lambda_max`, or activation maximisation from the image."""
    images = images.unsqueeze(0) if images.ndim == 3 else images
    model.check_images(images)
    n = images.shape[0]
    if n == 0:
        raise ValueError("images: expected at least one image")
    concepts = _concept_rows(concept, n, model.num_concepts)
    kind = visualisation_kind(model)
    out = torch.empty(n, 3, model.resolution, model.resolution)
    record: dict[str, Any] = {"kind": kind, "count": n}
    if kind == "decoder":
        explainer = ConceptExplainer(model, batch_size=batch_size)
        for j in progress_bar(concepts.unique().tolist(), "decoded concepts", progress):
            rows = torch.nonzero(concepts == j).flatten()
            out[rows] = explainer.lambda_sweep(images[rows], j, (lambda_max,))[:, 0].float().clamp(-1, 1)
        record["lambda"] = lambda_max
    else:
        runs = []
        for sl in progress_bar(list(batches(n, batch_size)), "activation maximisation", progress):
            result = activation_maximisation(model, images[sl], concepts[sl], am)
            out[sl] = result.images
            runs.append(result.record)
        record.update({k: v for k, v in runs[0].items() if k not in ("concepts", "initial_activation", "final_activation")})
        for key in ("initial_activation", "final_activation"):
            record[key] = [a for r in runs for a in r[key]]
    assert out.shape == images.shape, (out.shape, images.shape)
    return Visualisation(out, kind, describe_visualisation(kind, (lambda_max,), am), record)
