"""User strings (study title and description, run names, params values, file names,
quarantine reasons, errors) are escaped on every page of the report: a study file shared
by someone else must not put markup, and with it script, into the report a colleague opens.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pandas as pd
from nbformat.v4 import new_code_cell, new_notebook, new_output

from facetransfer import compare, notebook, plots, report
from facetransfer.io import atomic_write_json, read_json
from test_report import make_study

SCRIPT = '<script>alert("pwned")</script>'
IMG = "<img src=x onerror=alert(1)>"
LINK = '<a href="javascript:alert(1)">click</a>'
PAYLOAD = f"{SCRIPT}{IMG}{LINK}"


class Live(HTMLParser):
    """Elements the payload would make live: a script that alerts, an on* handler, a javascript: URL."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []
        self._script = False

    def handle_starttag(self, tag, attrs):
        self._script = tag == "script"
        for key, value in attrs:
            if key.startswith("on") and "alert" in (value or ""):
                self.found.append(f"<{tag} {key}=...>")
            if key in ("href", "src", "action") and (value or "").strip().lower().startswith("javascript:"):
                self.found.append(f"<{tag} {key}=javascript:...>")

    def handle_data(self, data):
        if self._script and "alert(" in data:
            self.found.append("<script>alert(...)")

    def handle_endtag(self, tag):
        self._script = False


def live(html_text: str) -> list[str]:
    parser = Live()
    parser.feed(html_text)
    return parser.found


def test_the_detector_sees_live_payloads_and_not_escaped_ones():
    import html

    assert len(live(PAYLOAD)) == 3
    assert live(html.escape(PAYLOAD)) == []


def comparison_table(name: str) -> pd.DataFrame:
    row = {"Run": name, "accuracy": 0.9, "acc_lo": 0.8, "acc_hi": 0.95, "precision": 0.9, "recall": 0.9, "f1": 0.9,
           "f1_lo": 0.8, "f1_hi": 0.95, "auc": float("nan"), "auc_lo": None, "auc_hi": None, "mae": float("nan"),
           "mae_lo": None, "mae_hi": None, "train_seconds": 3.0, "degenerate": False, "status": "failed", "note": name, "unit": "per image: no identities"}  # fmt: skip
    return pd.DataFrame([row])


def test_styled_tables_escape_user_text():
    assert live(compare.style_comparison(comparison_table(PAYLOAD)).to_html()) == []
    provenance = {"dataset": "folder", "root": PAYLOAD, "synthetic": False, "quarantine_by_reason": {PAYLOAD: 1}}
    assert live(plots.provenance_table(provenance).to_html()) == []


def test_run_introduction_escapes_the_run_name_and_paths(tmp_path):
    params = {"name": PAYLOAD, "data": {"dataset": "celeba", "root": str(tmp_path / PAYLOAD.replace("/", "|"))}}
    assert live(notebook.introduction(params).data) == []


def run_page_with_outputs(path: Path) -> None:
    """An executed run notebook whose outputs carry user strings, as the real ones do."""
    table = pd.DataFrame({"path": [f"/data/{PAYLOAD}.jpg"], "reason": [f"bad label value: Male={PAYLOAD!r}"]})
    cell = new_code_cell("show()", execution_count=1)
    cell.outputs = [
        new_output("stream", name="stdout", text=f"run {PAYLOAD}\n"),
        new_output("execute_result", data={"text/html": table.to_html(), "text/plain": str(table)}, execution_count=1),
        new_output("display_data", data={"text/html": compare.style_comparison(comparison_table(PAYLOAD)).to_html()}),
        new_output("error", ename="ParamError", evalue=f"params: name: {PAYLOAD}", traceback=[f"ParamError: params: name: {PAYLOAD}"]),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(new_notebook(cells=[cell]), path)


def test_every_report_page_escapes_user_strings(tmp_path):
    study_dir = make_study(tmp_path, synthetic=False)
    info = read_json(study_dir / "study.json")
    info.update(title=f"Study {PAYLOAD}", description=f"About {PAYLOAD}", overrides=[f"name={PAYLOAD}"])
    for run in info["runs"]:
        run["name"] = run["params"]["name"] = f"{run['name']} {PAYLOAD}"
        run["params"]["data"]["root"] = f"/data/{PAYLOAD}"
        metrics_path = study_dir / "runs" / run["run_id"] / "metrics.json"
        metrics = read_json(metrics_path)
        metrics["params"] = run["params"]
        if metrics["status"] == "failed":
            metrics["error"] = f"DataError: {PAYLOAD}"
        else:
            provenance = metrics["data"].get("provenance", metrics["data"])
            provenance.update(root=f"/data/{PAYLOAD}", quarantine_by_reason={f"bad label value: {PAYLOAD}": 2})
        atomic_write_json(metrics_path, metrics)
        run_page_with_outputs(study_dir / "runs" / run["run_id"] / "03_finetune.ipynb")
    atomic_write_json(study_dir / "study.json", info)
    for stage, name in (("explore", "01_explore"), ("compare", "04_compare")):
        run_page_with_outputs(study_dir / stage / f"{name}.ipynb")
    report.render(study_dir, force=True)
    pages = sorted((study_dir / "report").rglob("*.html"))
    assert len(pages) == 6  # the index, three runs, explore, compare
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert live(text) == [], page
    index = (study_dir / "report" / "index.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;" in index  # shown as text, not dropped
