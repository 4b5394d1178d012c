"""Figures (matplotlib, Agg): one consistent colour, marker and line style per framework, readable in grey.

Every function takes tidy frames (see :mod:`servingbench.report.analysis`), draws one figure and returns it; the
caller saves it.  Axes carry units; the legend names frameworks; nothing depends on colour alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from servingbench.report.data import FRAMEWORK_ORDER  # noqa: E402
from servingbench.report.metrics import METRICS, Metric  # noqa: E402

# Okabe-Ito colour-blind-safe palette; markers, hatches and dashes differ too so print in grey still works.
_COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#000000", "#56B4E9", "#8C564B"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
_DASHES: list[Any] = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (8, 2, 2, 2))]
_HATCHES = ["", "//", "..", "xx", "\\\\", "++", "oo", "--"]
INPROCESS_COLOUR = "#666666"
MARKER_SYMBOL = {"o": "●", "s": "■", "^": "▲", "D": "◆", "v": "▼", "P": "✚", "X": "✖", "*": "★"}


@dataclass(frozen=True)
class Style:
    colour: str
    marker: str
    dash: Any
    hatch: str
    hollow: bool = False  # second and later deployments of a framework: hollow markers

    def line_kw(self) -> dict[str, Any]:
        return dict(color=self.colour, marker=self.marker, linestyle=self.dash, markersize=6, linewidth=1.6,
                    markerfacecolor="white" if self.hollow else self.colour, markeredgecolor=self.colour)

    def bar_kw(self) -> dict[str, Any]:
        return dict(color="white" if self.hollow else self.colour, edgecolor=self.colour if self.hollow else "black",
                    hatch=self.hatch, linewidth=0.8)


def framework_style(framework: str, deployment_index: int = 0) -> Style:
    """The style of a framework; the same in every figure of every report (unknown names get a stable slot)."""
    if framework in FRAMEWORK_ORDER:
        i = FRAMEWORK_ORDER.index(framework)
    else:
        i = len(FRAMEWORK_ORDER) + (sum(map(ord, framework)) % (len(_COLOURS) - len(FRAMEWORK_ORDER)))
    return Style(_COLOURS[i], _MARKERS[i], _DASHES[i], _HATCHES[i], hollow=deployment_index > 0)


class Styler:
    """Styles for the cells of one run (display name -> style)."""

    def __init__(self, cells: pd.DataFrame) -> None:
        self._styles: dict[str, Style] = {}
        if cells.empty:
            return
        for fw, g in cells.sort_values(["fw_order", "deployment"]).groupby("framework", sort=False):
            for i, name in enumerate(dict.fromkeys(g["name"])):
                self._styles[name] = framework_style(fw, i)

    def __call__(self, name: str) -> Style:
        if name not in self._styles:
            self._styles[name] = framework_style(name.split("/")[0])
        return self._styles[name]


def _new(ncols: int = 1, width: float = 6.4, height: float = 4.0) -> tuple[Figure, list[plt.Axes]]:
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols if ncols > 1 else width, height), squeeze=False)
    for ax in axes[0]:
        ax.grid(True, which="major", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, list(axes[0])


def _log_if_wide(ax: plt.Axes, values: list[float], axis: str = "y") -> None:
    v = [x for x in values if x and x > 0 and math.isfinite(x)]
    if len(v) >= 2 and max(v) / min(v) > 20:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


# ---- latency vs throughput -----------------------------------------------------------------------------------------
def latency_vs_throughput(levels: pd.DataFrame, styler: Styler, model: str, slo_p99_s: float | None = None,
                          inprocess: dict[str, float] | None = None) -> Figure:
    """Two panels (p50, p99) of latency against achieved throughput, one line per cell and workload.

    ``levels``: aggregated load levels of one model (columns ``name``, ``workload``, ``kind``, ``load``,
    ``throughput_rps`` (+``_min``/``_max``), ``latency_p50_s`` ..., ``valid``).  Repeats give error bars (min-max).
    Invalid (flagged) points are drawn hollow and grey-edged.
    """
    fig, axes = _new(2, width=5.6, height=4.2)
    tp = METRICS["throughput_rps"]
    all_y: dict[str, list[float]] = {"latency_p50_s": [], "latency_p99_s": []}
    for ax, mname in zip(axes, ("latency_p50_s", "latency_p99_s")):
        m = METRICS[mname]
        for (name, workload), g in levels.groupby(["name", "workload"], sort=False):
            g = g.sort_values(["load"])
            st = styler(name)
            x = g["throughput_rps"].to_numpy(float)
            y = g[mname].to_numpy(float) * 1e3
            all_y[mname] += list(y)
            kw = st.line_kw()
            if g["kind"].iloc[0] == "open_loop":
                kw["linestyle"] = ":"
            elif g["kind"].iloc[0] == "shape":  # stages of one shape run: thin line, the framework's markers hollowed
                kw.update(linewidth=0.9, markerfacecolor="white" if kw["markerfacecolor"] != "white" else kw["color"])
            label = name if levels["workload"].nunique() == 1 else f"{name} · {workload}"
            xerr = yerr = None
            if (g["repeats"] > 1).any():
                xerr = np.vstack([x - g["throughput_rps_min"].to_numpy(float), g["throughput_rps_max"].to_numpy(float) - x])
                yerr = np.vstack([y - g[f"{mname}_min"].to_numpy(float) * 1e3,
                                  g[f"{mname}_max"].to_numpy(float) * 1e3 - y])
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, label=label, capsize=3, elinewidth=0.8, **kw)
            bad = ~g["valid"].to_numpy(bool)
            if bad.any():
                ax.scatter(x[bad], y[bad], s=110, facecolors="none", edgecolors="#999999", linewidths=1.2,
                           zorder=5, label=None)
            for xi, yi, ld in zip(x, y, g["load_label"]):
                if math.isfinite(xi) and math.isfinite(yi):
                    ax.annotate(ld, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7, color="#444")
        q = mname.replace("latency_", "").replace("_s", "")
        if inprocess and inprocess.get(q) is not None and math.isfinite(inprocess[q]):
            # The in-process limit's latency as a floor line (its throughput is off any useful x scale).
            ax.axhline(inprocess[q] * 1e3, color=INPROCESS_COLOUR, linestyle=(0, (1, 2)), linewidth=1.2,
                       label=f"in-process {q} (no server)")
            all_y[mname].append(inprocess[q] * 1e3)
        if slo_p99_s and mname == "latency_p99_s":
            ax.axhline(slo_p99_s * 1e3, color="#B22222", linestyle="--", linewidth=1)
            ax.annotate(f"SLO p99 {slo_p99_s * 1e3:g} ms", (0.01, slo_p99_s * 1e3), xycoords=("axes fraction", "data"),
                        textcoords="offset points", xytext=(0, 3), fontsize=8, color="#B22222")
        _log_if_wide(ax, all_y[mname])
        ax.set_xlabel(tp.label)
        ax.set_ylabel(m.label)
        ax.set_title(f"{model}: {m.title} vs throughput", fontsize=10)
        ax.set_xlim(left=0)
    handles, labels = [], []
    for ax in axes:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:
                handles.append(h)
                labels.append(l)
    # cells first, reference lines (in-process) last
    order = sorted(range(len(labels)), key=lambda i: (labels[i].startswith("in-process"), i))
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1 if len(labels) <= 4 else 0.16, 1, 1))
    fig.text(0.99, 0.005, "labels: load level; ringed: flagged (see validity)", ha="right", va="bottom", fontsize=7,
             color="#666")
    return fig


# ---- CDF ---------------------------------------------------------------------------------------------------------------
def latency_cdf(curves: list[tuple[str, np.ndarray, np.ndarray]], styler: Styler, model: str, load_label: str,
                slo_p99_s: float | None = None) -> Figure:
    """Empirical CDFs: ``curves`` = [(name, latency_s values ascending, cumulative fraction)]."""
    fig, (ax,) = _new(1, width=7.0, height=4.2)
    allx: list[float] = []
    for name, xs, ps in curves:
        st = styler(name)
        kw = st.line_kw()
        kw.pop("marker")
        ax.step(xs * 1e3, ps, where="post", label=name, **kw)
        # one marker every few steps so the curves can be told apart without colour
        idx = np.linspace(0, len(xs) - 1, num=min(len(xs), 8)).astype(int)
        ax.plot(xs[idx] * 1e3, ps[idx], linestyle="none", marker=st.marker, color=st.colour,
                markerfacecolor="white" if st.hollow else st.colour, markersize=5)
        allx += list(xs * 1e3)
    if slo_p99_s:
        ax.axvline(slo_p99_s * 1e3, color="#B22222", linestyle="--", linewidth=1, label=f"SLO p99 {slo_p99_s * 1e3:g} ms")
    for q in (0.5, 0.99):
        ax.axhline(q, color="#999", linewidth=0.7, linestyle=":")
        ax.annotate(f"p{q * 100:g}", (1.0, q), xycoords=("axes fraction", "data"), fontsize=7, color="#666",
                    xytext=(2, -3), textcoords="offset points")
    _log_if_wide(ax, allx, axis="x")
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("Latency (ms)")
    ax.set_ylabel("Fraction of requests ≤ latency")
    ax.set_title(f"{model}: latency CDF at {load_label}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


# ---- bars -------------------------------------------------------------------------------------------------------------
def num_label(v: float) -> str:
    """Bar annotation without scientific notation."""
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 0.01 or a == 0:
        return f"{v:.2f}"
    return f"{v:.2g}"


def grouped_bars(df: pd.DataFrame, styler: Styler, value: str, metric: Metric, title: str, group: str = "model",
                 err_lo: str | None = None, err_hi: str | None = None, annotate: bool = True,
                 ref_line: float | None = None, ref_label: str | None = None) -> Figure:
    """Bars of ``value`` per cell (``name``), grouped by ``group`` (e.g. model); optional min/max error bars.

    With a single group the cells themselves are the x axis (names as tick labels); otherwise bars are grouped and a
    legend below the axes names the cells.  Colour, hatch and tick/legend labels all identify the framework.
    """
    df = df.dropna(subset=[value])
    groups = list(dict.fromkeys(df[group])) if group in df else [""]
    names = list(dict.fromkeys(df["name"]))
    single = len(groups) <= 1
    width = 0.8 if single else 0.8 / max(1, len(names))
    n_bars = len(names) * (1 if single else len(groups))
    fig, (ax,) = _new(1, width=min(11.0, max(5.0, 2.2 + 0.75 * n_bars)), height=3.8 if single else 4.2)
    for i, name in enumerate(names):
        st = styler(name)
        xs, ys, lo, hi = [], [], [], []
        for j, gname in enumerate(groups):
            row = df[(df["name"] == name) & ((df[group] == gname) if group in df else True)]
            if row.empty:
                continue
            v = metric.axis_value(float(row[value].iloc[0]))
            xs.append(i if single else j + (i - (len(names) - 1) / 2) * width)
            ys.append(v)
            if err_lo and err_hi:
                lo.append(v - metric.axis_value(float(row[err_lo].iloc[0])))
                hi.append(metric.axis_value(float(row[err_hi].iloc[0])) - v)
        if not xs:
            continue
        yerr = np.vstack([lo, hi]) if lo else None
        bars = ax.bar(xs, ys, width=0.6 if single else width * 0.92, label=name, yerr=yerr, capsize=3,
                      **st.bar_kw())
        if annotate:
            for b_, v in zip(bars, ys):
                ax.annotate(num_label(v), (b_.get_x() + b_.get_width() / 2, max(b_.get_height(), 0)), ha="center",
                            va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    if ref_line is not None:
        ax.axhline(ref_line, color="#444", linestyle="--", linewidth=1)
        if ref_label:
            ax.annotate(ref_label, (0.01, ref_line), xycoords=("axes fraction", "data"), fontsize=8,
                        xytext=(0, 3), textcoords="offset points", color="#444")
    if single:
        ax.set_xlim(-0.7, max(len(names), 3) - 0.3)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names)
        ax.set_xlabel("framework")
        if groups and groups[0]:
            title = f"{title}: {groups[0]}"
    else:
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups)
        ax.set_xlabel(group.replace("_", " "))
        ax.legend(fontsize=8, ncol=min(len(names), 6), loc="upper center", bbox_to_anchor=(0.5, -0.18),
                  frameon=False)
    ax.set_ylabel(metric.label)
    ax.set_title(title, fontsize=10)
    if not df.empty and (df[value] >= 0).all():
        ax.set_ylim(bottom=0)
    ax.margins(y=0.15)
    fig.tight_layout()
    return fig


def paired_bars(df: pd.DataFrame, styler: Styler, cols: list[tuple[str, str]], metric: Metric, title: str) -> Figure:
    """Per cell (x axis), several related quantities side by side (e.g. ready vs cold start; idle vs peak PSS).

    ``cols`` = [(column, legend label)]; the first is solid, later ones hatched/lighter, colour = framework.
    """
    names = list(dict.fromkeys(df["name"]))
    fig, (ax,) = _new(1, width=max(5.5, 1.5 + 1.2 * len(names)), height=3.8)
    width = 0.8 / len(cols)
    for i, name in enumerate(names):
        st = styler(name)
        row = df[df["name"] == name].iloc[0]
        for k, (col, _lab) in enumerate(cols):
            v = row.get(col)
            if v is None or pd.isna(v):
                continue
            y = metric.axis_value(float(v))
            x = i + (k - (len(cols) - 1) / 2) * width
            ax.bar([x], [y], width=width * 0.92, color=st.colour if k == 0 else "white", edgecolor=st.colour,
                   hatch="" if k == 0 else "///", linewidth=1.2)
            ax.annotate(num_label(y), (x, y), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                        textcoords="offset points")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(facecolor="#777" if k == 0 else "white", edgecolor="#333", hatch="" if k == 0 else "///",
                             label=lab) for k, (_c, lab) in enumerate(cols)], fontsize=8, frameon=False)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names)
    ax.set_xlabel("framework")
    ax.set_ylabel(metric.label)
    ax.set_title(title, fontsize=10)
    ax.set_ylim(bottom=0)
    ax.margins(y=0.12)
    fig.tight_layout()
    return fig


def slo_search(steps: pd.DataFrame, styler: Styler, model: str, slo_p99_s: float) -> Figure:
    """The SLO search of one model: p99 at every probed rate, passes filled, failures hollow."""
    fig, (ax,) = _new(1, width=7.0, height=4.0)
    ys = []
    for name, g in steps.groupby("name", sort=False):
        st = styler(name)
        g = g.sort_values("rate")
        y = g["p99_s"].to_numpy(float) * 1e3
        ys += list(y)
        kw = st.line_kw()
        kw.update(marker=None)
        ax.plot(g["rate"], y, label=name, **kw)
        ok = g["ok"].to_numpy(bool)
        ax.scatter(g["rate"][ok], y[ok], marker=st.marker, color=st.colour, s=40, zorder=4)
        ax.scatter(g["rate"][~ok], y[~ok], marker=st.marker, facecolors="white", edgecolors=st.colour, s=40, zorder=4)
    ax.axhline(slo_p99_s * 1e3, color="#B22222", linestyle="--", linewidth=1)
    ax.annotate(f"SLO p99 {slo_p99_s * 1e3:g} ms", (0.01, slo_p99_s * 1e3), xycoords=("axes fraction", "data"),
                xytext=(0, 3), textcoords="offset points", fontsize=8, color="#B22222")
    _log_if_wide(ax, ys)
    ax.set_xlabel("Offered arrival rate (requests/s)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title(f"{model}: SLO search (filled: meets the SLO, hollow: misses)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save(fig: Figure, path) -> None:
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
