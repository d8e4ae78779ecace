"""``smpsim analyze RUN [--json] [--plot DIR]``, ``smpsim compare RUN ...`` and ``smpsim query RUN SQL``.

The figures themselves come from smpsim.analysis; this module only opens runs, reports truncation and prints
(plain text off a terminal, rich tables on one).
"""

from __future__ import annotations

import csv
import json
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from smpsim.analysis import QUERY_MEMORY_LIMIT, QUERY_TIMEOUT
from smpsim.cli.common import EXIT_USAGE, console, fail, handle_errors, warn
from smpsim.headline import fmt as _fmt, marks

RunArg = Annotated[Path, typer.Argument(help="run directory (RUN/summary.json, RUN/trace/)", show_default=False)]
# --format of the commands that draw (analyze, compare, sweep): which files --plot writes.
FormatOpt = Annotated[Optional[str], typer.Option(
    "--format", metavar="png,svg,pdf", help="the --plot figures' formats, comma-separated (default png)",
    show_default=False)]


def plot_formats(text: str | None, plot: Path | None) -> list[str]:
    """--format's list (png without it); an error when it is given without --plot or names no known format."""
    from smpsim.analysis.figstyle import parse_formats

    if text is None:
        return ["png"]
    if plot is None:
        fail(f"--format {text} says which files --plot writes: add --plot DIR")
    try:
        return parse_formats(text)
    except ValueError as e:
        fail(str(e))


def wrote(paths: list[Path], to_stderr: bool) -> None:
    for path in paths:
        print(f"wrote {path}", file=sys.stderr if to_stderr else sys.stdout)


def _truncation_warning(meta, events: int | None = None, t_end: int | None = None) -> None:
    if meta.truncated:
        tail = "" if events is None else f"; analysing the {_fmt(events)} events recorded (up to t={_fmt(t_end)})"
        warn(f"{meta.path}: truncated run ({meta.reason}){tail}")


# ---------------------------------------------------------------------------------------------- rendering

_NUMBER_TEXT = re.compile(r"-|-?[0-9][0-9,.]*(%|x|e[+-]?[0-9]+)?")


def _numeric(v: Any) -> bool:
    """A number, or text that shows one (a percentage, a ratio "1.5x", "-" for none): right-aligned."""
    if isinstance(v, str):
        return bool(_NUMBER_TEXT.fullmatch(v))
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def render(sections: list[tuple[str, list[str] | None, list[list[Any]]]], con: Any = None) -> None:
    """Print report sections: plain aligned text, or rich tables on a terminal."""
    if con is not None:
        from rich.table import Table

        for title, headers, rows in sections:
            if headers is None:
                t = Table(title=title, title_justify="left", title_style="bold", show_header=False, box=None,
                          pad_edge=False)
                t.add_column(style="bold")
                t.add_column(justify="right")
                t.add_column(style="dim")
            else:
                t = Table(title=title, title_justify="left", title_style="bold")
                for i, h in enumerate(headers):
                    num = bool(rows) and all(_numeric(r[i]) or r[i] is None for r in rows)
                    t.add_column(h, justify="right" if num else "left")
            for r in rows:
                t.add_row(*(_fmt(v) for v in r))
            con.print(t)
            con.print()
        return
    out = []
    for title, headers, rows in sections:
        out.append(title)
        cells = [[_fmt(v) for v in r] for r in rows]
        if headers is None:
            w0 = max((len(r[0]) for r in cells), default=0)
            w1 = max((len(r[1]) for r in cells), default=0)
            for r, raw in zip(cells, rows):
                value = r[1].rjust(w1) if _numeric(raw[1]) else r[1].ljust(w1)
                out.append(f"  {r[0]:<{w0}}  {value}  {r[2]}".rstrip())
        else:
            out += ["  " + line for line in _aligned(headers, rows)]
        out.append("")
    typer.echo("\n".join(out).rstrip("\n"))


