"""One self-contained HTML report from stored runs: tables by pandas' Styler, figures as base64 PNG.

``render_report(run_dirs, compare=None)`` returns the HTML text; ``write_report`` writes it. Every string
that comes from data (variant names, reasons, paths, environment values) goes through ``html.escape`` or
Styler's ``escape="html"``; the document loads nothing from the network.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
from pandas.io.formats.style import Styler

from bench.measure.flops import FORMULAS
from bench.record import SCHEMA, describe_columns
from reports import analysis, beyond, encodings, plots
from reports.findings import findings
from reports.load import Run, combine, device_memory, load_run, run_ceilings

REPORT_FILE = "report.html"
"""The report ``python -m bench run`` writes into the run directory at the end of a run."""

SECTIONS = {
    "findings": "Findings",
    "cost": "Cost of each encoding over plain attention",
    "tradeoff": "Speed against quality",
    "time": "Time against N",
    "memory": "Peak memory against N",
    "throughput": "Throughput against the measured ceilings",
    "extrapolation": "Extrapolation: perplexity against evaluation length",
    "beyond": "Beyond the measured range: 128k and 1M tokens (extrapolated)",
    "summary": "Fastest variant and crossover at every N",
    "compare": "Comparison with the baseline",
    "failures": "Configs not measured",
    "environment": "Environment and measured ceilings",
    "rows": "Every row, with the column legend",
    "flops": "FLOP formulas",
}
"""Every section in the order it appears: findings, then figures, then tables; the last three (APPENDIX) are
collapsed."""
APPENDIX = ("environment", "rows", "flops")

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 1.5em 2em; color: #222;
       max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { font-size: 1em; }
section.appendix summary h2 { display: inline; border: none; } section.appendix summary { cursor: pointer; }
ul.findings li { margin: 0.3em 0; }
nav a { margin-right: 1em; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 0.8em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; vertical-align: top; }
th { background: #f4f4f4; }
table.rows td { white-space: nowrap; }
figure.plot { margin: 0.5em 0; } figure.plot img { max-width: 100%; height: auto; }
figcaption, p.note { font-size: 0.85em; color: #555; }
.regression { background: #f8d0d0; } .improvement { background: #d2efd2; }
pre { background: #f7f7f7; padding: 0.5em; font-size: 0.8em; white-space: pre-wrap; }
"""


WRAPPED_COLUMNS = ("reason", "crossover N*, tokens", "formula", "meaning", "value")
"""Free-text columns: they wrap inside a minimum width instead of stretching the table."""


def esc(value: object) -> str:
    """Text from data, safe inside HTML elements and attribute values."""
    return html.escape(str(value), quote=True)


