"""The study report: every executed notebook as HTML, and one index page.

:func:`render` (``facetransfer report results/<study>``; also the last step of
``facetransfer run``) converts every executed notebook of a study with nbconvert's
``HTMLExporter`` (lab template; figures are embedded as ``data:`` URIs)::

    results/<study>/explore/01_explore.ipynb      → report/explore/01_explore.html
    results/<study>/search/02_search.ipynb        → report/search/02_search.html
    results/<study>/runs/<id>/03_finetune.ipynb   → report/runs/<id>/03_finetune.html
    results/<study>/compare/04_compare.ipynb      → report/compare/04_compare.html

and writes ``report/index.html``: title and description, a SYNTHETIC banner when any run's
data is synthetic, the counts of ok / failed runs, one row per run (name, id, key params,
status, test accuracy / F1 / MAE, training time, the degenerate flag, links to its notebook
and metrics.json), the figures reported elsewhere next to ours, the data provenance per
dataset (counts, quarantined files by reason, what kind of split it is — subject-disjoint
or image-level — and the near-duplicate clusters an image-level split cuts), the environment of the runs, and links
to the explore / search / compare pages.

Every page opens from disk, offline (relative links, no server, CSS inline, no script
fetched from the web: the lab template's require.js / MathJax / mermaid loaders are left
out). Each notebook page has a bar with a link back to the index and a "Show code / Hide
code" button; code cells and their ``Out[n]`` prompts start HIDDEN when JavaScript runs
(the story reads as text and figures) and stay visible where it does not.

The page shows the outputs as a terminal would have (:func:`tidy_outputs`; the executed
``.ipynb`` is left as it is): a progress bar is its last state, not one line per update
(``\r`` rewrites and ``\b`` applied); tool noise (TensorFlow's C++ log lines, Python
warnings such as tqdm's ``TqdmWarning`` or Pillow's ``DecompressionBombWarning``, and
logging lines such as TensorFlow's retracing warnings) is left out and counted in the bar
(it stays in the executed notebook and the run's ``.log``); a stderr stream that holds only progress bars is not shown as an error. Long
text outputs and tables scroll in a box instead of running for screens; in pandas tables
the default 0..n-1 index is left out and text cells are left-aligned (:func:`tidy_table`).

Pages are written atomically; a notebook page is re-rendered when its notebook is newer
than the page (or with ``force=True``).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from facetransfer import __version__
from facetransfer.errors import FacetransferError
from facetransfer.io import atomic_write_text, read_json

STAGE_DIRS = ("explore", "search", "compare")
STAGE_TITLES = {"explore": "Data exploration", "search": "Hyperparameter search", "compare": "Comparison of the runs"}
KEY_PARAMS = (
    ("task", None),
    ("data.dataset", None),
    ("model.backbone", None),
    ("model.weights", "weights"),
    ("model.strategy", None),
    ("train.learning_rate", "lr"),
    ("train.batch_size", "batch"),
    ("train.epochs", "epochs"),
    ("seed", "seed"),
)
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
NEAR_DUPLICATES_SHOWN = 10  # near-duplicate clusters on two sides listed per dataset on the index page
# Params that change with the dataset only: not repeated in the "params that differ" column.
FOLLOW_DATASET = {"name", "data.attributes", "eval.subgroups"}
SYNTHETIC_TEXT = (
    "SYNTHETIC DATA — this study ran on procedurally drawn faces, not photographs. "
    "Its figures show that the pipeline works; they say nothing about real faces."
)

_PAGE_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1280px;padding:0 24px 48px;color:#1f2328;line-height:1.45}
h1{margin:24px 0 4px}h2{margin-top:32px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:14px}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.meta{color:#57606a;font-size:13px}.small{font-size:12px;color:#57606a}
.banner{background:#fff1c2;border:2px solid #d4a72c;padding:10px 14px;font-weight:bold;margin:16px 0}
.bad{color:#cf222e;font-weight:bold}.ok{color:#1a7f37}.muted{color:#57606a}
code{background:#f6f8fa;padding:0 3px}
th{white-space:nowrap}td.flagged{background:#fff5f5}td.best{font-weight:bold}
.params{font-size:13px}
.figures{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}img.headline{max-width:calc(50% - 6px);height:auto;border:1px solid #d0d7de}
"""

