"""The report's figures (matplotlib, Agg backend), each returned as PNG bytes for embedding.

Every figure is a grid of panels, one per (D, pass) (see ``analysis.panels``), with one line per variant;
axes are log-log with their units in the labels. Text from data is drawn with mathtext off, so a ``$`` in a
variant name is drawn as it is.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, the same output everywhere

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from reports import analysis

DPI = 100
PANEL_SIZE = (6.6, 4.0)  # inches per panel, without its legend
LEGEND_LINE_INCHES = 0.16
MAX_COLUMNS = 2
RC = {"text.parse_math": False, "font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8.5,
      "axes.grid": True, "grid.alpha": 0.3, "grid.linestyle": ":"}
STYLE_CYCLE = ["-", "--", "-.", ":"]


def _label(text: str) -> str:
    """A legend label matplotlib will show: it hides labels that start with an underscore."""
    return " " + text if text.startswith("_") else text


def format_tokens(n: float, _pos: object = None) -> str:
    """Sequence-length tick text: 256, 1k, 64k."""
    if n >= 1024 and n % 1024 == 0:
        return f"{int(n) // 1024}k"
    return f"{n:g}"


def _grid(count: int, legend_entries: int) -> tuple[plt.Figure, list[plt.Axes]]:
    """``count`` panels, two a row, each tall enough for its axes plus a legend of ``legend_entries`` below."""
    columns = min(MAX_COLUMNS, count)
    rows = math.ceil(count / columns)
    height = PANEL_SIZE[1] + LEGEND_LINE_INCHES * legend_entries
    fig, axes = plt.subplots(rows, columns, figsize=(PANEL_SIZE[0] * columns, height * rows),
                             squeeze=False, layout="constrained")
    flat = list(axes.flat)
    for extra in flat[count:]:
        extra.set_visible(False)
    return fig, flat[:count]


def _n_axis(ax: plt.Axes, ns: list[float]) -> None:
    """Log2 x axis with a tick at each measured N (labelled 1k, 2k, ...)."""
    ax.set_xscale("log", base=2)
    ticks = sorted(set(ns))
    if ticks:
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(FuncFormatter(format_tokens))
        ax.xaxis.set_minor_formatter(NullFormatter())
        if len(ticks) > 9:
            ax.tick_params(axis="x", labelrotation=45)
    ax.set_xlabel("sequence length N, tokens")


def format_value(y: float, _pos: object = None) -> str:
    """Log-axis tick text as plain numbers (0.001, 10, 1e+04): the default writes mathtext, which is off."""
    return f"{y:g}"


def _log_y(ax: plt.Axes) -> None:
    """Log y axis with plain-number labels; within less than two decades the 2x and 5x ticks are labelled
    too, so that a narrow range still has several labelled ticks. Call after plotting (reads the data)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, numticks=12))
    ax.yaxis.set_major_formatter(FuncFormatter(format_value))
    low, high = ax.dataLim.intervaly
    narrow = low > 0 and high / low < 100
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 3.0, 5.0) if narrow else "auto", numticks=12))
    ax.yaxis.set_minor_formatter(FuncFormatter(format_value) if narrow else NullFormatter())


Styles = dict[str, dict]
"""Variant name -> matplotlib line keywords (colour, line style)."""


