"""Interpreting VisCoIN (method page, "Interpretation (section 3.5)"; paper figure 4, appendix E).

- `ConceptExplainer` (`viscoin.interpret.concepts`): local and global relevance, top concepts of
  an image or a class (threshold or top-k), most activating samples of a concept (overall or per
  class), λ sweeps of a concept on an image (Φ' and noise fixed), difference images and energy;
- `viscoin.interpret.plot`: the figures (PIL only), e.g. `explain_figure`;
- `viscoin.interpret.cli`: the `viscoin explain CHECKPOINT IMAGE` command hooks.

Results are plain tensors or dicts of them; plotting is separate and optional.
"""

from viscoin.interpret.concepts import (
    DEFAULT_LAMBDAS,
    ConceptActivations,
    ConceptExplainer,
    difference,
    difference_energy,
    reverse_difference,
    select_concepts,
    top_activating,
)

__all__ = [
    "DEFAULT_LAMBDAS",
    "ConceptActivations",
    "ConceptExplainer",
    "difference",
    "difference_energy",
    "reverse_difference",
    "select_concepts",
    "top_activating",
]