_BAR_CSS = """
.ft-bar{position:sticky;top:0;z-index:1000;display:flex;gap:16px;align-items:center;
 background:#f6f8fa;border-bottom:1px solid #d0d7de;padding:6px 16px;
 font:14px -apple-system,Segoe UI,Helvetica,Arial,sans-serif}
.ft-bar button{font:inherit;padding:2px 10px;cursor:pointer}
.ft-synthetic{color:#9a6700;font-weight:bold}
.ft-note{color:#57606a;font-size:12px}
body.ft-hide-code .jp-CodeCell .jp-Cell-inputWrapper{display:none}
body.ft-hide-code .jp-CodeCell.jp-mod-noOutputs{display:none}
body.ft-hide-code .jp-OutputPrompt{visibility:hidden}
.jp-InputArea-editor .highlight pre{white-space:pre-wrap;overflow-wrap:anywhere}
.jp-OutputArea-output pre{max-height:32em;overflow:auto}
.ft-scroll{max-height:44em;overflow:auto}
.ft-scroll thead th{position:sticky;top:0;background:#fff}
.jp-RenderedHTMLCommon td.ft-text,.jp-RenderedHTMLCommon th.ft-text{text-align:left}
.jp-RenderedHTMLCommon td,.jp-RenderedHTMLCommon th{white-space:normal}
.jp-RenderedHTMLCommon td.ft-text{overflow-wrap:anywhere;min-width:10em}
.jp-RenderedHTMLCommon .ft-nowrap{white-space:nowrap}
.jp-RenderedHTMLCommon table caption{text-align:left}
"""

_BAR_JS = """
(function(){var b=document.getElementById('ft-toggle');
function set(h){document.body.classList.toggle('ft-hide-code',h);b.textContent=h?'Show code':'Hide code';}
b.addEventListener('click',function(){set(!document.body.classList.contains('ft-hide-code'));});
set(true);})();
"""

e = html.escape


# ----------------------------------------------------------------------------------------
# reading the study folder


def _read(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def _provenance(metrics: Mapping | None) -> dict | None:
    data = (metrics or {}).get("data")
    if isinstance(data, Mapping) and isinstance(data.get("provenance"), Mapping):
        data = data["provenance"]
    return dict(data) if isinstance(data, Mapping) and "dataset" in data else None


def _get(d: Mapping | None, dotted: str) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def load_study_info(study_dir: Path) -> dict:
    """``study.json`` (or what the run folders say when it is missing) plus each run's metrics."""
    info = _read(study_dir / "study.json") or {"study": study_dir.name, "title": study_dir.name, "runs": []}
    runs_dir = study_dir / "runs"
    folders = sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) if runs_dir.is_dir() else []
    listed = [r for r in info.get("runs", []) if r.get("run_id")]
    known = {r["run_id"] for r in listed}
    runs = []
    for entry in listed:
        metrics = _read(runs_dir / entry["run_id"] / "metrics.json")
        runs.append({**entry, "metrics": metrics, "listed": True})
    for run_id in folders:
        if run_id not in known:
            metrics = _read(runs_dir / run_id / "metrics.json")
            params = (metrics or {}).get("params") or {}
            runs.append({"run_id": run_id, "name": params.get("name") or run_id, "params": params, "metrics": metrics, "listed": not info.get("runs")})
    info["runs"] = runs
    return info


def is_synthetic(info: Mapping) -> bool:
    """True when any run's data provenance (or params) says synthetic."""
    for run in info.get("runs", []) + info.get("pending_runs", []):
        prov = _provenance(run.get("metrics"))
        if prov is not None and prov.get("synthetic"):
            return True
        if _get(run.get("params"), "data.synthetic") is not None:
            return True
    return False


# ----------------------------------------------------------------------------------------
# notebook pages


# The lab template without the scripts it fetches from a CDN (require.js, MathJax,
# mermaid): the notebooks need none of them, and a page must open offline.
_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""
_EXPORTER = None
# TensorFlow / absl C++ log lines ("I0000 00:00:1795524242.869648    9657 port.cc:153] ...").
_TF_LOG = re.compile(r"[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\] .*|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR")
# Tool noise in a stream, left out of the page (kept in the executed notebook and its .log):
# Python warnings ("/…/tqdm/auto.py:21: TqdmWarning: IProgress not found…" and the source
# line under it, indented) and Python logging lines ("WARNING:tensorflow:5 out of the last…").
_PY_WARNING = re.compile(r"\S+\.py:\d+: \w*Warning: .*")
# A logging line may start in the middle of a line: a Keras progress bar writes no newline
# before the next "\r" update, so it is cut out of the stream with its newline, and the bar's
# later updates still rewrite the bar.
_PY_LOG = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL):[\w.]+:[^\n]*(\n|$)")
_PROGRESS_BAR = re.compile(r"\d+%\|")  # a tqdm bar: "name:  40%|████      | 160/400 [...]"


def _exporter():
    global _EXPORTER
    if _EXPORTER is None:
        from jinja2 import DictLoader
        from nbconvert import HTMLExporter

        _EXPORTER = HTMLExporter(template_name="lab", template_file="facetransfer_report.html.j2", embed_images=True,
                                 extra_loaders=[DictLoader({"facetransfer_report.html.j2": _TEMPLATE})])
    return _EXPORTER