def variant_styles(variants: Iterable[str]) -> Styles:
    """A colour and line style per variant. The report makes them once from every variant in its frame and
    gives them to each figure, so that a variant has one colour in every figure."""
    variants = sorted({str(v) for v in variants})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {v: {"color": colors[i % len(colors)], "linestyle": STYLE_CYCLE[(i // len(colors)) % len(STYLE_CYCLE)]}
            for i, v in enumerate(variants)}


def to_png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    # bbox_inches="tight" grows the canvas to hold the legends placed outside the axes, so none is clipped.
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _legend(ax: plt.Axes, count: int) -> None:
    if count:
        # Under the axes, one entry a line: a legend inside a log-log panel of many lines always covers some
        # of them, and one beside it squeezes the axes of a two-panel row.
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)


def _scaling_figure(frame: pd.DataFrame, value: str, ylabel: str, scale: float, title: str,
                    band: tuple[str, str] | None, fit: bool = True,
                    extra: Callable[[plt.Axes, dict, pd.DataFrame], None] | None = None,
                    extra_entries: int = 0, styles: Styles | None = None) -> bytes | None:
    """Log-log ``value`` x ``scale`` against N, one panel per (D, pass), a line per variant with its fitted
    slope in the legend (unless not ``fit``), an optional p20-p80 ``band``, then ``extra`` draws what else
    the panel needs (up to ``extra_entries`` more legend entries); ``styles`` (default: from the frame's
    variants) colours the lines. None when no ok row has ``value``."""
    ok = analysis.ok_rows(frame)
    if not analysis.has(ok, "n", "variant", value):
        return None
    ok = ok[ok[value] > 0]
    groups = [(key, panel) for key, panel in analysis.panels(ok) if analysis.series(panel, value)]
    if not groups:
        return None
    styles = styles or variant_styles(ok["variant"].dropna())
    with plt.rc_context(RC):
        entries = max(panel["variant"].nunique() for _, panel in groups) + extra_entries
        fig, axes = _grid(len(groups), entries)
        for ax, (key, panel) in zip(axes, groups, strict=True):
            lines = analysis.series(panel, value)
            for variant, line in lines.items():
                label = variant
                if fit:
                    slope = analysis.fit_slope(line["n"], line[value])[0]
                    label += "  (one N: no slope)" if math.isnan(slope) else f"  (slope {slope:.2f})"
                ax.plot(line["n"], line[value] * scale, marker="o", markersize=3.5, label=_label(label),
                        **styles[variant])
                if band and analysis.has(line, *band):
                    ax.fill_between(line["n"].astype(float), line[band[0]].astype(float) * scale,
                                    line[band[1]].astype(float) * scale, color=styles[variant]["color"],
                                    alpha=0.2, linewidth=0)
            if extra:
                extra(ax, key, panel)
            _n_axis(ax, [float(n) for n in panel["n"].dropna()])
            _log_y(ax)
            ax.set_ylabel(ylabel)
            ax.set_title(f"{title}: {analysis.panel_title(key)}")
            _legend(ax, len(ax.get_legend_handles_labels()[1]))
        return to_png(fig)


def time_figure(frame: pd.DataFrame, styles: Styles | None = None) -> bytes | None:
    """Median time per call (per sequence when the batch varies) against N, p20-p80 band, slope of the fit in
    the legend."""
    columns = ["time_median_ms", "time_p20_ms", "time_p80_ms"]
    label = ("time per sequence, ms\n(per call / batch; median, band p20-p80)" if analysis.batch_varies(frame)
             else "time per call, ms (median; band p20-p80)")
    return _scaling_figure(analysis.per_sequence(frame, columns), "time_median_ms", label, 1.0, "time",
                           ("time_p20_ms", "time_p80_ms"), styles=styles)


def memory_figure(frame: pd.DataFrame, styles: Styles | None = None) -> bytes | None:
    """Peak memory above the inputs (per sequence when the batch varies) against N (MiB), slope of the fit
    in the legend."""
    label = ("peak memory above the inputs\nper sequence (peak / batch), MiB" if analysis.batch_varies(frame)
             else "peak memory above the inputs, MiB")
    return _scaling_figure(analysis.per_sequence(frame, ["peak_mem_bytes"]), "peak_mem_bytes", label, 2.0**-20,
                           "peak memory", None, styles=styles)


def throughput_figure(frame: pd.DataFrame, ceilings: dict[tuple[str, str], dict],
                      styles: Styles | None = None) -> bytes | None:
    """Achieved TFLOP/s against N with the measured matmul ceiling of the panel's dtype drawn across."""
    def ceiling_lines(ax: plt.Axes, key: dict, panel: pd.DataFrame) -> None:
        dtypes = set(panel["dtype"].dropna().astype(str)) if "dtype" in panel else set()
        runs = set(panel["run_id"].dropna().astype(str)) if "run_id" in panel else set()
        drawn = set()
        for (run_id, dtype), values in ceilings.items():
            tflops = values.get("matmul_tflops")
            if run_id in runs and (dtype in dtypes or not dtypes) and isinstance(tflops, int | float):
                if (dtype, round(tflops, 6)) in drawn:
                    continue
                drawn.add((dtype, round(tflops, 6)))
                ax.axhline(tflops, color="black", linewidth=1.2, linestyle=(0, (6, 3)),
                           label=f"matmul ceiling {tflops:.3g} TFLOP/s ({dtype}, run {run_id})")

    return _scaling_figure(frame, "tflops", "achieved TFLOP/s (formula FLOPs / median time)", 1.0,
                           "throughput", None, fit=False, extra=ceiling_lines,
                           extra_entries=len(ceilings), styles=styles)


def extrapolation_figure(frame: pd.DataFrame, styles: Styles | None = None) -> bytes | None:
    """Perplexity against eval length, one panel per protocol, a line per (variant, train length), the
    training length marked with a vertical line; None without extrapolation rows that have perplexity."""
    ok = analysis.ok_rows(frame, "extrapolation")
    if not analysis.has(ok, "variant", "eval_len", "perplexity"):
        return None
    ok = ok[ok["variant"].notna() & ok["eval_len"].notna() & ok["perplexity"].notna() & (ok["perplexity"] > 0)]
    protocols = sorted(ok["protocol"].fillna("(no protocol)").astype(str).unique()) if "protocol" in ok else [""]
    styles = styles or variant_styles(ok["variant"].dropna())
    with plt.rc_context(RC):
        lines = ok.groupby(["variant"] + (["train_len"] if "train_len" in ok else []), dropna=False).ngroups
        fig, axes = _grid(len(protocols), lines)
        for ax, protocol in zip(axes, protocols, strict=True):
            panel = ok[ok["protocol"].fillna("(no protocol)").astype(str) == protocol] if protocol else ok
            by = ["variant"] + (["train_len"] if "train_len" in panel else [])
            train_lens = set()
            for names, line in panel.groupby(by, sort=True, dropna=False):
                names = names if isinstance(names, tuple) else (names,)
                line = line.drop_duplicates(subset="eval_len", keep="last").sort_values("eval_len")
                train = names[1] if len(names) > 1 and pd.notna(names[1]) else None
                label = str(names[0]) + (f" (trained at {format_tokens(train)})" if train else "")
                ax.plot(line["eval_len"], line["perplexity"], marker="o", markersize=3.5, label=_label(label),
                        **styles[str(names[0])])
                if train:
                    train_lens.add(int(train))
            for train in sorted(train_lens):
                ax.axvline(train, color="grey", linewidth=1, linestyle="--")
                ax.annotate(f"train length {format_tokens(train)}", (train, 1), xycoords=("data", "axes fraction"),
                            xytext=(3, -12), textcoords="offset points", fontsize=7.5, color="dimgrey")
            _n_axis(ax, [float(n) for n in panel["eval_len"]] + [float(t) for t in train_lens])
            ax.set_xlabel("evaluation length, tokens")
            _log_y(ax)
            ax.set_ylabel("perplexity, exp(mean loss per token)")
            ax.set_title(f"extrapolation: {protocol}" if protocol else "extrapolation")
            _legend(ax, len(ax.get_legend_handles_labels()[1]))
        return to_png(fig)