def _aligned(headers: list[str], rows: list[list[Any]]) -> list[str]:
    """A table as lines: numeric columns right-aligned, others left-aligned."""
    cells = [[_fmt(v) for v in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    num = [bool(rows) and all(_numeric(r[i]) or r[i] is None for r in rows) for i in range(len(headers))]
    lines = ["  ".join(h.rjust(w) if n else h.ljust(w) for h, w, n in zip(headers, widths, num)).rstrip()]
    for r in cells:
        lines.append("  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(r, widths, num)).rstrip())
    return lines


def _plain_table(headers: list[str], rows: list[list[Any]]) -> None:
    typer.echo("\n".join(_aligned(headers, rows)))


# ---------------------------------------------------------------------------------------------- analyze

@handle_errors
def analyze(
    run: RunArg,
    json_: Annotated[bool, typer.Option("--json", help="print the analysis as one JSON document")] = False,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", help="also write the figures and report.html into this directory", show_default=False)] = None,
    format_: FormatOpt = None,
    bin_: Annotated[Optional[str], typer.Option(
        "--bin", metavar="WIDTH", help="time bin of the --plot figures over time: cycles (50000) or µs (20us); "
        "default: a round width giving about 100 bins", show_default=False)] = None,
) -> None:
    """Report on a run: flushes, IPIs, shootdown latency, TLB hit rates, stale uses.

    Also kmaps (new vs reused), ring wraps, kmap_lock waits, sleeps on pkmap_map_wait, the CPU x CPU IPI
    matrix and the operational logs' warnings and errors. --json prints the same as one JSON document.
    """
    from smpsim.analysis.load import open_trace
    from smpsim.analysis.logs import summarize_logs
    from smpsim.analysis.trace_metrics import analyze as analyze_trace
    from smpsim.analysis.report import sections

    from smpsim.analysis.figstyle import check_bins, parse_bins

    formats = plot_formats(format_, plot)
    if bin_ is not None and plot is None:
        fail(f"--bin {bin_} sets the time bins of the --plot figures: add --plot DIR")
    try:
        bins = parse_bins(bin_) if bin_ is not None else None
    except ValueError as e:
        fail(str(e))
    with open_trace(run) as tr:
        a = analyze_trace(tr, summarize_logs(tr.meta.path))
        _truncation_warning(tr.meta, a["events"], a["t_end"])
        written: list[Path] = []
        if plot is not None:
            from smpsim.analysis.plots import write_figures, write_html

            try:
                if bins is not None:
                    check_bins(bins, a["t_end"])
            except ValueError as e:
                fail(str(e))
            try:
                figs, written = write_figures(tr, a, plot, formats, bins)
                written.append(write_html(a, figs, plot / "report.html", sections(a)))
            except OSError as e:
                fail(f"{plot}: cannot write the figures: {e.strerror or e}")
    if json_:
        typer.echo(json.dumps(a, indent=2))
    else:
        render(sections(a), console())
    wrote(written, json_)


# ---------------------------------------------------------------------------------------------- compare

@handle_errors
def compare(
    runs: Annotated[list[Path], typer.Argument(
        help="run directories, or directories with runs below them (sweeps)", show_default=False)],
    baseline: Annotated[Optional[list[str]], typer.Option(
        "--baseline", metavar="KEY=VALUE", help="the baseline run: the one whose config has KEY=VALUE (repeat "
        "for several keys; default: a sweep directory's [report] baseline, else the first run)",
        show_default=False)] = None,
    by: Annotated[Optional[list[str]], typer.Option(
        "--by", metavar="KEY", help="one baseline per value of this config key (repeatable)",
        show_default=False)] = None,
    json_: Annotated[bool, typer.Option("--json", help="print the comparison as one JSON document")] = False,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", help="also write kmap_latency_cdf (a kmap latency CDF per run) into this directory",
        show_default=False)] = None,
    format_: FormatOpt = None,
) -> None:
    """Headline metrics of several runs side by side, and how much each saves over its baseline."""
    from smpsim.analysis.compare import compare as compare_runs
    from smpsim.analysis.compare import find_runs, layout, metrics_table, savings_block
    from smpsim.analysis.load import open_trace
    from smpsim.analysis.trace_metrics import analyze as analyze_trace
    from smpsim.config import config_key_problem, parse_value

    formats = plot_formats(format_, plot)
    spec: dict[str, Any] = {}
    for item in baseline or ():
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            fail(f"--baseline {item!r}: expected KEY=VALUE, e.g. --baseline policy.name=eager")
        spec[key.strip()] = parse_value(text.strip())
    for key in [*spec, *(by or ())]:
        if (why := config_key_problem(key)) is not None:
            fail(f"{key}: {why}; --baseline and --by take dotted config keys such as policy.name")
    if by and not spec:
        fail("--by needs --baseline KEY=VALUE: the run each group is compared with")
    if not spec and len(runs) == 1:  # a sweep directory: its experiment's [report] table
        from smpsim.experiments.results import report_of

        rep = report_of(runs[0]) or {}
        spec, by = dict(rep.get("baseline") or {}), list(rep.get("by") or [])
    paths: list[Path] = []
    for arg in runs:
        paths += [p for p in find_runs(arg) if p not in paths]
    if len(paths) < 2:
        fail(f"compare needs at least two runs; found {len(paths)} ({', '.join(map(str, paths))})", EXIT_USAGE)
    analyses, cycles = [], []
    for path in paths:
        with open_trace(path) as tr:
            a = analyze_trace(tr)
            _truncation_warning(tr.meta, a["events"], a["t_end"])
            if plot is not None:
                cycles.append(tr.numpy("SELECT cycles FROM events WHERE ev = 'kmap'")["cycles"])
        analyses.append(a)
    doc = compare_runs(paths, analyses, spec, list(by or ()), fallback=[p.name for p in paths])
    written: list[Path] = []
    if plot is not None:
        from smpsim.analysis.figstyle import save
        from smpsim.analysis.plots import compare_figure

        fig = compare_figure([r["label"] for r in doc["runs"]], [r["group"] for r in doc["runs"]], cycles,
                             [*doc["varying"], *doc["by"]])
        try:
            plot.mkdir(parents=True, exist_ok=True)
            written = save(fig, plot, "kmap_latency_cdf", formats)
        except OSError as e:
            fail(f"{plot}: cannot write the figures: {e.strerror or e}")
    if json_:
        typer.echo(json.dumps(doc, indent=2))
    else:
        header, blocks = layout(doc)
        width = table_width()
        lines = metrics_table(header, [{**{m["key"]: m["values"][i] for m in doc["metrics"]},
                                        "confounders": marks(r["confounders"])}
                                       for i, r in enumerate(doc["runs"])], blocks, width)
        against = ", ".join(f"{k}={v}" for k, v in spec.items()) or doc["runs"][0]["label"]
        lines += savings_block(against + (f", by {', '.join(by or ())}" if by else ""),
                               [s["text"] for s in doc["savings"]], width)
        typer.echo("\n".join(lines))
    wrote(written, json_)


def table_width() -> int:
    """The width a printed table must fit: the terminal's, 100 columns off a terminal."""
    import shutil

    from smpsim.cli.common import is_tty

    return shutil.get_terminal_size((100, 24)).columns if is_tty() else 100


# ---------------------------------------------------------------------------------------------- query

class QueryFormat(str, Enum):
    """`smpsim query --format`: how the result is printed."""
    table = "table"
    csv = "csv"
    json = "json"


@handle_errors
def query(
    run: RunArg,
    sql: Annotated[str, typer.Argument(help='SQL over the table "events" (DuckDB dialect)', show_default=False)],
    format: Annotated[QueryFormat, typer.Option("--format", "-f", help="output format")] = QueryFormat.table,
    timeout: Annotated[float, typer.Option(
        "--timeout", min=0, metavar="SECONDS", help="cancel the query after this long; 0 for no limit")] = QUERY_TIMEOUT,
    memory_limit: Annotated[str, typer.Option(
        "--memory-limit", metavar="SIZE",
        help="DuckDB's memory for the query (e.g. 4GB, 512MiB, 25% of RAM); beyond it, it spills to a "
             "temporary directory removed at the end")] = QUERY_MEMORY_LIMIT,
) -> None:
    """Run SQL (DuckDB) over a run's trace: the events are the table "events".

    The columns are the trace fields of docs/trace-format.md; seq is the canonical order. Ctrl-C cancels
    a running query.
    """
    from smpsim.analysis.load import open_trace
    from smpsim.analysis.query import QueryError, spill_directory
    from smpsim.analysis.query import query as run_query
    from smpsim.engines.stopping import exit_code_of, raising_on_signals

    try:  # SIGTERM too unwinds, so the spill directory goes whenever the query is stopped
        with raising_on_signals(), spill_directory() as spill, open_trace(run) as tr:  # trace closes first
            _truncation_warning(tr.meta)
            cols, rows = run_query(tr, sql, timeout=timeout, memory_limit=memory_limit, spill_dir=spill)
    except QueryError as e:
        fail(f"query failed: {e}")
    except KeyboardInterrupt as e:
        fail(f"query cancelled ({e or 'interrupted'}); nothing was written", exit_code_of(e))
    if format is QueryFormat.json:
        typer.echo(json.dumps([dict(zip(cols, r)) for r in rows], indent=1, default=str))
    elif format is QueryFormat.csv:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(cols)
        w.writerows(rows)
        sys.stdout.flush()
    elif cols:
        con = console()
        if con is not None:
            render([(f"{_fmt(len(rows))} rows", cols, [list(r) for r in rows])], con)
        else:
            _plain_table(cols, [list(r) for r in rows])
