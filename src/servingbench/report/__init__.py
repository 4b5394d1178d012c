"""Reports and run comparison: metrics registry, tables, figures, HTML/Markdown rendering, ``compare``.

Public API (imported lazily, so ``import servingbench.report`` does not load pandas or matplotlib)::

    write_report(results_dir, out_root=Path("reports")) -> Path      # reports/<run-id>/index.html
    compare_runs(run_a, run_b, threshold=0.05) -> pandas.DataFrame
    render_compare_text(df) -> str
    write_compare_html(df, path) -> Path
"""

from __future__ import annotations

from typing import Any

__all__ = ["write_report", "compare_runs", "render_compare_text", "write_compare_html"]

_WHERE = {"write_report": "build", "compare_runs": "compare", "render_compare_text": "compare",
          "write_compare_html": "compare"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"servingbench.report.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'servingbench.report' has no attribute {name!r}")