def terminal_text(text: str) -> str:
    """``text`` as a terminal shows it: on each line only what the last ``\\r`` rewrite left
    (the last non-blank one), with backspaces applied. A Keras or tqdm progress bar
    becomes its final state instead of one line per update."""
    lines = []
    for line in text.split("\n"):
        shown = ""
        for segment in line.split("\r"):
            chars: list[str] = []
            for ch in segment:
                if ch == "\b":
                    if chars:
                        chars.pop()
                else:
                    chars.append(ch)
            if "".join(chars).strip():
                shown = "".join(chars)
        lines.append(shown)
    return "\n".join(lines)


def tidy_outputs(outputs: list) -> tuple[list, int]:
    """The outputs of one cell as the report shows them, and how many TF log lines were left out.

    Consecutive stream outputs of one name are joined and shown as a terminal would
    (:func:`terminal_text`); TensorFlow's C++ log lines are left out; a stream that becomes
    empty is dropped; stderr holding only progress bars is shown as plain output.
    """
    import copy

    merged: list = []
    for out in outputs:
        if out.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream" and merged[-1]["name"] == out["name"]:
            merged[-1]["text"] += out["text"]
        else:
            merged.append(copy.deepcopy(out))
    shown, hidden = [], 0
    for out in merged:
        if out.get("output_type") == "stream":
            text, logged = _PY_LOG.subn("", out["text"])
            lines = [line for line in terminal_text(text).split("\n") if line.strip()]
            kept = _without_noise(lines)
            hidden += logged + len(lines) - len(kept)
            if not kept:
                continue
            out["text"] = "\n".join(kept) + "\n"
            if out["name"] == "stderr" and all(_PROGRESS_BAR.search(line) for line in kept):
                out["name"] = "stdout"
        shown.append(out)
    return shown, hidden


def _without_noise(lines: list[str]) -> list[str]:
    """``lines`` without TensorFlow C++ log lines and Python warnings (with their indented
    source line); Python logging lines are cut out of the stream before (``_PY_LOG``)."""
    kept, in_warning = [], False
    for line in lines:
        if in_warning and line[:1].isspace():
            continue  # the source line Python prints under a warning
        in_warning = bool(_PY_WARNING.fullmatch(line.strip()))
        if in_warning or _TF_LOG.fullmatch(line.strip()):
            continue
        kept.append(line)
    return kept


_TABLE = re.compile(r"<table\b.*?</table>", re.S)
_ROW = re.compile(r"<tr\b[^>]*>.*?</tr>", re.S)
_CELL = re.compile(r"<(t[hd])\b([^>]*)>(.*?)</\1>", re.S)
NOWRAP_CHARS = 12  # longer text wraps: a wide table must not push columns out of view
_NUMBER = re.compile(r"[-+]?(\d[\d,]*\.?\d*|\.\d+)([eE][-+]?\d+)?%?|[-+]?inf|nan|NaN|None|<NA>|NaT|–|—|")
# A cell that only says a value is missing ("None", "nan", an empty tuple or list) shows an em dash.
_MISSING_CELL = re.compile(r"(<t[hd]\b[^>]*>)\s*(None|nan|NaN|&lt;NA&gt;|<NA>|NaT|\(\)|\[\]|\{\})\s*(</t[hd]>)")


def _is_number(cell_html: str) -> bool:
    return bool(_NUMBER.fullmatch(re.sub(r"<[^>]+>", "", cell_html).strip()))


def _is_short(cell_html: str) -> bool:
    """Short enough to keep on one line (labels, ids); longer text wraps."""
    return len(html.unescape(re.sub(r"<[^>]+>", "", cell_html)).strip()) <= NOWRAP_CHARS


def _with_class(attrs: str, name: str) -> str:
    m = re.search(r'class="([^"]*)"', attrs)
    if m:
        return attrs[: m.start()] + f'class="{m.group(1)} {name}"' + attrs[m.end() :]
    return f'{attrs} class="{name}"'


def _tidy_one_table(table: str) -> str:
    if "colspan" in table or "rowspan" in table or "<thead" not in table or "<tbody" not in table:
        return f'<div class="ft-scroll">{table}</div>'  # multi-level headers: cells left as pandas wrote them
    head_end = table.index("</thead>")
    rows = [(m, m.start() < head_end) for m in _ROW.finditer(table)]
    cells = [_CELL.findall(m.group(0)) for m, _ in rows]
    body = [c for c, (_, is_head) in zip(cells, rows, strict=True) if not is_head]
    head = [c for c, (_, is_head) in zip(cells, rows, strict=True) if is_head]
    drop_index = (
        bool(body) and bool(head)
        and all(r and r[0][0] == "th" and r[0][2].strip() == str(i) for i, r in enumerate(body))
        and all(r and r[0][0] == "th" and not r[0][2].strip() for r in head)
    )
    text_columns = {j for r in body for j, c in enumerate(r) if c[0] == "td" and not _is_number(c[2])}
    pieces, last = [], 0
    for (m, is_head), row_cells in zip(rows, cells, strict=True):
        new = []
        for j, (tag, attrs, content) in enumerate(row_cells):
            if drop_index and j == 0:
                continue
            left = j in text_columns or (tag == "th" and not is_head and not _is_number(content))
            short = _is_short(content) or (not left and _is_number(content))
            classes = [name for name, on in (("ft-text", left), ("ft-nowrap", short)) if on]
            new.append(f"<{tag}{_with_class(attrs, ' '.join(classes)) if classes else attrs}>{content}</{tag}>")
        row_open = re.match(r"<tr\b[^>]*>", m.group(0)).group(0)
        pieces += [table[last : m.start()], row_open + "".join(new) + "</tr>"]
        last = m.end()
    return '<div class="ft-scroll">' + "".join(pieces) + table[last:] + "</div>"


