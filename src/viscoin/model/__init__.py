"""The VisCoIN model (paper sections 3.2-3.4): Ψ, Θ, Ω around a frozen classifier f and generator G.

    model = load_viscoin("runs/viscoin-cub/viscoin")     # f and G from the recorded paths, checked
    phi, support = model.concepts(x)                     # x in [-1, 1]
    probs = model.predict(x)                             # g(x)
    x_rec = model.reconstruct(x)                         # G(w̄ + Ω(Φ(x), Φ'(x)))
    x_lam = model.generate(phi * scale, support)         # scale a concept and look
"""

from viscoin.model.concepts import ConceptExtractor, ConceptPredictor, ConceptTranslator
from viscoin.model.losses import LossConfig, viscoin_losses
from viscoin.model.viscoin import VisCoIN, VisCoINConfig, load_viscoin, save_viscoin, state_fingerprint

__all__ = [
    "ConceptExtractor",
    "ConceptPredictor",
    "ConceptTranslator",
    "LossConfig",
    "VisCoIN",
    "VisCoINConfig",
    "load_viscoin",
    "save_viscoin",
    "state_fingerprint",
    "viscoin_losses",
]
