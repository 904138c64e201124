"""Interpreting a concept model (paper section 3.5, figure 4, appendix E).

- `ConceptExplainer` (`viscoin.interpret.explainer`): local and global relevance, top concepts of
  an image or a class (threshold or top-k), most activating samples of a concept (overall or per
  class), λ sweeps of a concept on an image (Φ' and noise fixed), difference images and energy;
- `viscoin.interpret.plot`: the figures (PIL only), e.g. `explain_figure`;
- `viscoin.interpret.explain`: `explain_image`, one image's prediction explained into a figure.

Results are plain tensors or dicts of them; plotting is separate and optional. The relevance
formulas, concept selection and most activating samples live with the model
(`viscoin.model.relevance`).
"""

from viscoin.interpret.explainer import (
    DEFAULT_LAMBDAS,
    ConceptExplainer,
    difference,
    difference_energy,
    reverse_difference,
)

__all__ = [
    "DEFAULT_LAMBDAS",
    "ConceptExplainer",
    "difference",
    "difference_energy",
    "reverse_difference",
]
