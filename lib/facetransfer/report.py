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
dataset (counts and quarantined files by reason), the environment of the runs, and links
to the explore / search / compare pages.

Every page opens from disk (relative links, no server, CSS inline). Each notebook page
has a bar with a link back to the index and a "Show code / Hide code" button; code cells
start HIDDEN when JavaScript runs (the story reads as text and figures) and stay visible
where it does not. Pages are written atomically; a notebook page is re-rendered when its
notebook is newer than the page (or with ``force=True``).
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
"""

_BAR_CSS = """
.ft-bar{position:sticky;top:0;z-index:1000;display:flex;gap:16px;align-items:center;
 background:#f6f8fa;border-bottom:1px solid #d0d7de;padding:6px 16px;
 font:14px -apple-system,Segoe UI,Helvetica,Arial,sans-serif}
.ft-bar button{font:inherit;padding:2px 10px;cursor:pointer}
.ft-synthetic{color:#9a6700;font-weight:bold}
body.ft-hide-code .jp-CodeCell .jp-Cell-inputWrapper{display:none}
body.ft-hide-code .jp-CodeCell.jp-mod-noOutputs{display:none}
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


_EXPORTER = None


def _exporter():
    global _EXPORTER
    if _EXPORTER is None:
        from nbconvert import HTMLExporter

        _EXPORTER = HTMLExporter(template_name="lab", embed_images=True)
    return _EXPORTER


def notebook_html(notebook: Path, *, title: str, index_href: str, synthetic: bool) -> str:
    """One executed notebook as a self-contained HTML page with the report bar."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    body, _ = _exporter().from_notebook_node(nb, resources={"metadata": {"name": title}})
    tag = '<span class="ft-synthetic">SYNTHETIC DATA</span>' if synthetic else ""
    bar = (
        f'<div class="ft-bar"><a href="{e(index_href)}">&larr; study report</a>'
        f'<button id="ft-toggle" type="button">Hide code</button><span>{e(title)}</span>{tag}</div>'
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
    if isinstance(value, bool) or not isinstance(value, (int, float)):
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


def _table(head: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """Rows of already-escaped HTML cells."""
    th = "".join(f"<th>{e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _status(run: Mapping) -> str:
    metrics = run.get("metrics")
    if metrics is None:
        return "not run"
    return str(metrics.get("status", "unknown"))


def _runs_section(runs: list[dict], pages: Mapping[str, str], study_dir: Path) -> str:
    rows = []
    for run in runs:
        m = run.get("metrics") or {}
        status = _status(run)
        css = "ok" if status == "ok" else "bad" if status == "failed" else "muted"
        status_html = f'<span class="{css}">{e(status)}</span>'
        if m.get("error"):
            status_html += f'<div class="small">{e(str(m["error"]))}</div>'
        degenerate = ""
        if _get(m, "test.degenerate"):
            reason = _get(m, "test.degenerate_reason") or "degenerate"
            degenerate = f'<span class="bad" title="{e(str(reason))}">degenerate</span><div class="small">{e(str(reason))}</div>'
        run_id = run["run_id"]
        links = [f'<a href="{e(href)}">notebook</a>' for rel, href in pages.items() if rel.startswith(f"runs/{run_id}/")]
        if (study_dir / "runs" / run_id / "metrics.json").is_file():
            links.append(f'<a href="../runs/{e(run_id)}/metrics.json">metrics.json</a>')
        rows.append(
            [
                e(str(run.get("name") or run_id)),
                f"<code>{e(run_id)}</code>",
                e(_key_params(run.get("params") or m.get("params"))),
                status_html,
                _num(_get(m, "test.accuracy"), 4),
                _num(_get(m, "test.f1_macro"), 4),
                _num(_get(m, "test.mae"), 2),
                _num(_get(m, "timing.train_seconds"), 1),
                degenerate,
                " · ".join(links),
            ]
        )
    head = ["run", "run id", "key params", "status", "test accuracy", "test F1 (macro)", "test MAE", "train s", "flags", "files"]
    return _table(head, rows, numeric={4, 5, 6, 7})


def _reported_section(reported: list[dict], runs: list[dict]) -> str:
    from facetransfer.study import matches

    rows = []
    for item in reported:
        match = item.get("match") or {}
        hits = [r for r in runs if r.get("params") and matches(r["params"], match)]
        for metric, value in (item.get("metrics") or {}).items():
            ours = []
            for run in hits:
                mine = _get(run.get("metrics"), metric)
                ours.append(f"{e(str(run.get('name')))}: {_num(mine, 4)}" if mine is not None else f"{e(str(run.get('name')))}: –")
            rows.append(
                [
                    e(", ".join(f"{k}={_fmt(v)}" for k, v in match.items())),
                    e(metric),
                    _num(value, 4),
                    "<br>".join(ours) or '<span class="muted">no matching run</span>',
                    e(str(item.get("source") or "")),
                ]
            )
    return _table(["match", "metric", "reported", "this study", "source"], rows, numeric={2})


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
        rows.append(
            [
                e(str(prov.get("dataset"))) + (' <span class="bad">SYNTHETIC</span>' if prov.get("synthetic") else ""),
                f"<code>{e(str(prov.get('root')))}</code>",
                e(str(prov.get("n_records", "–"))),
                e(str(prov.get("n_usable", "–"))),
                e(str(prov.get("n_quarantined", sum(reasons.values()) if reasons else 0))),
                quarantine,
                e(", ".join(f"{k} {v}" for k, v in splits.items())),
            ]
        )
    return _table(["dataset", "root", "records", "usable", "quarantined", "quarantined by reason", "split"], rows, numeric={2, 3, 4})


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


def _stages_section(info: Mapping, study_dir: Path, pages: Mapping[str, str]) -> str:
    stages = [s for s in info.get("stages", STAGE_DIRS) if s in STAGE_DIRS] or list(STAGE_DIRS)
    items = []
    for stage in stages:
        status = _stage_status(study_dir, stage)
        css = "ok" if status == "ok" else "bad" if status.startswith("failed") else "muted"
        links = [f'<a href="{e(href)}">{e(Path(rel).stem)}</a>' for rel, href in pages.items() if rel.startswith(f"{stage}/")]
        items.append(f'<li><b>{e(STAGE_TITLES[stage])}</b> — <span class="{css}">{e(status)}</span> {" · ".join(links)}</li>')
    return f"<ul>{''.join(items)}</ul>"


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
    summary = f'<b>{len(runs)}</b> runs: <span class="ok">{n_ok} ok</span>, <span class="{"bad" if n_failed else "muted"}">{n_failed} failed</span>'
    if n_other:
        summary += f", {n_other} not run"
    if pending:
        summary += f', <span class="bad">{len(pending)} waiting for the search</span> ({e(", ".join(str(p.get("name")) for p in pending))})'
    parts += ["<h2>Summary</h2>", f"<p>{summary}</p>", _stages_section(info, study_dir, pages)]
    parts += ["<h2>Runs</h2>", _runs_section(runs, pages, study_dir)]
    if info.get("reported"):
        parts += ["<h2>Reported elsewhere vs this study</h2>", _reported_section(info["reported"], runs)]
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


def render(study_dir, *, force: bool = False) -> Path:
    """Render ``<study_dir>/report/`` (every notebook + index.html); returns index.html's path."""
    study_dir = Path(study_dir).resolve()
    if not study_dir.is_dir():
        raise FacetransferError(f"study folder {study_dir} does not exist; run `facetransfer run params/<study>.yaml` first")
    info = load_study_info(study_dir)
    report_dir = study_dir / "report"
    names = {r["run_id"]: str(r.get("name") or r["run_id"]) for r in info["runs"]}
    title = str(info.get("title") or info.get("study"))
    pages = render_notebooks(study_dir, report_dir, title=title, synthetic=is_synthetic(info), names=names, force=force)
    index = report_dir / "index.html"
    atomic_write_text(index, index_html(info, study_dir, pages))
    return index
