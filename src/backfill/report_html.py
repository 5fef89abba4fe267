"""``report.html``: the run's report as one self-contained page a person opens in a browser.

Everything is inline (styles, data, and uPlot, the chart library, vendored in ``assets/``: 51 KB
of JavaScript, MIT), so the file opens offline and fetches nothing. It shows the outcome counts,
a chart of answers a second over the run (accepted, 429s, retries, errors) with the configured
and the throttle's rate, and the reasons rows did not land, grouped and counted with a few
examples each (file and row). Customer values are kept to those few examples, each truncated;
the file is owner-only like every report.

uPlot over Chart.js (~200 KB), Vega-Lite (~800 KB) or Plotly (~3.5 MB): the smallest of the
well-kept ones, drawing a canvas from columns of numbers, which is what the timeline is.
"""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any, Final

import polars as pl

from backfill.report import write_private

EXAMPLES: Final = 3  # rows named per reason
SHOWN_CHARS: Final = 120  # of a message or a reason, at most
REASONS: Final = 50  # reason groups listed; the rest are counted
# Quoted cell values and long digit runs vary row by row: a reason is its message without them.
_VALUES = re.compile(r"'[^']*'|\"[^\"]*\"|\d{3,}")


def _asset(name: str) -> str:
    return resources.files("backfill").joinpath("assets", name).read_text(encoding="utf-8")


def _cut(text: str, most: int = SHOWN_CHARS) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


def _table(head: list[str], rows: list[list[Any]], numeric: int = 1) -> str:
    """An HTML table; the last ``numeric`` columns right-aligned."""
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = []
    for row in rows:
        tds = []
        for i, value in enumerate(row):
            text = f"{value:,}" if isinstance(value, int) else html.escape(str(value))
            align = ' class="n"' if i >= len(row) - numeric else ""
            tds.append(f"<td{align}>{text}</td>")
        body.append(f"<tr>{''.join(tds)}</tr>")
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def reasons(errors_csv: Path) -> tuple[list[dict[str, Any]], int]:
    """errors.csv's lines grouped by outcome and reason (its message without the values),
    largest first, each with a few examples; and how many groups were left out."""
    if not errors_csv.is_file():
        return [], 0
    lines = pl.scan_csv(errors_csv, infer_schema=False)
    grouped = (
        lines.with_columns(
            pl.col("message").fill_null("").str.replace_all(_VALUES.pattern, "…").alias("reason")
        )
        .group_by("outcome", "reason")
        .agg(
            pl.len().alias("lines"),
            pl.struct("file", "row", "message").head(EXAMPLES).alias("examples"),
        )
        .sort(["lines", "outcome", "reason"], descending=[True, False, False])
        .collect()
    )
    shown = grouped.head(REASONS).to_dicts()
    return shown, max(0, grouped.height - REASONS)


def _example(line: dict[str, Any]) -> str:
    """``file:row message`` of one errors.csv line, the message cut short."""
    message = _cut(str(line["message"] or ""), 60)
    return f"{Path(str(line['file'])).name}:{line['row']} {message}"


def _timeline(summary: dict[str, Any]) -> dict[str, list[float]]:
    """The sessions' answers a second as columns on one time axis (Unix seconds)."""
    names = ("t", "accepted", "throttled", "retries", "errors", "rate")
    columns: dict[str, list[float]] = {k: [] for k in names}
    for session in summary.get("timeline") or []:
        start = float(session.get("started_at") or 0.0)
        for i, second in enumerate(session["second"]):
            columns["t"].append(start + second)
            for key in ("accepted", "throttled", "retries", "errors", "rate"):
                columns[key].append(session[key][i])
    return columns


