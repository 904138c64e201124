"""Evaluation metrics of VisCoIN (``shared/docs/method.md``, "Interpretation" and "Evaluation").

- `viscoin.metrics.relevance`: local relevance r_{j,x} and global relevance r_{j,c};
- `viscoin.metrics.fidelity`: accuracy of g and f and their agreement; reconstruction MSE,
  LPIPS and FID (`viscoin.metrics.fid`);
- `viscoin.metrics.faithfulness`: median FF_x at thresholds τ with the random-concept baseline;
- `viscoin.metrics.consistency`: linear-SVM separability of concept edits on f's layer2 features;
- `viscoin.metrics.evaluate`: `EvaluateConfig`, `evaluate_checkpoint`, `markdown_tables` and the
  `viscoin evaluate` CLI hooks.

Heavy submodules (scikit-learn, torchmetrics) are imported only when used.
"""

from viscoin.metrics.relevance import global_relevance, global_relevance_from, local_relevance, predicted_class

__all__ = ["global_relevance", "global_relevance_from", "local_relevance", "predicted_class"]
