"""HTML reports and the terminal summary: from a small real run, and from frames with holes in them."""

import base64
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli import main as bench_main
from bench.record import to_frame
from bench.sweep.presets import load_spec
from bench.sweep.session import Sweep
from bench.sweep.store import RunStore
from reports import analysis, beyond, encodings
from reports.__main__ import main as reports_main
from reports.findings import beyond_items
from reports.load import Run, ceilings_by_dtype, load_run, run_ceilings
from reports.render import REPORT_FILE, render_runs
from reports.summary import summary_text

TINY = Path(__file__).parent / "data" / "tiny.toml"
EVIL = "<script>alert('x')</script>"
EVIL_VARIANT = "linear-<img src=x onerror=alert(1)>@evil"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Structure(HTMLParser):
    """Section ids, <figure class="plot"> names with the images inside each, and every tag seen."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.figures: dict[str, list[str]] = {}
        self.tags: set[str] = set()
        self._figure: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self.sections.append(attrs["id"])
        if tag == "figure" and "plot" in (attrs.get("class") or ""):
            self._figure = attrs["data-plot"]
            self.figures[self._figure] = []
        if tag == "img" and self._figure:
            self.figures[self._figure].append(attrs["src"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._figure = None


def structure(text: str) -> _Structure:
    parser = _Structure()
    parser.feed(text)
    return parser


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A real tiny sweep (linear, FlashAttention's CPU kernel, softmax; N = 64, 128) plus one stored row whose
    variant and reason carry markup, as a package's error message could."""
    results = tmp_path_factory.mktemp("runs")
    spec = load_spec(str(TINY), overrides={"variants": "linear@torch-chunked,flash@sdpa-flash,softmax@naive"})
    sweep = Sweep(spec, results_dir=results, run_id="tiny")
    for planned in sweep.pending():
        sweep.run_one(planned)
    first = sweep.rows[0]
    sweep.store.append({**first, "key": "evil|key", "variant": EVIL_VARIANT, "status": "error",
                        "reason": f"{EVIL} & <b>bold</b>", "time_median_ms": None})
    sweep.finish()
    return sweep.store.path