def tidy_table(html_text: str) -> str:
    """pandas tables in ``html_text`` made easier to read: each in a box that scrolls past
    44 lines (and sideways), the default 0..n-1 index column left out, columns holding text
    (and text index labels) left-aligned, columns of numbers right-aligned, cells of up to
    12 characters (and numbers) kept on one line, longer text wrapped so that no column is
    pushed out of view, a cell that only says a value is missing (``None``,
    ``nan``, ``<NA>``, ``()``, ``[]``) shown as an em dash. The cells of tables with multi-level headers are left
    as pandas wrote them."""
    return _TABLE.sub(lambda m: _tidy_one_table(_MISSING_CELL.sub(r"\1—\3", m.group(0))), html_text)


def tidy_notebook(nb) -> int:
    """Apply :func:`tidy_outputs` and :func:`tidy_table` to every code cell of ``nb`` (in
    place); returns the number of TF log lines left out."""
    hidden = 0
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        cell.outputs, n = tidy_outputs(cell.get("outputs", []))
        hidden += n
        for out in cell.outputs:
            html_text = out.get("data", {}).get("text/html")
            if isinstance(html_text, str) and "<table" in html_text:
                out["data"]["text/html"] = tidy_table(html_text)
            elif isinstance(html_text, list):
                out["data"]["text/html"] = tidy_table("".join(html_text))
    return hidden


