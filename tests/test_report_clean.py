"""A demo-like report from the REAL notebooks is clean and escaped.

A tiny SYNTHETIC study (explore, a two-trial search, two runs, compare) is executed by the
installed ``facetransfer`` command; its title, description and one run's name carry
markup. Then no rendered page shows tool noise (warnings, log lines), a missing value as
``None`` / ``nan`` / ``()``, text cut with ``...``, a fixed introduction that is false for
the run, or live markup from the study file.
"""

from __future__ import annotations

import re
import subprocess
from html.parser import HTMLParser

import pytest
import yaml

from _studyutil import FACETRANSFER, quiet_env, study_runs, synth
from test_escaping import PAYLOAD, live

pytestmark = pytest.mark.slow

NOISE = ("Warning:", "WARNING:", "retracing", "IProgress", "DecompressionBomb", "absl", "oneDNN")
# A missing value shown as such; not Keras's "(None, 32, 32, 3)" (the batch dimension of a layer's shape).
MISSING = re.compile(r"(^|\s)(None|nan|NaN|<NA>|NaT|\(\))(?!\s*,)(\s|$)")


def tiny_study(celeba) -> dict:
    return {
        "study": "clean",
        "title": f"Clean report {PAYLOAD}",
        "description": f"Escaping check {PAYLOAD}",
        "stages": ["explore", "search", "finetune", "compare"],
        "defaults": {
            "data": {"dataset": "celeba", "root": str(celeba), "image_size": 32},
            "model": {"backbone": "compact", "weights": "none", "strategy": "full", "head": {"dense": [8]}},
            "train": {"batch_size": 16, "epochs": 1},
            "eval": {"saliency": 1, "n_misclassified": 2, "bootstrap": 50},
        },
        "runs": [{"name": f"<b>bold</b> {PAYLOAD}"}, {"name": "three", "set": {"train.epochs": 3}}],
        "search": {"set": {"train.epochs": 1}, "sequential": [{"key": "train.learning_rate", "values": [0.01, 0.001]}]},
    }


class Text(HTMLParser):
    """The text a reader sees (no script, style or the hidden code inputs' markup)."""

    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        self._skip -= tag in ("script", "style") and self._skip > 0

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def output_text(page: str) -> str:
    """Visible text of the outputs and markdown (code inputs may hold anything)."""
    page = re.sub(r'<div class="jp-Cell-inputWrapper.*?<div class="jp-Cell-outputWrapper', "", page, flags=re.S)
    parser = Text()
    parser.feed(page)
    return "\n".join(parser.parts)


@pytest.fixture(scope="module")
def report_pages(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clean")
    celeba = synth("celeba", tmp / "celeba", n=80)
    study = tmp / "clean.yaml"
    study.write_text(yaml.safe_dump(tiny_study(celeba), sort_keys=False), encoding="utf-8")
    done = subprocess.run([str(FACETRANSFER), "run", str(study), "--results", str(tmp / "results")], env=quiet_env(), cwd=tmp, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    study_dir = tmp / "results" / "clean"
    pages = {p.relative_to(study_dir / "report").as_posix(): p.read_text(encoding="utf-8") for p in (study_dir / "report").rglob("*.html")}
    return study_dir, pages


def test_no_page_shows_tool_noise_missing_values_or_cut_text(report_pages):
    _, pages = report_pages
    assert len(pages) == 6  # index, explore, search, two runs, compare
    for name, page in pages.items():
        text = output_text(page)
        for noise in NOISE:
            assert noise not in text, (name, noise, text[max(0, text.find(noise) - 200) : text.find(noise) + 200])
        assert not MISSING.search(text), (name, MISSING.search(text))
        assert "..." not in text and "…" not in text, (name, text[max(0, text.find("...") - 200) : text.find("...") + 50])


def test_the_run_introduction_is_true_for_each_run(report_pages):
    study_dir, pages = report_pages
    for run in study_runs(study_dir):
        text = output_text(pages[f"runs/{run['run_id']}/03_finetune.html"])
        epochs = run["params"]["train"]["epochs"]
        assert "two epochs on a small synthetic set" not in text
        assert f"{epochs} epoch{'s' if epochs != 1 else ''} of adam" in text


def test_no_page_has_live_markup_from_the_study_file(report_pages):
    _, pages = report_pages
    for name, page in pages.items():
        assert live(page) == [], name
        assert "<b>bold</b>" not in page, name