def test_report_from_a_real_run_has_every_section_one_image_per_plot_and_no_markup_from_data(real_run):
    text = render_runs([load_run(real_run)])
    found = structure(text)
    assert found.sections == ["findings", "cost", "time", "memory", "throughput", "beyond", "summary", "failures",
                              "environment", "rows", "flops"]
    assert set(found.figures) == {"time", "memory", "throughput"}
    # no encoded variant in this run: the cost section and the findings say so instead of drawing nothing
    assert "Cost of each encoding: not measured" in text and "Extrapolation quality: not measured" in text
    for name, images in found.figures.items():
        assert len(images) == 1, name
        assert images[0].startswith("data:image/png;base64,")
        assert base64.b64decode(images[0].split(",", 1)[1]).startswith(PNG_SIGNATURE)
    assert text.count("<img") == 3
    # the injected markup is shown as text, never parsed
    assert "script" not in found.tags and "b" not in found.tags
    assert "<script" not in text.lower() and "onerror=alert" not in text.replace("onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;alert(" in text and "&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in text
    assert "linear-&lt;img src=x onerror=alert(1)&gt;@evil" in text
    # no network: nothing is fetched from anywhere
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", text)
    # the numbers come from the store: every measured config's median is in the rows table
    frame = RunStore(real_run.parent, real_run.name).frame()
    assert (frame["status"] == "ok").sum() == 6
    assert "flash@sdpa-flash" in text and "1 rows." in text  # the failure list holds the one error row


def test_crossover_and_fastest_tables_from_the_real_run(real_run):
    frame = load_run(real_run).frame
    fastest = analysis.fastest(frame)
    assert list(fastest["N"]) == [64, 128]
    for _, row in fastest.iterrows():
        at_n = frame[(frame["n"] == row["N"]) & (frame["status"] == "ok")]
        assert row["fastest"] == at_n.loc[at_n["time_median_ms"].idxmin(), "variant"]
    cross = analysis.crossovers(frame)
    assert list(cross["linear variant"]) == ["linear@torch-chunked"]
    assert cross["N*"].notna().iloc[0] or cross["note"].iloc[0].startswith("not within the measured range")


def test_bench_run_ends_by_printing_the_report_path(tmp_path, capsys):
    args = ["run", "--preset", str(TINY), "--results-dir", str(tmp_path), "--run-id", "r", "--no-progress",
            "--n", "64"]
    assert bench_main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"report: {(tmp_path / 'r' / REPORT_FILE).resolve()}"
    assert (tmp_path / "r" / REPORT_FILE).read_text().startswith("<!DOCTYPE html>")


def test_render_command_joins_runs_and_compares_with_a_baseline(real_run, tmp_path, capsys):
    """A baseline made from the real run's rows: one config 2x faster and half the memory there (so the new
    run regresses), one an error there (fixed now), one config only in the baseline; the new run has the
    injected row only it has."""
    rows = RunStore(real_run.parent, real_run.name).rows()
    measured = [r for r in rows if r["status"] == "ok"]
    slower, gone, fixed = measured[0], measured[1], measured[2]
    baseline = RunStore(tmp_path, "base")
    for row in rows:
        if row["key"] == "evil|key":
            continue
        if row["key"] == slower["key"]:
            row = {**row, "time_median_ms": row["time_median_ms"] / 2, "peak_mem_bytes": row["peak_mem_bytes"] / 2}
        if row["key"] == fixed["key"]:  # an error in the baseline that the new run measures
            row = {**row, "status": "error", "reason": "boom", "time_median_ms": None, "peak_mem_bytes": None}
        baseline.append({**row, "run_id": "base"})
    baseline.append({**gone, "key": "only|in|baseline", "run_id": "base"})
    output = tmp_path / "out" / "r.html"
    assert reports_main(["render", str(real_run), "--compare", str(tmp_path / "base"), "-o", str(output)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {output.resolve()}"
    text = output.read_text()
    found = structure(text)
    assert "compare" in found.sections
    matched, only = analysis.compare(load_run(real_run).frame, load_run(tmp_path / "base").frame)
    regressed = matched.set_index("key").loc[slower["key"]]
    assert regressed["time ratio"] == pytest.approx(2.0) and regressed["time verdict"] == "regression"
    assert regressed["memory ratio"] == pytest.approx(2.0) and regressed["memory verdict"] == "regression"
    assert set(matched[matched["key"] != slower["key"]]["time verdict"]) == {""}
    assert dict(zip(matched["key"], matched["status verdict"], strict=True)) == {
        r["key"]: "improvement" if r["key"] == fixed["key"] else "" for r in rows if r["key"] != "evil|key"}
    assert dict(zip(only["key"], only["only in"], strict=True)) == {"evil|key": "new runs",
                                                                   "only|in|baseline": "baseline"}
    assert text.count('class="data row') > 0 and "regression" in text
    assert reports_main(["render", str(tmp_path / "nope"), "-o", str(output)]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def _row(variant: str, n: int, ms: float | None, *, family: str = "linear", status: str = "ok", d: int = 64,
         pass_: str = "fwd", peak: float | None = 1e6, reason: str = "", run_id: str = "x") -> dict:
    return {"run_id": run_id, "key": f"{variant}|{pass_}|n{n}|d{d}", "variant": variant, "family": family,
            "n": n, "d": d, "pass": pass_, "dtype": "float32", "status": status, "reason": reason,
            "time_median_ms": ms, "time_p20_ms": ms and ms * 0.9, "time_p80_ms": ms and ms * 1.1,
            "peak_mem_bytes": peak, "tflops": ms and 1e-3 * n / ms}


def _render(rows: list[dict], sessions: list | None = None, compare: bool = False) -> tuple[str, _Structure]:
    run = Run(path=Path("/nowhere/x"), run_id="x", frame=to_frame(rows) if rows else pd.DataFrame(),
              sessions=sessions or [])
    text = render_runs([run], [run] if compare else [])
    return text, structure(text)


@pytest.mark.parametrize("case", ["missing columns", "only failed", "nans", "single n", "single variant", "empty"])
def test_render_survives_frames_with_holes(case):
    lin = [_row("linear@a", n, 0.01 * n) for n in (256, 512, 1024)]
    flash = [_row("flash@b", n, 1e-4 * n * n, family="flash") for n in (256, 512, 1024)]
    rows = {
        "missing columns": [{"key": f"k{n}", "variant": "v", "n": n, "status": "ok"} for n in (1, 2)],
        "only failed": [_row("v@a", n, None, status="oom", reason="out of memory", peak=None) for n in (1, 2)],
        "nans": [{**r, "time_median_ms": math.nan, "peak_mem_bytes": math.nan} for r in lin] + flash[:1],
        "single n": [lin[0], flash[0]],
        "single variant": lin,
        "empty": [],
    }[case]
    text, found = _render(rows)
    assert found.sections[0] == "findings" and found.sections[-3:] == ["environment", "rows", "flops"]
    assert {"summary", "failures", "beyond"} <= set(found.sections)
    for images in found.figures.values():
        assert len(images) == 1
    if case == "only failed":
        assert not found.figures and "out of memory" in text and "No ok rows" in text
        assert "Fastest variant: not measured" in text and "no prediction" in text
        assert "2 rows (2 speed): oom 2; the 2 not ok are listed" in text
    if case == "single variant":
        assert set(found.figures) == {"time", "memory", "throughput"} and "slope" in text
        assert "1k tokens" not in text and "fitted from N" in text  # the series is fitted and predicted
    if case == "single n":
        assert "one N (256): no fit" in text
    _, compared = _render(rows, compare=True)  # the run against itself: the comparison renders too
    assert "compare" in compared.sections


def test_extrapolation_rows_get_their_section_and_are_left_out_without_them():
    speed = [_row("linear@a", n, 0.01 * n) for n in (256, 512)]
    extrap = [{"key": f"e{p}{v}{e}", "task": "extrapolation", "variant": v, "status": "ok", "protocol": p,
               "train_len": 512, "eval_len": e, "perplexity": 3.0 + e / 1024}
              for p in ("non-overlapping", "sliding") for v in ("linear-lrpe-unitary@x", "softmax@y")
              for e in (256, 512, 1024, 2048)]
    text, found = _render(speed + extrap)
    assert "extrapolation" in found.sections and len(found.figures["extrapolation"]) == 1
    assert "ppl @ 2k" in text
    _, without = _render(speed)
    assert "extrapolation" not in without.sections and "extrapolation" not in without.figures
    _, alone = _render(extrap)  # an extrapolation run alone: no speed sections
    assert alone.sections == ["findings", "extrapolation", "failures", "environment", "rows", "flops"]


def test_ceilings_flat_or_per_dtype():
    flat = {"dtype": "float32", "matmul_tflops": 0.2, "copy_gbps": 20.0}
    assert ceilings_by_dtype(flat) == {"float32": flat}
    nested = {"float32": {"matmul_tflops": 0.2}, "bfloat16": {"matmul_tflops": 0.4}}
    assert ceilings_by_dtype(nested) == nested
    assert ceilings_by_dtype(None) == {} and ceilings_by_dtype({}) == {} and ceilings_by_dtype("x") == {}
    odd = {"dtype": "float32", "matmul_tflops": "fast", "copy_buffer_bytes": [1], "matmul_shape": EVIL}
    for ceilings in (flat, nested, odd, "garbage"):
        text, found = _render([_row("linear@a", n, 0.01 * n) for n in (256, 512)],
                              sessions=[{"ceilings": ceilings, "hostname": EVIL}])
        assert "throughput" in found.figures and "<script" not in text
        assert ("matmul TFLOP/s" in text) == isinstance(ceilings, dict)


@pytest.mark.parametrize("c_lin, c_flash", [(0.05, 1e-4), (0.02, 3e-5), (1.0, 1e-4)])
def test_crossover_is_exact_for_power_laws(c_lin, c_flash):
    """linear = c_lin N, flash = c_flash N^2: log(ratio) is linear in log N, so the interpolation is exact,
    N* = c_lin / c_flash, whenever that lies inside the measured range."""
    ns = 2 ** np.arange(8, 17)
    found = analysis.crossover(pd.Series(c_lin * ns, index=ns), pd.Series(c_flash * ns.astype(float) ** 2, index=ns))
    expected = c_lin / c_flash
    if ns[0] < expected <= ns[-1]:
        assert found["N*"] == pytest.approx(expected, rel=1e-9)
        assert found["below"] < expected <= found["above"] and found["above"] == 2 * found["below"]
    else:
        assert found["N*"] is None and found["note"].startswith("not within the measured range")


def test_crossover_takes_the_last_change_and_names_the_range():
    ns = [256, 512, 1024, 2048]
    flash = pd.Series([1.0, 1.0, 1.0, 1.0], index=ns)
    found = analysis.crossover(pd.Series([2.0, 0.5, 2.0, 0.5], index=ns), flash)
    assert found["below"] == 1024 and found["above"] == 2048 and found["N*"] == pytest.approx(math.sqrt(1024 * 2048))
    faster = analysis.crossover(pd.Series([0.5] * 4, index=ns), flash)
    assert faster["N*"] is None and "faster at every measured N (256..2048)" in faster["note"]
    slower = analysis.crossover(pd.Series([2.0] * 4, index=ns), flash)
    assert slower["N*"] is None and "not faster at N = 2048" in slower["note"]
    assert analysis.crossover(pd.Series([1.0], index=[64]), flash)["note"] == "no N measured for both"


def test_report_fits_use_bench_scaling_over_the_upper_half():
    ns = np.array([256, 512, 1024, 2048, 4096, 8192], dtype=float)
    found = analysis.fit(ns, 3 * ns**1.5)
    assert found.exponent == pytest.approx(1.5) and found.lengths[0] == 2048  # the largest 3 of 6
    noisy_start = 2 * ns * np.array([40, 10, 1, 1, 1, 1])  # fixed costs dominate the two shortest lengths
    assert analysis.fit(ns, noisy_start).exponent == pytest.approx(1.0)
    assert analysis.fit(ns[:2], ns[:2] ** 2).exponent == pytest.approx(2.0)
    assert analysis.fit(ns[:1], ns[:1]) is None
    assert analysis.fit([256, 512, 1024], [0.0, -1.0, 1.0]) is None  # one usable point


def test_panels_split_by_d_and_pass_and_join_what_varies():
    rows = [_row("linear@a", 256, 1.0, d=d, pass_=p) for d in (64, 128) for p in ("fwd", "fwd+bwd")]
    frame = to_frame(rows)
    keys = [key for key, _ in analysis.panels(frame)]
    assert keys == [{"d": d, "pass": p} for d in (64, 128) for p in ("fwd", "fwd+bwd")]
    assert analysis.panel_title(keys[1]) == "D = 64, fwd+bwd"


def test_summary_text_lists_times_memory_and_failures():
    rows = [_row("linear@a", n, 0.01 * n) for n in (256, 512)] + [
        {**_row("softmax@b", 512, None, status="over-budget", reason="predicted 9 s > 8 s"), "wall_s": None}]
    frame = to_frame([{**r, "wall_s": 1.0, "overhead_s": 0.1} if r["status"] == "ok" else r for r in rows])
    text = summary_text(frame)
    assert "median time, ms" in text and "2.56" in text and "5.12" in text
    assert "over-budget  softmax@b" in text and "N=512: predicted 9 s > 8 s" in text
    assert "statuses: ok 2, over-budget 1" in text
    assert summary_text(pd.DataFrame()) == "no rows"


def test_ceilings_as_a_run_stores_them_are_read_per_dtype(real_run):
    """The session's ceilings as ``measure_ceilings`` writes them (``{"matmul": {dtype: {...}}, "copy_gbps": ...}``)
    give the report the run's matmul rate for its dtype, not an 'unknown dtype' row without a rate."""
    run = load_run(real_run)
    stored = run.sessions[0]["ceilings"]
    rate = stored["matmul"]["float32"]["matmul_tflops"]
    found = run_ceilings([run])
    assert list(found) == [("tiny", "float32")]
    assert found[("tiny", "float32")]["matmul_tflops"] == rate
    assert found[("tiny", "float32")]["copy_gbps"] == stored["copy_gbps"]
    text = render_runs([run])
    assert "unknown dtype" not in text and f"{rate:.4g}" in text


def test_best_throughput_is_per_panel_not_mixed_across_passes_and_head_dims():
    """A variant measured fwd and fwd+bwd at two D has four bests, each labelled with its panel: one max over
    all of them would put a fwd rate beside a fwd+bwd tokens/s with nothing saying which is which."""
    rows = [{**_row("linear@a", n, ms, d=d, pass_=p), "tokens_per_s": n / ms * 1e3}
            for d in (64, 128) for p, ms in (("fwd", 1.0), ("fwd+bwd", 4.0)) for n in (256, 512)]
    best = analysis.best_throughput(to_frame(rows))
    assert len(best) == 4
    by_panel = best.set_index(["d", "pass"])
    assert by_panel.loc[(64, "fwd"), "tokens_per_s"] == pytest.approx(512e3)
    assert by_panel.loc[(64, "fwd+bwd"), "tokens_per_s"] == pytest.approx(128e3)
    text, _ = _render(rows)
    section = text.split("<section id='throughput'>")[1].split("</section>")[0]
    assert section.count(">fwd+bwd<") == 2 and section.count(">128<") == 2  # each row names its panel


def _colours(png_src: str) -> set[tuple[int, int, int]]:
    """The exact RGB colours of a figure's pixels (its lines' centres keep their colour exactly)."""
    import io

    import matplotlib.image

    pixels = matplotlib.image.imread(io.BytesIO(base64.b64decode(png_src.split(",", 1)[1])), format="png")
    return {tuple(round(255 * c) for c in p[:3]) for p in pixels.reshape(-1, pixels.shape[-1])}


def test_one_colour_per_encoding_one_style_per_backend_in_every_figure():
    """linear-rope@a and softmax-rope@b share the rope colour (and differ in marker); linear@a is the plain
    colour; the rope colour is in the speed figures and in the extrapolation figure, where softmax-rope@b is
    alone, and the plain colour is not there."""
    from matplotlib.colors import to_rgb

    from reports.plots import ENCODING_COLOURS, variant_styles

    styles = variant_styles(["linear-rope@a", "softmax-rope@naive", "linear@a", "linear-lrpe-unitary@triton",
                             "linear-lrpe-unitary-householder@triton", "linear@torch-chunked"])
    assert styles["linear-rope@a"]["color"] == styles["softmax-rope@naive"]["color"] == ENCODING_COLOURS["rope"]
    assert styles["linear-rope@a"]["marker"] != styles["softmax-rope@naive"]["marker"]
    assert styles["linear@torch-chunked"]["linestyle"] != styles["softmax-rope@naive"]["linestyle"]
    assert styles["linear-lrpe-unitary@triton"]["linestyle"] == styles["linear-lrpe-unitary-householder@triton"][
        "linestyle"]
    assert styles["linear-lrpe-unitary@triton"]["color"] != styles["linear-lrpe-unitary-householder@triton"]["color"]
    speed = [_row(v, n, 0.01 * n) for v in ("linear@a", "linear-rope@a") for n in (256, 512)]
    extrap = [{"key": f"e{e}", "task": "extrapolation", "variant": "softmax-rope@b", "status": "ok",
               "protocol": "sliding", "train_len": 256, "eval_len": e, "perplexity": 3.0 + e / 1024}
              for e in (256, 512, 1024)]
    _, found = _render(speed + extrap)
    plain, rope = (tuple(round(255 * c) for c in to_rgb(ENCODING_COLOURS[e])) for e in ("none", "rope"))
    assert {plain, rope} <= _colours(found.figures["time"][0])
    extrapolation = _colours(found.figures["extrapolation"][0])
    assert rope in extrapolation and plain not in extrapolation


def test_slopes_are_per_sequence_when_batch_x_n_is_held_constant():
    """The full preset holds batch x N at 64k tokens (batch = 64k / N). Per call, linear attention's time and
    memory are then flat in N and softmax's grow as N: the fitted slopes must be of the time and memory per
    sequence (per call / batch), about 1 and 2, as the report's note on slopes says."""
    ns = [1024, 2048, 4096, 8192]
    rows = []
    for variant, power in (("linear@a", 1), ("softmax@b", 2)):
        for n in ns:
            batch = 65536 // n
            ms = 1e-6 * batch * n**power
            rows.append({**_row(variant, n, ms, family=variant.split("@")[0], peak=4.0 * batch * n**power),
                         "batch": batch})
    frame = to_frame(rows)
    for value in ("time_median_ms", "peak_mem_bytes"):
        found = analysis.slopes(frame, value).set_index("variant")["slope"]
        assert found["linear@a"] == pytest.approx(1.0) and found["softmax@b"] == pytest.approx(2.0), value
    text, found = _render(rows)
    for section in ("time", "memory"):
        assert "per sequence" in text.split(f"<section id='{section}'>")[1].split("</section>")[0], section
    assert set(found.figures) == {"time", "memory", "throughput"}
    one_batch, _ = _render([{**r, "batch": 1} for r in rows])  # one batch size: per call, as before
    assert "Median time per call against N" in one_batch and "Median time per sequence" not in one_batch


def test_times_flagged_high_variance_are_marked_where_the_report_compares_them():
    """A 12% 'regression' between two timings whose IQR is above 10% of the median is within their noise:
    the comparison and the fastest-variant table say which timings are flagged, instead of stating them as
    firmly as clean ones."""
    def timed(variant: str, ms: float, noisy: bool) -> dict:
        return {**_row(variant, 1024, ms), "high_variance": noisy, "time_iqr_ms": ms * (0.3 if noisy else 0.01)}

    new = to_frame([timed("linear@a", 1.12, True), timed("flash@b", 1.0, False)])
    old = to_frame([timed("linear@a", 1.0, False), timed("flash@b", 1.0, False)])
    matched, _ = analysis.compare(new, old)
    flags = dict(zip(matched["variant"], matched["high variance"], strict=True))
    assert flags == {"linear@a": "new", "flash@b": ""}
    fastest = analysis.fastest(new).iloc[0]
    assert fastest["fastest"] == "flash@b" and fastest["high variance"] == "linear@a"


def test_compare_with_an_empty_side_lists_every_config_of_the_other(real_run, tmp_path):
    """A run with no rows yet (just started, or every config skipped) against a baseline: every baseline config
    is in the baseline only, not 'none'."""
    base = load_run(real_run).frame
    empty = RunStore(tmp_path, "empty")
    empty.rows_path.touch()
    matched, only = analysis.compare(load_run(empty.path).frame, base)
    assert matched.empty
    assert sorted(only["key"]) == sorted(base["key"]) and set(only["only in"]) == {"baseline"}
    matched, only = analysis.compare(base, load_run(empty.path).frame)
    assert sorted(only["key"]) == sorted(base["key"]) and set(only["only in"]) == {"new runs"}


def test_compare_takes_no_time_ratio_between_different_timers():
    """Times from different clocks (wall time vs a gate round's CPU time, which counts every thread; do_bench vs
    a CUDA-event clock) are not comparable: no ratio and no verdict, and the table says why."""
    def timed(timer: str, ms: float) -> dict:
        return {**_row("linear@a", 1024, ms), "timer": timer}

    matched, _ = analysis.compare(to_frame([timed("process_time", 2.0)]), to_frame([timed("perf_counter", 1.0)]))
    row = matched.iloc[0]
    assert pd.isna(row["time ratio"]) and row["time verdict"] == ""
    assert row["timers"] == "perf_counter -> process_time"
    same, _ = analysis.compare(to_frame([timed("perf_counter", 2.0)]), to_frame([timed("perf_counter", 1.0)]))
    assert same.iloc[0]["time ratio"] == pytest.approx(2.0) and same.iloc[0]["time verdict"] == "regression"
    assert "timers" not in same


def _extrap_row(variant: str, eval_len: int, bpb: float, seed: int = 0, **extra) -> dict:
    return {"key": f"e|{variant}|{eval_len}|{seed}", "task": "extrapolation", "variant": variant, "status": "ok",
            "protocol": "non-overlapping", "train_len": 128, "eval_len": eval_len, "seed": seed,
            "bits_per_byte": bpb, "perplexity": 2.0**bpb, **extra}


def _section(text: str, name: str) -> str:
    return text.split(f"<section id='{name}'")[1].split("</section>")[0]


def test_findings_open_the_report_and_the_appendix_is_collapsed(real_run):
    text = render_runs([load_run(real_run)])
    found = structure(text)
    assert found.sections[0] == "findings"
    findings = _section(text, "findings")
    assert "the longest timed, the fastest is" in findings and "N = 128" in findings
    for name in ("environment", "rows", "flops"):  # collapsed: the content sits inside a closed <details>
        section = _section(text, name)
        assert section.startswith(" class='appendix'><details><summary><h2>") and "<details open" not in section[:60]
    assert text.index("<section id='findings'") < text.index("<section id='time'") < text.index(
        "<section id='summary'") < text.index("<section id='environment'")


def test_cost_of_each_encoding_is_over_its_family_plain_attention_on_the_same_backend():
    """linear-rope@a costs 2x the time and 3x the memory of linear@a; softmax-rope@b 1.5x softmax@b's time;
    linear-rope@c has no plain linear@c beside it and gets no cost row."""
    rows = []
    for n in (256, 512, 1024):
        rows += [_row("linear@a", n, 0.01 * n, peak=1e6), _row("linear-rope@a", n, 0.02 * n, peak=3e6),
                 _row("softmax@b", n, 1e-4 * n * n, family="softmax", peak=2e6),
                 _row("softmax-rope@b", n, 1.5e-4 * n * n, family="softmax", peak=2e6),
                 _row("linear-rope@c", n, 0.05 * n)]
    costs = encodings.encoding_costs(to_frame(rows))
    assert set(costs["variant"]) == {"linear-rope@a", "softmax-rope@b"}
    by = costs.set_index(["variant", "N"])
    assert by.loc[("linear-rope@a", 512), "time ratio"] == pytest.approx(2.0)
    assert by.loc[("linear-rope@a", 512), "memory ratio"] == pytest.approx(3.0)
    assert by.loc[("softmax-rope@b", 1024), "time ratio"] == pytest.approx(1.5)
    assert by.loc[("softmax-rope@b", 1024), "reference"] == "softmax@b"
    text, found = _render(rows)
    assert len(found.figures["cost"]) == 1
    cost = _section(text, "cost")
    assert "x @ 1k" in cost and "Time over plain attention" in cost and "Peak memory over plain attention" in cost
    findings = _section(text, "findings")
    assert "Cost over linear@a at N = 1k (D = 64, fwd): rope x2.00 time, x3.00 memory" in findings
    assert "Cost over softmax@b at N = 1k (D = 64, fwd): rope x1.50 time, x1.00 memory" in findings


def test_quality_uses_the_rows_standard_error_and_the_seed_spread():
    rows = [_extrap_row("linear-lrpe-unitary@x", 512, bpb, seed=s, loss_se_nats=0.01 * math.log(2),
                        bpb_vs_train_len=0.1 * s, bpb_vs_train_len_se=0.03)
            for s, bpb in enumerate((2.0, 2.2, 2.4))]
    rows += [_extrap_row("softmax@y", 512, 3.0, bits_per_byte_se=0.05), _extrap_row("softmax@y", 1024, 3.5),
             _extrap_row("linear-lrpe-unitary@x", 256, 1.0)]
    # loss_se_nats, bits_per_byte_se and bpb_vs_train_len are being added to bench.record by the extrapolation
    # workload: the frame is built without the schema's check, so that the report is ready for them either way
    frame = pd.DataFrame(rows)
    found = encodings.quality(frame).set_index("variant")
    unitary = found.loc["linear-lrpe-unitary@x"]
    assert unitary["eval_len"] == 512  # the longest length both variants reached, not softmax's 1024
    assert unitary["bits/byte"] == pytest.approx(2.2) and unitary["seeds"] == 3
    # Seeds are scored on the same bytes: the sampling error is the rows' (0.01), not divided by the seeds,
    # and the noise of the mean is sqrt(0.01^2 + 0.2^2 / 3) (bench.extrapolation.noise's one rule).
    assert unitary["seed sd"] == pytest.approx(0.2) and unitary["SE"] == pytest.approx(0.01)
    assert unitary["error"] == pytest.approx(math.sqrt(0.01**2 + 0.2**2 / 3))
    assert found.loc["softmax@y", "error"] == pytest.approx(0.05) and math.isnan(found.loc["softmax@y", "seed sd"])
    bare = encodings.quality(to_frame([_extrap_row("a@x", 512, 2.0), _extrap_row("b@x", 512, 2.5)]))
    assert bare["error"].isna().all()  # neither SE nor seeds: no noise, not a zero
    text = render_runs([Run(path=Path("/nowhere/x"), run_id="x", frame=frame, sessions=[])])
    findings = _section(text, "findings")
    assert unitary["vs train length"] == pytest.approx(0.1)
    assert unitary["vs train length SE"] == pytest.approx(0.03)
    assert ("best linear-lrpe-unitary@x 2.200 bits/byte ± 0.116 (3 seeds: seed sd 0.200, SE 0.010), +0.100 ± 0.03 "
            "over its own at the training length") in findings
    assert "worst softmax@y 3.000 ± 0.050 (standard error; one seed)" in findings
    assert "the gap, 0.800 bits/byte, is 6.9 x the larger noise" in findings


def test_speed_against_quality_has_one_point_per_variant_and_the_pareto_front():
    speed = [_row(v, n, ms * n, family=v.split("-")[0].split("@")[0])
             for v, ms in (("linear@a", 0.01), ("linear-lrpe-unitary@a", 0.02), ("softmax@b", 0.05),
                           ("linear-rope@a", 0.03))
             for n in (256, 512)]
    speed.append(_row("softmax@b", 1024, 50.0, family="softmax"))  # only softmax reaches 1k: common N is 512
    extrap = [_extrap_row("linear@a", 512, 3.0), _extrap_row("linear-lrpe-unitary@a", 512, 2.0),
              _extrap_row("softmax@b", 512, 2.5), _extrap_row("linear-rope@a", 512, 3.5)]
    table, note = encodings.speed_quality(to_frame(speed + extrap))
    assert "N = 512" in note
    front = dict(zip(table["variant"], table["Pareto, time"], strict=True))
    # rope is slower than plain and worse: dominated; softmax is slower than unitary and worse: dominated
    assert front == {"linear@a": True, "linear-lrpe-unitary@a": True, "softmax@b": False, "linear-rope@a": False}
    assert table["Pareto, memory"].sum() >= 1  # every peak is 1e6 B: the best bits per byte is on the front
    assert table.set_index("variant").loc["linear-lrpe-unitary@a", "Pareto, memory"]
    _, found = _render(speed + extrap)
    assert found.sections.index("tradeoff") < found.sections.index("time")
    assert len(found.figures["tradeoff"]) == 1
    _, speed_only = _render(speed)
    assert "tradeoff" not in speed_only.sections


def test_predictions_at_128k_and_1m_follow_the_power_law_and_check_the_device_memory():
    """time = 1e-6 N^2 ms with 1% noise at 5 lengths, peak = 1000 N bytes exactly; the GPU has 80 GiB. At 1M
    the time is 1.1e6 s (interval around it); the peak is 1000 x 2^20 B = 0.98 GiB plus q, k, v of
    3 x 4 heads x 2^20 x 64 x 4 B = 3 GiB: it fits."""
    rng = np.random.default_rng(1)
    ns = [1024 * 2**k for k in range(5)]
    rows = [{**_row("softmax@b", n, 1e-6 * n * n * (1 + 0.01 * rng.standard_normal()), family="softmax",
                    peak=1000.0 * n), "heads": 4, "batch": 1, "device_name": "H100"} for n in ns]
    frame = to_frame(rows)
    predicted = beyond.predictions(frame, {"H100": 80 * 2**30}).iloc[0]
    estimate, interval = predicted["time @ 1M, s"].split(" [")
    low, high = (float(x) for x in interval.rstrip("]").split(", "))
    truth = 1e-6 * 2.0**40 / 1e3
    assert float(estimate) == pytest.approx(truth, rel=0.1) and low < truth < high
    assert predicted["peak @ 1M, GiB"].startswith("0.977")
    assert predicted["fits memory @ 1M"] == "yes (of 80 GiB)"
    assert beyond.predictions(frame, {"H100": 2 * 2**30}).iloc[0]["fits memory @ 1M"] == "no (of 2 GiB)"
    assert beyond.predictions(frame, {}).iloc[0]["fits memory @ 128k"] == "memory not recorded"
    run = Run(path=Path("/nowhere/x"), run_id="x", frame=frame,
              sessions=[{"device_name": "H100", "gpu": {"memory_total_bytes": 80 * 2**30}}])
    text = render_runs([run])
    section = _section(text, "beyond")
    assert "Extrapolated, not measured." in section and "yes (of 80 GiB)" in section
    findings = _section(text, "findings")
    assert "Extrapolated, not measured: at 1M tokens the fit predicts softmax@b fastest" in findings
    assert "fits the device&#x27;s memory: yes (of 80 GiB)" in findings and "cannot tell" not in findings
    wide = beyond_items(pd.DataFrame([{"variant": "a", "time @ 1M, s": "3.34 [3.4e-07, 3.28e+07]",
                                       "fits memory @ 1M": "memory not recorded"}]))[0]
    assert "its interval spans 1e+14 x, so the fit cannot tell" in wide and "whether it fits is unknown" in wide


def test_extrapolation_table_and_figure_take_the_mean_over_seeds():
    rows = [{**_extrap_row("linear@x", e, 2.0, seed=s), "perplexity": p}
            for e in (128, 256) for s, p in ((0, 3.0), (1, 5.0))]
    text, found = _render(rows)
    section = _section(text, "extrapolation")
    assert ">4<" in section and ">3<" not in section and ">5<" not in section  # mean of 3 and 5, not the last
    assert len(found.figures["extrapolation"]) == 1


@pytest.mark.parametrize(("low", "high"), [(20.0, 800.0), (3.0, 9.0), (0.01, 500.0)])
def test_log_axis_tick_labels_are_plain_numbers(low: float, high: float) -> None:
    """Every tick label of a log axis is plain text: matplotlib's default minor labels are mathtext, which the
    report turns off, so they showed as raw '$\\mathdefault{2\\times10^{2}}$' (the memory-against-quality
    panel, 20-800 MiB)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reports.plots import _log_axis

    fig, ax = plt.subplots()
    ax.plot([low, high], [low, high])
    _log_axis(ax, "x")
    _log_axis(ax, "y")
    fig.canvas.draw()
    for axis in (ax.xaxis, ax.yaxis):
        labels = [t.get_text() for t in axis.get_majorticklabels() + axis.get_minorticklabels() if t.get_text()]
        assert labels and not any("$" in text or "mathdefault" in text for text in labels), labels
    plt.close(fig)