def notebook_html(notebook: Path, *, title: str, index_href: str, synthetic: bool) -> str:
    """One executed notebook as a self-contained HTML page with the report bar."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    hidden = tidy_notebook(nb)
    body, _ = _exporter().from_notebook_node(nb, resources={"metadata": {"name": title}})
    tag = '<span class="ft-synthetic">SYNTHETIC DATA</span>' if synthetic else ""
    note = (f'<span class="ft-note" title="kept in the executed notebook {e(notebook.name)} and its .log">'
            f"{hidden} tool warning and log line{'s' if hidden != 1 else ''} not shown</span>") if hidden else ""
    bar = (
        f'<div class="ft-bar"><a href="{e(index_href)}">&larr; study report</a>'
        f'<button id="ft-toggle" type="button">Hide code</button><span>{e(title)}</span>{tag}{note}</div>'
        f"<script>{_BAR_JS}</script>"
    )
    body = body.replace("</head>", f"<style>{_BAR_CSS}</style>\n</head>", 1)
    body, n = re.subn(r"(<body[^>]*>)", lambda m: m.group(1) + bar, body, count=1)
    if n != 1:
        raise FacetransferError(f"{notebook}: nbconvert produced a page without <body>; cannot add the report bar")
    return body


def _notebooks(study_dir: Path) -> list[tuple[Path, str]]:
    """(executed notebook, page title suffix) for every notebook of the study folder."""
    found = []
    for stage in STAGE_DIRS:
        for nb in sorted((study_dir / stage).glob("*.ipynb")):
            if not nb.name.startswith("."):
                found.append((nb, STAGE_TITLES[stage]))
    runs_dir = study_dir / "runs"
    if runs_dir.is_dir():
        for nb in sorted(runs_dir.glob("*/*.ipynb")):
            if not nb.name.startswith(".") and not nb.parent.name.startswith("."):
                found.append((nb, f"run {nb.parent.name}"))
    return found


def render_notebooks(study_dir: Path, report_dir: Path, *, title: str, synthetic: bool, names: Mapping[str, str], force: bool = False) -> dict[str, str]:
    """Convert every executed notebook; returns {notebook path relative to study_dir: page href}."""
    pages = {}
    found = _notebooks(study_dir)
    for i, (nb, suffix) in enumerate(found, start=1):
        rel = nb.relative_to(study_dir)
        page = report_dir / rel.with_suffix(".html")
        href = rel.with_suffix(".html").as_posix()
        if force or not page.is_file() or page.stat().st_mtime_ns < nb.stat().st_mtime_ns:
            print(f"report: [{i}/{len(found)}] {rel}", flush=True)
            if rel.parts[0] == "runs" and rel.parts[1] in names:
                suffix = f"run {names[rel.parts[1]]} ({rel.parts[1]})"
            index_href = "../" * (len(rel.parts) - 1) + "index.html"
            atomic_write_text(page, notebook_html(nb, title=f"{title} — {suffix}", index_href=index_href, synthetic=synthetic))
        pages[rel.as_posix()] = href
    return pages


# ----------------------------------------------------------------------------------------
# the index page


def _num(value: Any, digits: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN != NaN
        return "–"
    return f"{value:.{digits}f}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return "null" if value is None else str(value)


def _key_params(params: Mapping | None) -> str:
    parts = []
    for dotted, label in KEY_PARAMS:
        value = _get(params, dotted)
        if value is None:
            continue
        parts.append(f"{label}={_fmt(value)}" if label else _fmt(value))
    return " · ".join(parts)


def _table(head: list[str], rows: list[list[str]], numeric: set[int] = frozenset(), *,
           row_classes: list[str] | None = None, cell_classes: Mapping[tuple[int, int], str] | None = None) -> str:
    """Rows of already-escaped HTML cells; optional CSS classes per row (set on its cells)
    and per (row, column)."""
    th = "".join(f"<th>{e(h)}</th>" for h in head)
    cell_classes = cell_classes or {}
    body = []
    for r, row in enumerate(rows):
        row_css = row_classes[r] if row_classes else ""
        cells = []
        for i, c in enumerate(row):
            classes = " ".join(x for x in ("num" if i in numeric else "", row_css, cell_classes.get((r, i), "")) if x)
            cells.append(f'<td class="{classes}">{c}</td>' if classes else f"<td>{c}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _status(run: Mapping) -> str:
    metrics = run.get("metrics")
    if metrics is None:
        return "not run"
    return str(metrics.get("status", "unknown"))


def _flat_params(run: Mapping) -> dict:
    from facetransfer.params import flatten

    params = run.get("params") or _get(run.get("metrics"), "params")
    return flatten(params) if isinstance(params, Mapping) else {}


def _short(key: str) -> str:
    labels = {dotted: label for dotted, label in KEY_PARAMS if label}
    if key in labels:
        return labels[key]
    head, _, rest = key.partition(".")
    return rest if head in ("data", "model", "train", "eval") and rest else key


def _differing(runs: list[dict]) -> tuple[list[str], list[str]]:
    """(params that differ between ``runs``, the key params all of them share): the key
    params first, then any other param that differs, except those that only follow the
    dataset (its attribute columns, the subgroups evaluated)."""
    flats = [_flat_params(r) for r in runs]
    key_order = [d for d, _ in KEY_PARAMS]
    if len(runs) < 2:
        return [], key_order
    keys = key_order + sorted(k for k in {k for f in flats for k in f} - set(key_order) - FOLLOW_DATASET)
    differ = [k for k in keys if len({json.dumps(f.get(k, "<unset>"), sort_keys=True, default=str) for f in flats}) > 1]
    shared = [d for d in key_order if d not in differ and any(d in f for f in flats)]
    return differ, shared


def _params_text(flat: Mapping, keys: list[str]) -> str:
    return " · ".join(f"{_short(k)}={_fmt(flat[k])}" for k in keys if k in flat)


def _metric_cell(value: Any, digits: int, task: Any) -> str:
    """A test accuracy / F1 cell; for age in years it is the accuracy of the derived age group."""
    text = _num(value, digits)
    if task == "age" and text != "–":
        return f'<span class="muted" title="accuracy of the age group derived from the predicted age">{text}<br><span class="small">age group</span></span>'
    return text


def _runs_section(runs: list[dict], pages: Mapping[str, str], study_dir: Path) -> str:
    differ, shared = _differing(runs)
    rows, row_classes, best = [], [], {}
    for r, run in enumerate(runs):
        m = run.get("metrics") or {}
        flat = _flat_params(run)
        task = flat.get("task")
        status = _status(run)
        css = "ok" if status == "ok" else "bad" if status == "failed" else "muted"
        status_html = f'<span class="{css}">{e(status)}</span>'
        if m.get("error"):
            status_html += f'<div class="small">{e(str(m["error"]))}</div>'
        degenerate = ""
        if _get(m, "test.degenerate"):
            reason = _get(m, "test.degenerate_reason") or "degenerate"
            degenerate = f'<span class="bad" title="{e(str(reason))}">degenerate</span><div class="small">{e(str(reason))}</div>'
        accuracy = _get(m, "test.accuracy")
        if status == "ok" and not degenerate and task != "age" and isinstance(accuracy, (int, float)) and not isinstance(accuracy, bool):
            if task not in best or accuracy > rows[best[task]][4][0]:
                best[task] = r
        run_id = run["run_id"]
        links = [f'<a href="{e(href)}">notebook</a>' for rel, href in pages.items() if rel.startswith(f"runs/{run_id}/")]
        if (study_dir / "runs" / run_id / "metrics.json").is_file():
            links.append(f'<a href="../runs/{e(run_id)}/metrics.json">metrics.json</a>')
        rows.append(
            [
                e(str(run.get("name") or run_id)),
                f"<code>{e(run_id)}</code>",
                f'<span class="params">{e(_params_text(flat, differ or shared))}</span>',
                status_html,
                (accuracy, _metric_cell(accuracy, 4, task)),
                _metric_cell(_get(m, "test.f1_macro"), 4, task),
                _num(_get(m, "test.mae"), 2),
                _num(_get(m, "timing.train_seconds"), 1),
                degenerate,
                " · ".join(links),
            ]
        )
        row_classes.append("flagged" if degenerate else "")
    for row in rows:
        row[4] = row[4][1]
    head = ["run", "run id", "params that differ" if differ else "key params", "status", "test accuracy", "test F1 (macro)",
            "test MAE", "train s", "flags", "files"]
    table = _table(head, rows, numeric={4, 5, 6, 7}, row_classes=row_classes, cell_classes={(r, 4): "best" for r in best.values()})
    note = ""
    if differ:
        common = _params_text(_flat_params(runs[0]), shared)
        note = f'<p class="small">Same in every run: {e(common)}.' if common else '<p class="small">'
        note += " Bold: the best test accuracy of each task among runs that are not degenerate.</p>"
    return note + table


def _reported_section(study_dir: Path, reported: list[dict]) -> str:
    """Published figures vs ours: :func:`facetransfer.compare.reported_vs_reproduced`,
    the same matching and the same intervals as 04_compare."""
    from facetransfer import compare

    table = compare.reported_vs_reproduced(compare.load_runs(study_dir), reported)
    head = ["match", "run", "metric", "published", "published n", "ours", "ours CI", "ours − published", "CI", "verdict", "note", "source"]
    rows = []
    for r in table.itertuples(index=False):
        digits = 2 if r.metric == "test.mae" else 4
        rows.append([e(str(r.config)), e(str(r.Run)), e(str(r.metric)), _num(r.published, digits), e(str(r[6])),
                     _num(r.ours, digits), e(str(r[8])), _num(r.difference, digits), e(str(r[10])), e(str(r.verdict)),
                     e(str(r.note)), e(str(r.source))])
    note = ('<p class="small">The interval of the difference holds our sampling error (per person where the test split has '
            "persons) and the published figure's (from its test-set size; \"unknown\": not included). "
            "Verdict: consistent when it holds 0, else higher / lower (ours vs published).</p>")
    return note + _table(head, rows, numeric={3, 5, 7})


def _provenance_section(runs: list[dict]) -> str:
    seen: dict[tuple, dict] = {}
    for run in runs:
        prov = _provenance(run.get("metrics"))
        if prov is not None:
            seen.setdefault((prov.get("dataset"), prov.get("root"), prov.get("limit")), prov)
    if not seen:
        return '<p class="muted">No run has written its data provenance yet.</p>'
    rows = []
    for prov in seen.values():
        reasons = prov.get("quarantine_by_reason") or {}
        quarantine = "<br>".join(f"{e(str(k))}: {e(str(v))}" for k, v in sorted(reasons.items())) or "none"
        splits = prov.get("split_counts") or {}
        kind = e(str(prov.get("split_kind") or "not recorded (a run from before split kinds were recorded)")) + _near_duplicates_cell(prov.get("near_duplicates"))
        rows.append(
            [
                e(str(prov.get("dataset"))) + (' <span class="bad">SYNTHETIC</span>' if prov.get("synthetic") else ""),
                f"<code>{e(str(prov.get('root')))}</code>",
                e(str(prov.get("n_records", "–"))),
                e(str(prov.get("n_usable", "–"))),
                e(str(prov.get("n_quarantined", sum(reasons.values()) if reasons else 0))),
                quarantine,
                e(", ".join(f"{k} {splits[k]}" for k in sorted(splits, key=lambda k: (SPLIT_ORDER.get(k, 9), k)))),
                kind,
            ]
        )
    return _table(["dataset", "root", "records", "usable", "quarantined", "quarantined by reason", "split", "split kind"], rows, numeric={2, 3, 4})


def _near_duplicates_cell(found: Mapping | None) -> str:
    """The near-duplicate line of a provenance, and the clusters on two sides (the first few listed)."""
    if not isinstance(found, Mapping) or not found.get("summary"):
        return ""
    out = f'<br><span class="small">{e(str(found["summary"]))}</span>'
    crossing = found.get("crossing") or []
    if crossing:
        items = "".join(f"<li>{e(str(c.get('splits')))}: {e(str(c.get('paths')))}</li>" for c in crossing[:NEAR_DUPLICATES_SHOWN])
        more = int(found.get("n_crossing", len(crossing))) - min(len(crossing), NEAR_DUPLICATES_SHOWN)
        tail = f'<li class="muted">and {more} more (the explore page lists them all)</li>' if more > 0 else ""
        out += f'<ul class="small">{items}{tail}</ul>'
    return out


def _environment_section(runs: list[dict]) -> str:
    candidates = [r["metrics"] for r in runs if isinstance(_get(r.get("metrics"), "environment"), Mapping)]
    candidates.sort(key=lambda m: m.get("status") != "ok")
    if not candidates:
        return '<p class="muted">No run has written its environment yet.</p>'
    env = candidates[0]["environment"]
    rows = [[e(str(k)), e(_fmt(v))] for k, v in env.items()]
    return f'<p class="small">from run <code>{e(str(candidates[0].get("run_id")))}</code></p>' + _table(["", "value"], rows)


def _stage_status(study_dir: Path, stage: str) -> str:
    folder = study_dir / stage
    if (folder / ".done.json").is_file():
        return "ok"
    if any(not p.name.startswith(".") for p in folder.glob("*.ipynb")):
        return "failed or interrupted"
    return "not run"


def _search_choice(info: Mapping, study_dir: Path) -> str:
    """What the search chose (``search/best_params.json``), as a line under its stage."""
    best = _read(study_dir / "search" / "best_params.json")
    if not best or not isinstance(best.get("best"), Mapping):
        return ""
    chosen = info.get("search_best") or best["best"]
    values = " · ".join(f"{k}={_fmt(v)}" for k, v in chosen.items())
    score = f" ({e(str(best.get('metric')))} {_num(best.get('score'), 4)})" if best.get("metric") else ""
    return f'<div class="small">chosen by the {e(str(best.get("method", "")))} search{score}, used by the runs with use_search: <code>{e(values)}</code></div>'


def _stages_section(info: Mapping, study_dir: Path, pages: Mapping[str, str]) -> str:
    stages = [s for s in info.get("stages", STAGE_DIRS) if s in STAGE_DIRS] or list(STAGE_DIRS)
    items = []
    for stage in stages:
        status = _stage_status(study_dir, stage)
        css = "ok" if status == "ok" else "bad" if status.startswith("failed") else "muted"
        links = [f'<a href="{e(href)}">{e(Path(rel).stem)}</a>' for rel, href in pages.items() if rel.startswith(f"{stage}/")]
        extra = _search_choice(info, study_dir) if stage == "search" else ""
        items.append(f'<li><b>{e(STAGE_TITLES[stage])}</b> — <span class="{css}">{e(status)}</span> {" · ".join(links)}{extra}</li>')
    return f"<ul>{''.join(items)}</ul>"


# ----------------------------------------------------------------------------------------
# the study's answer at a glance (top of the index page; issue 15)


def _figure_img(fig, alt: str) -> str:
    """A matplotlib figure as an inline PNG (the page opens offline)."""
    import base64
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img class="headline" alt="{e(alt)}" src="data:image/png;base64,{data}">'


def _acc(row) -> str:
    """Accuracy and its interval, the interval left out where there is none."""
    if row["acc_lo"] != row["acc_lo"] or row["acc_hi"] != row["acc_hi"]:  # NaN
        return f"{row['accuracy']:.3f}"
    return f"{row['accuracy']:.3f} [{row['acc_lo']:.3f}, {row['acc_hi']:.3f}]"


def answer_section(study_dir: Path, *, synthetic: bool) -> list[str]:
    """The headline: test accuracy with intervals per run, the data-efficiency curve where the
    study varies ``data.train_size``, the best run and the runs not significantly worse."""
    from facetransfer import compare, plots

    answer = compare.best_and_equivalent(study_dir)
    if answer["best"] is None:
        return ["<h2>The answer at a glance</h2>", '<p class="muted">No finished classification run with test results (predictions.csv or a confusion matrix) to compare yet.</p>']
    task, best, equivalent = answer["task"], answer["best"], answer["equivalent"]
    alpha = 0.05
    figures = [_figure_img(plots.metric_bars(answer["table"], metrics=["accuracy"], title=f"Test accuracy per run ({task}), 95% intervals", synthetic=synthetic), "test accuracy per run")]
    efficiency = compare.data_efficiency(study_dir)
    if len(efficiency):
        figures.insert(0, _figure_img(plots.data_efficiency(efficiency, synthetic=synthetic), "test accuracy against training images"))
    names = ", ".join(f"<b>{e(str(r['Run']))}</b> {_acc(r)}" for _, r in equivalent.iterrows()) or "none"
    lines = [
        f"<li>Best run ({e(task)}, test accuracy, 95% interval): <b>{e(str(best['Run']))}</b> {_acc(best)} on {best['n_test']:.0f} test images ({e(str(best['unit']))}).</li>",
        f"<li>Not significantly less accurate than it (paired bootstrap of the accuracy difference, Holm-corrected over all pairs, alpha {alpha:g}): {names}.</li>",
    ]
    if answer["untested"]:
        lines.append(f"<li>Not comparable with it (another test set): {e(', '.join(answer['untested']))}.</li>")
    if len(efficiency):
        tested = efficiency[efficiency["p_holm"].notna()]
        verdicts = [f"{e(str(r.line))} at {r.n_train:,} images: {e(str(r.verdict))}" for r in tested.itertuples()]
        lines.append(f"<li>Against {e(str(efficiency.attrs['baseline']))} at each training size (paired test on the same test images, Holm-corrected): "
                     + ("; ".join(verdicts) or "no size has both runs") + ".</li>")
    return ["<h2>The answer at a glance</h2>", f"<ul>{''.join(lines)}</ul>", f'<div class="figures">{"".join(figures)}</div>']


def index_html(info: Mapping, study_dir: Path, pages: Mapping[str, str]) -> str:
    runs = [r for r in info["runs"] if r.get("listed")]
    others = [r for r in info["runs"] if not r.get("listed")]
    statuses = [_status(r) for r in runs]
    n_ok, n_failed = statuses.count("ok"), statuses.count("failed")
    n_other = len(statuses) - n_ok - n_failed
    pending = info.get("pending_runs") or []
    title = str(info.get("title") or info.get("study"))
    parts = [
        f"<h1>{e(title)}</h1>",
        f"<p>{e(str(info.get('description') or ''))}</p>",
        f'<p class="meta">study <code>{e(str(info.get("study")))}</code>'
        + (f' · file <code>{e(str(info["study_file"]))}</code> (sha1 {e(str(info.get("study_sha1", ""))[:12])})' if info.get("study_file") else "")
        + (f" · overrides <code>{e(' '.join(info['overrides']))}</code>" if info.get("overrides") else "")
        + f" · report written {e(datetime.now(UTC).isoformat(timespec='seconds'))} by facetransfer {e(__version__)}</p>",
    ]
    if is_synthetic(info):
        parts.append(f'<div class="banner">{e(SYNTHETIC_TEXT)}</div>')
    parts += answer_section(study_dir, synthetic=is_synthetic(info))
    summary = f'<b>{len(runs)}</b> runs: <span class="ok">{n_ok} ok</span>, <span class="{"bad" if n_failed else "muted"}">{n_failed} failed</span>'
    if n_other:
        summary += f", {n_other} not run"
    if pending:
        summary += f', <span class="bad">{len(pending)} waiting for the search</span> ({e(", ".join(str(p.get("name")) for p in pending))})'
    parts += ["<h2>Summary</h2>", f"<p>{summary}</p>", _stages_section(info, study_dir, pages)]
    parts += ["<h2>Runs</h2>", _runs_section(runs, pages, study_dir)]
    if info.get("reported"):
        parts += ["<h2>Reported elsewhere vs this study</h2>", _reported_section(study_dir, info["reported"])]
    parts += ["<h2>Data provenance</h2>", _provenance_section(runs)]
    parts += ["<h2>Environment</h2>", _environment_section(runs)]
    if others:
        parts += [
            "<h2>Other run folders</h2>",
            '<p class="small">Run folders under runs/ that the current study.json does not list (earlier params of this study).</p>',
            _runs_section(others, pages, study_dir),
        ]
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(title)}</title><style>{_PAGE_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _pages(study_dir: Path, info: Mapping, *, force: bool) -> dict[str, str]:
    names = {r["run_id"]: str(r.get("name") or r["run_id"]) for r in info["runs"]}
    title = str(info.get("title") or info.get("study"))
    return render_notebooks(study_dir, study_dir / "report", title=title, synthetic=is_synthetic(info), names=names, force=force)


def render_pages(study_dir) -> bool:
    """The pages of the notebooks executed so far, each rendered when missing or older than its
    notebook; no index. The runner calls it as executions finish, so that the pages are ready
    when the last one ends (:func:`render` then renders the rest and the index).

    Every page carries the study's SYNTHETIC banner when any run is on synthetic data, which is
    settled early only when it is yes: until a run shows synthetic data nothing is rendered
    (returns False), and :func:`render` renders every page at the end."""
    study_dir = Path(study_dir).resolve()
    info = load_study_info(study_dir)
    if not is_synthetic(info):
        return False
    _pages(study_dir, info, force=False)
    return True


def render(study_dir, *, force: bool = False) -> Path:
    """Render ``<study_dir>/report/`` (every notebook + index.html); returns index.html's path."""
    study_dir = Path(study_dir).resolve()
    if not study_dir.is_dir():
        raise FacetransferError(f"study folder {study_dir} does not exist; run `facetransfer run params/<study>.yaml` first")
    info = load_study_info(study_dir)
    pages = _pages(study_dir, info, force=force)
    index = study_dir / "report" / "index.html"
    atomic_write_text(index, index_html(info, study_dir, pages))
    return index
