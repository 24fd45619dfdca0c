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
FIGURE_WIDTH = 13.6  # inches at DPI: 1360 px, the report's text width, so a figure is legible at 100% zoom
PANEL_HEIGHT = 4.4  # inches per panel row, without its legend
LEGEND_LINE_INCHES = 0.2
LEGEND_COLUMN_INCHES = 4.4  # a legend entry of ~45 characters at legend.fontsize
MAX_COLUMNS = 2
RC = {"text.parse_math": False, "font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11,
      "legend.fontsize": 10, "xtick.labelsize": 10, "ytick.labelsize": 10,
      "axes.grid": True, "grid.alpha": 0.3, "grid.linestyle": ":"}

def _label(text: str) -> str:
    """A legend label matplotlib will show: it hides labels that start with an underscore."""
    return " " + text if text.startswith("_") else text


def format_tokens(n: float, _pos: object = None) -> str:
    """Sequence-length tick text: 256, 1k, 64k."""
    if n >= 1024 and n % 1024 == 0:
        return f"{int(n) // 1024}k"
    return f"{n:g}"


def _grid(count: int, legend_entries: int) -> tuple[plt.Figure, list[plt.Axes]]:
    """``count`` panels across the report's width, two a row, each tall enough for its axes plus a legend of
    ``legend_entries`` below in as many columns as the panel's width holds (``_legend_columns``)."""
    columns = min(MAX_COLUMNS, count)
    rows = math.ceil(count / columns)
    legend_rows = math.ceil(legend_entries / _legend_columns(columns)) if legend_entries else 0
    height = PANEL_HEIGHT + LEGEND_LINE_INCHES * legend_rows
    fig, axes = plt.subplots(rows, columns, figsize=(FIGURE_WIDTH, height * rows), squeeze=False,
                             layout="constrained")
    flat = list(axes.flat)
    for extra in flat[count:]:
        extra.set_visible(False)
    return fig, flat[:count]


