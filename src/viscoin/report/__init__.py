"""The static HTML report of a trained VisCoIN (`viscoin report`).

- `write_report` (`viscoin.report.html`): ``index.html`` + ``figures/*.png``, self-contained;
- `viscoin.report.cli`: the `viscoin report CHECKPOINT` command hooks.
"""

from viscoin.report.html import write_report

__all__ = ["write_report"]