def _number(value: object) -> float | None:
    """A number from environment data, or None for anything else (the file may hold what it likes)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def table(frame: pd.DataFrame, *, css_class: str = "", styles: pd.DataFrame | None = None,
          precision: int = 4, text_width: str = "20em") -> str:
    """A DataFrame as an HTML table through pandas' Styler: cells, index and headers HTML-escaped,
    floats to ``precision`` significant digits, missing values blank, ``styles`` (CSS classes per cell);
    free-text columns (reasons, notes) wrap at no less than ``text_width``."""
    if frame.empty:
        return "<p class='note'>(none)</p>"
    frame = frame.reset_index(drop=True)
    # No per-cell ids, and column-wide CSS rules instead of one rule per cell: a report of a full GPU sweep has
    # tens of thousands of cells, and per-cell markup would make it several times larger.
    styler = Styler(frame, cell_ids=False)
    # Floats to `precision` significant digits; everything else as text (escaped before formatting).
    styler = styler.format(lambda v: f"{v:.{precision}g}" if isinstance(v, float) else str(v), escape="html",
                           na_rep="")
    styler = styler.format_index(escape="html", axis=1).hide(axis="index")
    if styles is not None:
        styler = styler.set_td_classes(styles.reset_index(drop=True))
    column_css = {}
    for column in frame.columns:
        if column in WRAPPED_COLUMNS:  # long free text wraps in a wide column instead of stretching its rows
            column_css[column] = f"text-align: left; white-space: normal; min-width: {text_width}; max-width: 44em"
        elif not pd.api.types.is_numeric_dtype(frame[column]) or pd.api.types.is_bool_dtype(frame[column]):
            column_css[column] = "text-align: left; white-space: nowrap"
    styler = styler.set_table_styles({c: [{"selector": "td", "props": css}] for c, css in column_css.items()},
                                     overwrite=False)
    styler = styler.set_table_attributes(f'class="{esc(css_class)}"' if css_class else "")
    return f"<div class='scroll'>{styler.to_html()}</div>"


def figure(name: str, png: bytes | None, caption: str) -> str:
    """One plot: a <figure> holding exactly one embedded PNG, or a note when there was nothing to plot."""
    if png is None:
        return f"<p class='note'>No ok rows with the values for this plot ({esc(name)}).</p>"
    data = base64.b64encode(png).decode("ascii")
    return (f"<figure class='plot' data-plot='{esc(name)}'><img alt='{esc(name)} plot' "
            f"src='data:image/png;base64,{data}'><figcaption>{esc(caption)}</figcaption></figure>")


def _flatten(prefix: str, value: object, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    elif isinstance(value, list):
        out[prefix] = json.dumps(value, default=str)
    else:
        out[prefix] = "" if value is None else str(value)


def environment_section(runs: Sequence[Run]) -> str:
    parts = []
    ceilings = run_ceilings(runs)
    if ceilings:
        rows = []
        for (run_id, dtype), values in ceilings.items():
            buffer = _number(values.get("copy_buffer_bytes"))
            rows.append({"run": run_id, "dtype": dtype, "matmul TFLOP/s": _number(values.get("matmul_tflops")),
                         "matmul shape": json.dumps(values.get("matmul_shape"), default=str),
                         "copy GB/s": _number(values.get("copy_gbps")),
                         "copy buffer, MiB": buffer / 2**20 if buffer else None,
                         "device": str(values.get("device", ""))})
        parts.append("<h3>Measured ceilings</h3>" + table(pd.DataFrame(rows)))
        parts.append("<p class='note'>Matmul: n x n by n x n, 2 n^3 FLOPs over the median time. Copy: bytes "
                     "read plus bytes written over the median time. Measured once per run, before its configs."
                     "</p>")
    else:
        parts.append("<p class='note'>No ceilings stored with these runs.</p>")
    for run in runs:
        parts.append(f"<h3>Run {esc(run.run_id)} <small>({esc(run.path)})</small></h3>")
        if not run.sessions:
            parts.append("<p class='note'>No environment.json in this run.</p>")
        for number, session in enumerate(run.sessions, 1):
            flat: dict[str, str] = {}
            _flatten("", {k: v for k, v in session.items() if k != "ceilings"}, flat)
            frame = pd.DataFrame({"setting": list(flat), "value": list(flat.values())})
            parts.append(f"<details{' open' if number == 1 else ''}><summary>session {number} of "
                         f"{len(run.sessions)}</summary>{table(frame)}</details>")
    return "".join(parts)


def summary_section(frame: pd.DataFrame) -> str:
    counts = frame["status"].value_counts().to_dict() if "status" in frame else {}
    parts = [f"<p>{len(frame)} rows; statuses: "
             + esc(", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none") + ".</p>"]
    fastest = analysis.fastest(frame)
    parts.append("<h3>Fastest variant at each (N, D, pass)</h3>")
    parts.append(table(fastest) if not fastest.empty else "<p class='note'>No ok rows with a time.</p>")
    if not fastest.empty:
        parts.append("<p class='note'>High variance: the fastest or runner-up whose timing has an IQR above 10% "
                     "of its median (their order may be noise).</p>")
    cross = analysis.crossovers(frame)
    parts.append("<h3>Crossover: where each linear variant overtakes the best FlashAttention backend</h3>")
    if cross.empty:
        parts.append("<p class='note'>Needs ok rows of both a linear and a flash variant in one panel.</p>")
    else:
        parts.append(table(_crossover_display(cross)))
        parts.append("<p class='note'>N* is interpolated on the straight line in (log N, log time ratio) "
                     "through the two measured N either side of the last change from linear-not-faster to "
                     "linear-faster; the best FlashAttention backend is the fastest flash variant at each N.</p>")
    return "".join(parts)


def _crossover_display(cross: pd.DataFrame) -> pd.DataFrame:
    """The crossover table as a reader wants it: N*, then the two measured points either side in words."""
    def side(row: pd.Series, name: str) -> str:
        if pd.isna(row.get(name)):
            return ""
        return (f"N = {int(row[name])}: linear {row[f'linear ms {name}']:.4g} ms, "
                f"{row[f'flash backend {name}']} {row[f'flash ms {name}']:.4g} ms")

    keys = [c for c in cross.columns if c in analysis.PANEL_BASE + analysis.PANEL_EXTRA]
    out = cross[[*keys, "linear variant"]].copy()
    # One column for the answer: N* where there is one, else why not (it then needs no measured points).
    out["crossover N*, tokens"] = [f"{row['N*']:.0f}" if pd.notna(row["N*"]) else row["note"]
                                   for _, row in cross.iterrows()]
    out["measured below N*"] = [side(row, "below") for _, row in cross.iterrows()]
    out["measured above N*"] = [side(row, "above") for _, row in cross.iterrows()]
    return out


def _slope_note(frame: pd.DataFrame, value: str) -> str:
    found = analysis.slopes(frame, value)
    if found.empty:
        return ""
    return ("<details><summary>fitted slopes</summary>" + table(found, precision=3) + "</details>"
            "<p class='note'>Slope: least squares of log value against log N over the upper half of each "
            "line's points by N (all of them with 3 or fewer), per sequence when the batch varies with N; about "
            "1 is linear in N, about 2 quadratic.</p>")


def extrapolation_section(frame: pd.DataFrame, styles: plots.Styles | None = None) -> str:
    rows = frame[frame["task"] == "extrapolation"] if "task" in frame else frame.iloc[0:0]
    parts = [figure("extrapolation", plots.extrapolation_figure(frame, styles),
                    "Perplexity (the mean over seeds where there are several) against the evaluation length, a "
                    "panel per protocol; the dashed vertical line marks the training length.")]
    index = [c for c in ("variant", "train_len", "protocol") if c in rows]
    if analysis.has(rows, "eval_len", "perplexity") and index:
        ok = analysis.ok_rows(rows, "extrapolation")
        ok = ok.drop_duplicates([*index, "eval_len", *(["seed"] if "seed" in ok else [])], keep="last")
        pivot = ok.pivot_table(index=index, columns="eval_len", values="perplexity", aggfunc="mean", dropna=False)
        pivot.columns = [f"ppl @ {plots.format_tokens(c)}" for c in pivot.columns]
        parts.append(table(pivot.reset_index()))
    return "".join(parts)


def compare_section(frame: pd.DataFrame, baseline: pd.DataFrame, baseline_label: str) -> str:
    matched, only = analysis.compare(frame, baseline)
    parts = [f"<p>Baseline: {esc(baseline_label)}. Time ratio = new median / baseline median; memory ratio = "
             f"new peak / baseline peak. Regression: time ratio above {analysis.TIME_REGRESSION:g} or memory "
             f"ratio above {analysis.MEMORY_REGRESSION:g}; improvement: below {analysis.TIME_IMPROVEMENT:g} or "
             f"{analysis.MEMORY_IMPROVEMENT:g}; a config that was ok and is not (or the reverse) is marked in its "
             "status. High variance names the side whose timing has an IQR above 10% of its median: its time "
             "ratio can pass these bounds on noise alone. Times taken by different timers get no ratio (the "
             "timers column names both).</p>"]
    if matched.empty:
        parts.append("<p class='note'>No config is in both.</p>")
    else:
        # The key repeats the variant and N; it is shown only where those two do not tell configs apart.
        if not matched.duplicated(["variant", "N"]).any():
            matched = matched.drop(columns="key")
        styles = pd.DataFrame("", index=matched.index, columns=matched.columns)
        verdicts = {"time verdict": ["time ratio", "time verdict"],
                    "memory verdict": ["memory ratio", "memory verdict"],
                    "status verdict": ["status new", "status verdict"]}
        for verdict_column, cells in verdicts.items():
            for verdict in ("regression", "improvement"):
                styles.loc[matched[verdict_column] == verdict, cells] = verdict
        n_reg = int((matched[list(verdicts)] == "regression").any(axis=1).sum())
        n_imp = int((matched[list(verdicts)] == "improvement").any(axis=1).sum())
        parts.append(f"<p>{len(matched)} configs in both: {n_reg} with a regression, {n_imp} with an "
                     "improvement.</p>")
        parts.append(table(matched, styles=styles))
    parts.append("<h3>Configs in only one of them</h3>" + table(only))
    return "".join(parts)


def failures_section(frame: pd.DataFrame) -> str:
    if "status" not in frame:
        return "<p class='note'>No status column.</p>"
    failed = frame[frame["status"].fillna("") != "ok"]
    if failed.empty:
        return "<p>Every row is ok.</p>"
    columns = [c for c in ("run_id", "status", "variant", "n", "d", "pass", "dtype", "train_len", "eval_len",
                           "protocol", "reason")
               if c in failed and failed[c].notna().any()]
    return f"<p>{len(failed)} rows.</p>" + table(failed[columns])


def rows_section(frame: pd.DataFrame) -> str:
    columns = [c for c in frame.columns if frame[c].notna().any()]
    shown = frame[columns]
    legend = describe_columns()
    legend = legend[legend["column"].isin(columns)]
    return (f"<p>{len(frame)} rows, the {len(columns)} columns that have a value; units are in the column "
            "names (_ms, _bytes, _s) and in the column legend.</p>"
            "<details><summary>what each column means, with its unit (bench.record)</summary>" + table(legend)
            + "</details>" + table(shown, css_class="rows", text_width="40em"))


def flops_section() -> str:
    frame = pd.DataFrame({"quantity": list(FORMULAS), "formula": list(FORMULAS.values())})
    return (table(frame) + "<p class='note'>From bench.measure.flops.FORMULAS; B batch, H heads, N tokens, "
            "D head dim, C chunk length. A FLOP is a multiply or an add.</p>")


def _speed_sections(speed: pd.DataFrame, ceilings: dict, styles: plots.Styles | None = None) -> dict[str, str]:
    """Summary, time, memory and throughput: the sections made from speed rows."""
    # With batch x N held constant (tokens_per_batch) the batch shrinks as N grows: time and memory per call
    # would hide the scaling in N, so they are shown per sequence.
    per = ("per sequence (per call / batch, which varies with N in these runs)" if analysis.batch_varies(speed)
           else "per call")
    return {
        "time": figure("time", plots.time_figure(speed, styles),
                       f"Median time {per} against N (log-log), the band from the 20th to the 80th percentile; "
                       "the legend gives each line's fitted slope.") + _slope_note(speed, "time_median_ms"),
        "memory": figure("memory", plots.memory_figure(speed, styles),
                         f"Peak memory above the inputs{'' if per == 'per call' else ' ' + per} against N "
                         "(log-log); the legend gives each line's fitted slope.")
        + _slope_note(speed, "peak_mem_bytes"),
        "throughput": figure("throughput", plots.throughput_figure(speed, ceilings, styles),
                             "Achieved TFLOP/s (FLOPs by the formulas below over the median time) with the "
                             "matmul ceiling measured in the same run. The ceiling is measured once, at the "
                             "start: on a shared machine a point above it means the machine was busier then.")
        + _throughput_table(speed),
    }


def findings_section(items: list[str]) -> str:
    return ("<ul class='findings'>" + "".join(f"<li>{esc(item)}</li>" for item in items) + "</ul>"
            "<p class='note'>Written from the rows below. Times are medians per call; a ratio between two "
            "timings flagged high variance (IQR above 10% of the median) may be noise.</p>")


def cost_section(costs: pd.DataFrame, styles: plots.Styles | None) -> str:
    if costs.empty:
        return ("<p class='note'>Not measured: no encoded variant was timed beside its family's plain "
                "attention on the same backend at the same (N, D, pass).</p>")
    styles = styles or plots.variant_styles(costs["variant"])
    return (figure("cost", plots.cost_figure(costs, styles),
                   "Time and peak memory of each encoded variant over its family's plain attention on the same "
                   "backend at the same config (e.g. linear-rope@torch-chunked / linear@torch-chunked), "
                   "against N; x1 is no cost, below x1 the encoded variant was faster or smaller.")
            + _cost_table(costs))


def _cost_table(costs: pd.DataFrame) -> str:
    """The cost rows as two tables, time then memory: one line per encoded variant, a column per N."""
    keys = [c for c in costs.columns if c in analysis.PANEL_BASE + analysis.PANEL_EXTRA]
    index = [*keys, "variant", "reference"]
    noisy = costs[costs["high variance"] != ""].groupby("variant")["N"].apply(
        lambda ns: ", ".join(plots.format_tokens(n) for n in sorted(ns)))
    parts = []
    for value, heading in (("time ratio", "Time over plain attention's (median per call)"),
                           ("memory ratio", "Peak memory over plain attention's")):
        wide = costs.pivot_table(index=index, columns="N", values=value, aggfunc="last")
        wide.columns = [f"x @ {plots.format_tokens(n)}" for n in wide.columns]
        wide = wide.reset_index()
        if value == "time ratio":
            wide["high variance at N"] = [noisy.get(variant, "") for variant in wide["variant"]]
        parts.append(f"<h3>{esc(heading)}</h3>" + table(wide, precision=3))
    return "".join(parts) + ("<p class='note'>x = the encoded variant's median time (or peak) over its reference's "
                             "at that N; high variance: N where either timing has an IQR above 10% of its median."
                             "</p>")


def tradeoff_section(frame: pd.DataFrame, styles: plots.Styles | None) -> str:
    found, note = encodings.speed_quality(frame)
    if found.empty:
        return f"<p class='note'>Not shown: {esc(note)}.</p>"
    n = int(found["N"].iloc[0])
    styles = styles or plots.variant_styles(found["variant"])
    caption = (f"A point per variant: {note}. Error bars: time p20-p80; bits per byte, the noise of the mean "
               "over seeds, sqrt(SE^2 + seed sd^2 / seeds), or the rows' standard error with one seed (none "
               "drawn where the rows carry neither). The dashed step line and the grey rings mark the Pareto "
               "front of each panel: no other point is lower on both axes (the table's Pareto columns).")
    return figure("tradeoff", plots.tradeoff_figure(found, styles, n), caption) + table(found, precision=4)


def beyond_section(found: pd.DataFrame) -> str:
    if found.empty:
        return "<p class='note'>No series with ok speed rows to fit.</p>"
    return ("<p><strong>Extrapolated, not measured.</strong> Per series, time and peak memory fitted as a power "
            "law of N (least squares of log value against log N over the upper half of the measured lengths, "
            "bench.scaling, the fit the CI gate uses), then evaluated at 128k and 1M tokens. Brackets: 95% "
            "intervals of the fit (Student's t); they cover the fit's own noise, not a change of regime beyond "
            "the measured lengths (cache or memory tiers, another kernel path), so read them as the least "
            "uncertainty there is. Fits memory: the prediction plus the inputs (q, k, v) against the device's "
            "total memory recorded in environment.json: yes when even the interval's top fits, no when the "
            "estimate does not, uncertain between.</p>" + _beyond_tables(found))


def _beyond_tables(found: pd.DataFrame) -> str:
    """The predictions as two tables that fit the page: time, then peak memory with the memory check."""
    keys = [c for c in found.columns if c == "variant" or c in beyond.SERIES_COLUMNS]
    time_columns = [c for c in found.columns if c in ("measured N", "fitted from N", "time exponent", "note")
                    or c.startswith("time @")]
    peak_columns = [c for c in found.columns if c == "memory exponent" or c.startswith(("peak @", "fits memory @"))]
    parts = ["<h3>Time per call, seconds</h3>", table(found[keys + time_columns])]
    if peak_columns:
        parts += ["<h3>Peak memory above the inputs, GiB</h3>", table(found[keys + peak_columns])]
    return "".join(parts)


def render_runs(runs: Sequence[Run], baseline: Sequence[Run] = (), *, title: str | None = None) -> str:
    """The HTML report of ``runs`` (and a comparison with ``baseline`` when given)."""
    frame = combine(runs)
    speed = frame[frame["task"].fillna("speed") == "speed"] if "task" in frame else frame
    has_extrapolation = "task" in frame and bool((frame["task"] == "extrapolation").any())
    # One colour per encoding, one line style per backend, across every figure: made from all the report's
    # variants, not each figure's.
    styles = plots.variant_styles(frame["variant"].dropna()) if "variant" in frame else None
    costs = encodings.encoding_costs(speed)
    predicted = beyond.predictions(speed, device_memory(runs)) if not speed.empty else pd.DataFrame()
    body: dict[str, str] = {"findings": findings_section(findings(frame, speed, costs, predicted))}
    has_speed = not speed.empty or not has_extrapolation  # a run of extrapolation rows only has no speed sections
    if has_speed:
        body["cost"] = cost_section(costs, styles)
    if has_speed and has_extrapolation:
        body["tradeoff"] = tradeoff_section(frame, styles)
    if has_speed:
        body.update(_speed_sections(speed, run_ceilings(runs), styles))
    if has_extrapolation:
        body["extrapolation"] = extrapolation_section(frame, styles)
    if has_speed:
        body["beyond"] = beyond_section(predicted)
        body["summary"] = summary_section(speed)
    if baseline:
        label = ", ".join(f"{run.run_id} ({run.path})" for run in baseline)
        body["compare"] = compare_section(frame, combine(baseline), label)
    body["failures"] = failures_section(frame)
    body["environment"] = environment_section(runs)
    body["rows"] = rows_section(frame)
    body["flops"] = flops_section()
    body = {key: body[key] for key in SECTIONS if key in body}
    run_names = ", ".join(run.run_id for run in runs)
    heading = title or f"Attention scaling report: {run_names}"
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    nav = "".join(f"<a href='#{key}'>{esc(SECTIONS[key])}</a>" for key in body)
    sections = "".join(_section(key, content) for key, content in body.items())
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{esc(heading)}</title><style>{CSS}</style></head><body>"
            f"<h1>{esc(heading)}</h1><p class='note'>Made {esc(created)} by python -m reports from "
            f"{esc(', '.join(str(run.path) for run in runs))}.</p><nav>{nav}</nav>{sections}</body></html>")


def _section(key: str, content: str) -> str:
    """A section; those of APPENDIX collapsed under their heading."""
    if key in APPENDIX:
        return (f"<section id='{key}' class='appendix'><details><summary><h2>{esc(SECTIONS[key])}</h2>"
                f"</summary>{content}</details></section>")
    return f"<section id='{key}'><h2>{esc(SECTIONS[key])}</h2>{content}</section>"


def _throughput_table(frame: pd.DataFrame) -> str:
    best = analysis.best_throughput(frame)
    if best.empty:
        return ""
    best = best.rename(columns={c: f"max {c}" + (f", {SCHEMA[c].unit}" if SCHEMA[c].unit else "")
                                for c in analysis.THROUGHPUT})
    return ("<p class='note'>Best over N per panel and variant (fractions are of the ceilings measured in the "
            "run; the copy fraction uses the minimum bytes any implementation must move).</p>"
            + table(best, precision=3))


def render_report(run_dirs: Iterable[str | Path], compare: Iterable[str | Path] = (), *,
                  title: str | None = None) -> str:
    """Load every run directory (and the baseline ones) through the store and render them as one report."""
    runs = [load_run(path) for path in run_dirs]
    if not runs:
        raise ValueError("render needs at least one run directory")
    return render_runs(runs, [load_run(path) for path in compare], title=title)


def write_report(run_dirs: Iterable[str | Path], output: str | Path, compare: Iterable[str | Path] = (), *,
                 title: str | None = None) -> Path:
    """Render and write the report to ``output``; returns its path."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_report(run_dirs, compare, title=title), encoding="utf-8")
    return output