def _legend_columns(panels_per_row: int) -> int:
    return max(1, int(FIGURE_WIDTH / panels_per_row // LEGEND_COLUMN_INCHES))


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
    """Log y axis with plain-number labels (``_log_axis``). Call after plotting (reads the data)."""
    _log_axis(ax, "y")


def _log_axis(ax: plt.Axes, which: str) -> None:
    """Log axis ``which`` ("x" or "y") with plain-number labels on major and minor ticks alike (matplotlib's
    default minor labels are mathtext, drawn as raw ``$\\mathdefault{...}$`` text here); within less than two
    decades the 2x, 3x and 5x ticks are labelled too, so that a narrow range still has several labelled ticks.
    Call after plotting (reads the data)."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    axis.set_major_locator(LogLocator(base=10, numticks=12))
    axis.set_major_formatter(FuncFormatter(format_value))
    low, high = ax.dataLim.intervaly if which == "y" else ax.dataLim.intervalx
    narrow = low > 0 and high / low < 100
    axis.set_minor_locator(LogLocator(base=10, subs=(2.0, 3.0, 5.0) if narrow else "auto", numticks=12))
    axis.set_minor_formatter(FuncFormatter(format_value) if narrow else NullFormatter())


Styles = dict[str, dict]
"""Variant name -> matplotlib keywords (color, linestyle, marker)."""

ENCODING_COLOURS = {
    "none": "#2f4f4f", "rope": "#e69f00", "ape": "#8c564b", "spe-sine": "#9467bd", "spe-conv": "#e377c2",
    "lrpe-unitary": "#0072b2", "lrpe-orthogonal": "#009e73", "lrpe-permutation": "#d55e00",
}
"""One colour per encoding, the same in every report (colour-blind-safe Okabe-Ito hues where they reach;
plain attention dark slate, not a grey, so that it never matches text or antialiasing)."""
EXTRA_COLOURS = ["#56b4e9", "#cc79a7", "#7f7f7f", "#bcbd22", "#17becf", "#f0e442"]
BACKEND_STYLES = {
    "torch-chunked": "-", "triton": (0, (8, 2)), "fla": (0, (8, 2, 2, 2)), "naive": ":",
    "sdpa-flash": "--", "sdpa-efficient": (0, (5, 1, 1, 1)), "sdpa-cudnn": (0, (3, 1, 1, 1, 1, 1)),
    "sdpa-math": (0, (1, 3)), "flex": "-.", "flash-attn2": (0, (10, 3)), "flash-attn3": (0, (10, 3, 2, 3)),
    "flash-attn4": (0, (10, 3, 2, 3, 2, 3)),
}
"""One line style per backend; other backends (xformers-*) take EXTRA_STYLES in name order."""
EXTRA_STYLES = [(0, (4, 2, 1, 2)), (0, (6, 1)), (0, (2, 2)), (0, (12, 2, 1, 2))]
FAMILY_MARKERS = {"linear": "o", "softmax": "s", "flash": "^"}
"""One marker per family: softmax-rope@naive and linear-rope@naive share colour and style, not marker."""


def _shade(colour: str, index: int) -> str:
    """The ``index``-th shade of ``colour`` for a sub-kind of its encoding (a P matrix: householder,
    oddeven, ...): alternately darker and lighter, further each time."""
    from matplotlib.colors import to_hex, to_rgb

    rgb = to_rgb(colour)
    step = 0.3 * ((index + 1) // 2 + 0.5 * ((index + 1) // 2 - 1)) if index else 0.0
    target = 0.0 if index % 2 else 1.0
    return to_hex(tuple(c + (target - c) * min(step, 0.7) for c in rgb))


def variant_styles(variants: Iterable[str]) -> Styles:
    """A colour per encoding (``ENCODING_COLOURS``; a sub-kind such as lrpe-unitary-householder a shade of
    its encoding's), a line style per backend (``BACKEND_STYLES``) and a marker per family, parsed from the
    registry name ``<family>[-<encoding>]@<backend>``. The report makes them once from every variant in its
    frame and gives them to each figure, so a variant looks the same in every figure."""
    from reports.encodings import parse_variant

    variants = sorted({str(v) for v in variants})
    parsed = {v: parse_variant(v) for v in variants}
    encodings = sorted({e for _, e, _ in parsed.values()})
    base = {e: next((b for b in sorted(ENCODING_COLOURS, key=len, reverse=True)
                     if e == b or e.startswith(b + "-")), None) for e in encodings}
    colours: dict[str, str] = {}
    unknown = iter(EXTRA_COLOURS * (1 + len(encodings) // len(EXTRA_COLOURS)))
    for encoding in encodings:
        root = base[encoding]
        if root is None:
            colours[encoding] = next(unknown)
            continue
        kinds = sorted(e for e in encodings if base[e] == root and e != root)
        colours[encoding] = _shade(ENCODING_COLOURS[root], 0 if encoding == root else kinds.index(encoding) + 1)
    backends = sorted({b for _, _, b in parsed.values() if b not in BACKEND_STYLES})
    styles = {**BACKEND_STYLES, **{b: EXTRA_STYLES[i % len(EXTRA_STYLES)] for i, b in enumerate(backends)}}
    return {v: {"color": colours[e], "linestyle": styles.get(b, "-"), "marker": FAMILY_MARKERS.get(f, "D")}
            for v, (f, e, b) in parsed.items()}


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
        panels = sum(1 for other in ax.figure.axes if other.get_visible())
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False,
                  ncols=_legend_columns(min(MAX_COLUMNS, panels)))


def _shared_legend(fig: plt.Figure, ax: plt.Axes) -> None:
    """One legend for a figure whose panels draw the same entries (``ax``'s), under all of them, in as many
    columns as the figure's width holds."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", frameon=False, ncols=_legend_columns(1))


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
                    found = analysis.fit(line["n"], line[value])
                    label += "  (one N: no slope)" if found is None else f"  (slope {found.exponent:.2f})"
                ax.plot(line["n"], line[value] * scale, markersize=4.5, label=_label(label),
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
    """Perplexity (mean over seeds) against eval length, one panel per protocol, a line per (variant, train
    length), the training length marked with a vertical line; None without extrapolation rows that have perplexity."""
    ok = analysis.ok_rows(frame, "extrapolation")
    if not analysis.has(ok, "variant", "eval_len", "perplexity"):
        return None
    ok = ok[ok["variant"].notna() & ok["eval_len"].notna() & ok["perplexity"].notna() & (ok["perplexity"] > 0)]
    protocols = sorted(ok["protocol"].fillna("(no protocol)").astype(str).unique()) if "protocol" in ok else [""]
    styles = styles or variant_styles(ok["variant"].dropna())
    with plt.rc_context(RC):
        lines = ok.groupby(["variant"] + (["train_len"] if "train_len" in ok else []), dropna=False).ngroups
        shared = len(protocols) > 1  # the protocols' panels draw the same lines: one legend under both
        fig, axes = _grid(len(protocols), math.ceil(lines / _legend_columns(1)) * _legend_columns(2) if shared
                          else lines)
        for ax, protocol in zip(axes, protocols, strict=True):
            panel = ok[ok["protocol"].fillna("(no protocol)").astype(str) == protocol] if protocol else ok
            by = ["variant"] + (["train_len"] if "train_len" in panel else [])
            train_lens = set()
            for names, line in panel.groupby(by, sort=True, dropna=False):
                names = names if isinstance(names, tuple) else (names,)
                # One point per length: the mean over seeds (a config stored twice: the last row of each seed).
                seeds = ["eval_len", "seed"] if "seed" in line else ["eval_len"]
                line = (line.drop_duplicates(subset=seeds, keep="last").groupby("eval_len", as_index=False)
                        ["perplexity"].mean())
                train = names[1] if len(names) > 1 and pd.notna(names[1]) else None
                label = str(names[0]) + (f" (trained at {format_tokens(train)})" if train else "")
                ax.plot(line["eval_len"], line["perplexity"], markersize=4.5, label=_label(label),
                        **styles[str(names[0])])
                if train:
                    train_lens.add(int(train))
            for train in sorted(train_lens):
                ax.axvline(train, color="grey", linewidth=1, linestyle="--")
                # Along the line, halfway up: at the top it ran into the lines that start there.
                ax.annotate(f"train length {format_tokens(train)}", (train, 0.5), xycoords=("data", "axes fraction"),
                            xytext=(4, 0), textcoords="offset points", fontsize=9, color="dimgrey", rotation=90,
                            va="center")
            _n_axis(ax, [float(n) for n in panel["eval_len"]] + [float(t) for t in train_lens])
            ax.set_xlabel("evaluation length, tokens")
            _log_y(ax)
            ax.set_ylabel("perplexity, exp(mean loss per token)")
            ax.set_title(f"extrapolation: {protocol}" if protocol else "extrapolation")
            if not shared:
                _legend(ax, len(ax.get_legend_handles_labels()[1]))
        if shared:
            _shared_legend(fig, max(axes, key=lambda a: len(a.get_legend_handles_labels()[1])))
        return to_png(fig)


def cost_figure(costs: pd.DataFrame, styles: Styles) -> bytes | None:
    """Each encoded variant's time and peak memory over its family's plain attention on the same backend
    (``encodings.encoding_costs``) against N: a row per panel key, time ratio left, memory ratio right, a
    line at 1 (as fast / as small as plain attention). None without cost rows."""
    if costs.empty:
        return None
    keys = [c for c in costs.columns if c in analysis.PANEL_BASE + analysis.PANEL_EXTRA]
    groups = [({}, costs)] if not keys else [
        (dict(zip(keys, k if isinstance(k, tuple) else (k,), strict=True)), g)
        for k, g in costs.groupby(keys, sort=True, dropna=False)]
    with plt.rc_context(RC):
        entries = max(g["variant"].nunique() for _, g in groups)
        fig, axes = _grid(2 * len(groups), math.ceil(entries / _legend_columns(1)) * _legend_columns(2))
        for index, (key, group) in enumerate(groups):
            for ax, column, what in ((axes[2 * index], "time ratio", "time"),
                                     (axes[2 * index + 1], "memory ratio", "peak memory")):
                for variant, line in group.groupby("variant", sort=True):
                    line = line[line[column].notna() & (line[column] > 0)].sort_values("N")
                    if not line.empty:
                        ax.plot(line["N"], line[column], markersize=5,
                                label=_label(f"{variant} / {line['reference'].iloc[0]}"), **styles[variant])
                ax.axhline(1.0, color="grey", linewidth=1.2, linestyle="-", zorder=0)
                _n_axis(ax, [float(n) for n in group["N"]])
                _ratio_axis(ax)
                ax.set_ylabel(f"{what} / plain attention's (same backend, N)")
                ax.set_title(f"cost of each encoding, {what}: {analysis.panel_title(key)}")
        # The two panels of a row draw the same variants: one legend under the figure, not two.
        _shared_legend(fig, max(axes, key=lambda a: len(a.get_legend_handles_labels()[1])))
        return to_png(fig)


RATIO_TICKS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 2 / 3, 0.8, 1, 1.25, 1.5, 2, 2.5, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)


def _ratio_axis(ax: plt.Axes) -> None:
    """Log2 y axis of ratios labelled x0.5, x1, x1.5, ...: the dense ticks within the data's range, only the
    powers of 2 when more than 8 of them would fall there. Call after plotting (reads the data)."""
    ax.set_yscale("log", base=2)
    low, high = ax.dataLim.intervaly
    low, high = min(low, 1.0) / 1.1, max(high, 1.0) * 1.1
    ticks = [t for t in RATIO_TICKS if low <= t <= high]
    if len(ticks) > 8:
        ticks = [t for t in ticks if math.log2(t).is_integer()]
    ax.set_yticks(ticks)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"x{y:.3g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def tradeoff_figure(table: pd.DataFrame, styles: Styles, n: int | None = None) -> bytes | None:
    """Speed against quality (``encodings.speed_quality``): bits per byte against time (left) and against
    peak memory (right), a point per variant, error bars from the table (time p20-p80; bits per byte's
    ``error``), the Pareto front (lower is better on both axes) drawn as a grey step line. None without
    rows."""
    if table.empty:
        return None
    at = f" at N = {format_tokens(n)}" if n else ""
    with plt.rc_context(RC):
        fig, axes = _grid(2, math.ceil((len(table) + 2) / _legend_columns(1)) * _legend_columns(2))
        for ax, column, xlabel in ((axes[0], "time, ms", f"median time per call{at}, ms (bars p20-p80)"),
                                   (axes[1], "peak, MiB", f"peak memory above the inputs{at}, MiB")):
            points = table[table[column].notna() & (table[column] > 0)]
            for _, row in points.iterrows():
                style = styles[row["variant"]]
                xerr = None
                if column == "time, ms" and pd.notna(row["time p20, ms"]) and pd.notna(row["time p80, ms"]):
                    xerr = [[row[column] - row["time p20, ms"]], [row["time p80, ms"] - row[column]]]
                yerr = [row["error"]] if pd.notna(row["error"]) else None
                ax.errorbar([row[column]], [row["bits/byte"]], xerr=xerr, yerr=yerr, color=style["color"],
                            marker=style["marker"], markersize=8, linestyle="none", capsize=3,
                            label=_label(row["variant"]))
            front = _front(points, column)
            if len(front) > 1:
                ax.step(front[column], front["bits/byte"], where="post", color="grey", linewidth=1.2,
                        linestyle="--", label="Pareto front (no point better on both)", zorder=0)
            # A ring around each point of the front: a front of close points is a step too short to see.
            ax.scatter(front[column], front["bits/byte"], s=260, facecolors="none", edgecolors="grey",
                       linewidths=1.5, label="on the Pareto front", zorder=3)
            _log_axis(ax, "x")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("bits per byte at the longest evaluated length\n(lower is better; bars: noise)")
            ax.set_title("speed against quality" if column == "time, ms" else "memory against quality")
        _shared_legend(fig, axes[0])
        return to_png(fig)


def _front(points: pd.DataFrame, column: str) -> pd.DataFrame:
    """The points no other beats on both ``column`` and bits per byte, by ``column`` ascending."""
    from reports.encodings import pareto

    if points.empty:
        return points
    return points[pareto(points[column], points["bits/byte"]).to_numpy()].sort_values(column)