STYLE: Final = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1100px;padding:0 1rem;
color:#222}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}
td,th{border-bottom:1px solid #ddd;padding:.25rem .6rem;
text-align:left;vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#176f2c}.bad{color:#a4161a}.muted{color:#666}code{font-size:.9em}
#chart{margin:1rem 0}
"""

CHART: Final = """
const d = JSON.parse(document.getElementById("timeline").textContent);
const el = document.getElementById("chart");
if (d.t.length === 0) {
  el.textContent = "No request was sent in this run.";
} else {
  const configured = d.t.map(() => d.configured);
  const opts = {
    width: Math.min(1060, window.innerWidth - 40), height: 320,
    // A short run has a point or two: keep a few seconds either side in view.
    scales: {x: {time: true, range: (u, lo, hi) => [lo - 2, hi + 2]}},
    series: [
      {},
      {label: "accepted /s", stroke: "#2b7a3d", width: 1.5},
      {label: "429 /s", stroke: "#d62828", width: 1.5, points: {show: true}},
      {label: "retries /s", stroke: "#f4a261", width: 1},
      {label: "errors /s", stroke: "#6a4c93", width: 1},
      {label: "throttle's rate", stroke: "#1d3557", dash: [6, 4], width: 1},
      {label: "configured rate", stroke: "#999", dash: [2, 4], width: 1},
    ],
    axes: [{}, {label: "per second"}],
  };
  new uPlot(opts, [d.t, d.accepted, d.throttled, d.retries, d.errors, d.rate, configured], el);
}
"""


def _page(title: str, body: str, data: dict[str, Any] | None) -> str:
    script = ""
    if data is not None:
        blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
        library = _asset("uPlot.iife.min.js")
        script = (
            f'<script id="timeline" type="application/json">{blob}</script>'
            f"<script>{library}</script><script>{CHART}</script>"
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        # Nothing may be fetched: the page is opened offline, from a file.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
        f"<title>{html.escape(title)}</title><style>{STYLE}{_asset('uPlot.min.css')}</style>"
        f"</head><body>{body}{script}</body></html>"
    )


def _heading(
    command: str, summary: dict[str, Any], verdict: tuple[str, str], extra: str = ""
) -> list[str]:
    """The title and the verdict line of a page (``verdict``: css class, sentence)."""
    detail = html.escape(f"Exit code {summary['exit_code']}, {summary['seconds']:,.1f} s{extra}.")
    return [
        f"<h1>backfill {command}: {html.escape(summary['job'])}</h1>",
        f'<p class="{verdict[0]}"><strong>{html.escape(verdict[1])}</strong> {detail}</p>',
    ]


def _counts(section: dict[str, Any]) -> list[list[Any]]:
    return [[k.replace("_", " "), v] for k, v in section.items() if isinstance(v, int)]


def run_html(summary: dict[str, Any], errors_csv: Path) -> str:
    """The page for ``run`` and ``retry`` from their summary.json and errors.csv."""
    rows, units, requests = summary["rows"], summary["units"], summary["requests"]
    code = summary["exit_code"]
    verdict = {0: ("ok", "Every source row landed."), 130: ("bad", "Interrupted: run it again "
               "to finish.")}.get(code, ("bad", "Some source rows did not land."))  # fmt: skip
    rate = summary.get("rate", {})
    parts = [
        *_heading("run", summary, verdict, f", mode {summary.get('mode')}"),
        "<h2>Source rows</h2>",
        _table(["", "rows"], _counts(rows)),
        "<h2>Requests over the run</h2>",
        f'<p class="muted">Configured rate {rate.get("configured", 0):g}/s, final '
        f"{rate.get('final', 0):g}/s, achieved {rate.get('achieved', 0):g} accepted/s; "
        f"{requests['sent']:,} requests, {requests['retries']:,} retries, "
        f"{requests['throttled']:,} answered 429.</p>",
        '<div id="chart"></div>',
        "<h2>Request units</h2>",
        _table(["outcome", "units"], [r for r in _counts(units) if r[1]]),
    ]
    groups, more = reasons(errors_csv)
    parts.append("<h2>Why rows did not land</h2>")
    if not groups:
        parts.append("<p>Nothing to report: errors.csv is empty.</p>")
    else:
        table = []
        for g in groups:
            examples = "; ".join(_example(e) for e in g["examples"])
            table.append([g["outcome"], _cut(g["reason"]), _cut(examples, 240), int(g["lines"])])
        parts.append(_table(["outcome", "reason", "examples (file:row)", "lines"], table))
        if more:
            parts.append(f'<p class="muted">{more:,} more reasons: see errors.csv.</p>')
    files = summary.get("files", {})
    listed = ", ".join(f"<code>{html.escape(str(v))}</code>" for v in files.values())
    parts.append(f'<h2>Files</h2><p class="muted">{listed}</p>')
    data = _timeline(summary)
    chart: dict[str, Any] = {**data, "configured": rate.get("configured", 0)}
    return _page(f"backfill run: {summary['job']}", "".join(parts), chart)


def write_run_html(summary: dict[str, Any], errors_csv: Path, path: Path) -> None:
    write_private(path, run_html(summary, errors_csv))


def differences(reconcile_csv: Path) -> tuple[list[dict[str, Any]], int]:
    """reconcile.csv grouped per trait and kind, largest first, a few examples each; and how
    many groups were left out."""
    if not reconcile_csv.is_file():
        return [], 0
    grouped = (
        pl.scan_csv(reconcile_csv, infer_schema=False)
        .group_by("group", "trait", "kind")
        .agg(
            pl.len().alias("traits"),
            pl.struct("profile_id", "expected", "actual", "file", "row")
            .head(EXAMPLES)
            .alias("examples"),
        )
        .sort(["traits", "group", "trait"], descending=[True, False, False], nulls_last=True)
        .collect()
    )
    return grouped.head(REASONS).to_dicts(), max(0, grouped.height - REASONS)


def _difference(line: dict[str, Any]) -> str:
    expected, actual = _cut(str(line["expected"] or ""), 30), _cut(str(line["actual"] or ""), 30)
    return f"{Path(str(line['file'] or '')).name}:{line['row']} {expected!r} -> {actual!r}"


def reconcile_html(summary: dict[str, Any], reconcile_csv: Path) -> str:
    """The page for ``reconcile`` from its reconcile.json and reconcile.csv."""
    store = summary.get("store", "Memory")
    profiles, traits, rows = summary["profiles"], summary["traits"], summary["rows"]
    code = summary["exit_code"]
    verdict = ("ok", f"{store} matches the plan.") if code == 0 else (
        "bad", f"{store} does not match the plan everywhere.")  # fmt: skip
    parts = [
        *_heading("reconcile", summary, verdict),
        "<h2>Profiles</h2>",
        _table(["", "profiles"], _counts(profiles)),
        "<h2>Traits</h2>",
        _table(["", "traits"], _counts(traits)),
        "<h2>Source rows</h2>",
        _table(["", "rows"], _counts(rows)),
        "<h2>Differences per trait</h2>",
    ]
    groups, more = differences(reconcile_csv)
    if not groups:
        parts.append("<p>No trait differs.</p>")
    else:
        table = []
        for g in groups:
            name = f"{g['group']}.{g['trait']}" if g["group"] else str(g["trait"])
            examples = "; ".join(_difference(e) for e in g["examples"])
            table.append([name, g["kind"], _cut(examples, 240), int(g["traits"])])
        parts.append(_table(["trait", "kind", "examples (file:row expected -> held)", "profiles"],
                            table))  # fmt: skip
        if more:
            parts.append(f'<p class="muted">{more:,} more: see reconcile.csv.</p>')
    files = summary.get("files", {})
    listed = ", ".join(f"<code>{html.escape(str(v))}</code>" for v in files.values())
    parts.append(f'<h2>Files</h2><p class="muted">{listed}</p>')
    return _page(f"backfill reconcile: {summary['job']}", "".join(parts), None)
