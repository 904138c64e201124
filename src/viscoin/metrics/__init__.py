"""The paper's evaluation metrics (section 4.1, appendices B.3 and C), for any concept model.

- `viscoin.metrics.fidelity`: accuracy of g and f and their agreement; reconstruction MSE,
  LPIPS and FID (`viscoin.utils.fid`);
- `viscoin.metrics.faithfulness`: median FF_x at thresholds τ with the random-concept baseline;
- `viscoin.metrics.consistency`: linear-SVM separability of concept edits on f's layer2 features;
- `viscoin.metrics.ground_truth`: concept-attribute alignment and visualisation correctness
  (beyond the paper, where attribute labels exist);
- `viscoin.metrics.evaluate`: `EvaluateConfig`, `evaluate_model`, `evaluate_checkpoint`,
  `markdown_tables`.

Every metric reads a model only through the concept-model contract (`viscoin.model.contract`).
Relevance (section 3.5) lives with the model: `viscoin.model.relevance`.
"""

from viscoin.metrics.evaluate import EvaluateConfig, evaluate_checkpoint, evaluate_model, markdown_tables

__all__ = ["EvaluateConfig", "evaluate_checkpoint", "evaluate_model", "markdown_tables"]
