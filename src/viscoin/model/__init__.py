"""Concept models (paper section 3): the contract every one obeys, and VisCoIN (sections 3.2-3.4).

    model = load_viscoin("runs/viscoin-cub/viscoin")     # f and G from the recorded paths, checked
    enc = model.encode(x)                                # f's logits, Φ(x), Φ'(x), g's logits; x in [-1, 1]
    r = model.relevance(enc.phi)                         # local relevance (section 3.5)
    x_rec = model.decode(enc.phi, enc.support)           # G(w̄ + Ω(Φ(x), Φ'(x))) (eq. 1)
    x_lam = model.decode(phi * scale, enc.support)       # scale a concept and look

- `viscoin.model.contract`: `ConceptModel`, `Encoding` (the public contract);
- `viscoin.model.relevance`: local and global relevance, concept selection, most activating samples;
- `viscoin.model.passes`: `Encoded` and `encode_dataset` (one pass over a dataset), batched decoding;
- `viscoin.model.concepts`: VisCoIN's Ψ, Θ, Ω; `viscoin.model.viscoin_model`: VisCoIN itself;
- `viscoin.model.losses`, `viscoin.model.perceptual`, `viscoin.model.train`: its training (eqs. 2-5);
- `viscoin.model.loading`: any trained concept model with its data (`load_trained`).
"""

from viscoin.model.concepts import ConceptExtractor, ConceptPredictor, ConceptTranslator
from viscoin.model.contract import ConceptModel, Encoding, state_fingerprint
from viscoin.model.losses import LossConfig, viscoin_losses
from viscoin.model.viscoin_model import VisCoIN, VisCoINConfig, load_viscoin, save_viscoin

__all__ = [
    "ConceptExtractor",
    "ConceptModel",
    "ConceptPredictor",
    "ConceptTranslator",
    "Encoding",
    "LossConfig",
    "VisCoIN",
    "VisCoINConfig",
    "load_viscoin",
    "save_viscoin",
    "state_fingerprint",
    "viscoin_losses",
]
