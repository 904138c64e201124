"""The static HTML report of a trained concept model (`viscoin report`).

`write_report` (`viscoin.report.html`): ``index.html`` + ``figures/*.png``, self-contained; and
where a report goes and where its metrics come from (`default_out_dir`, `default_metrics_file`).
"""

from viscoin.report.html import default_metrics_file, default_out_dir, read_metrics, write_report

__all__ = ["default_metrics_file", "default_out_dir", "read_metrics", "write_report"]
