"""The notebooks' parameters as papermill and JupyterLab give them, made usable.

* papermill's ``-p name value`` passes text, ``-y``/``-f`` pass YAML values, the study
  runner passes Python values: :func:`mapping` accepts a dict, None, or JSON/YAML text
  (JSON is YAML), so ``papermill ... -p params '{"train": {"epochs": 1}}'`` works.
* ``results_root=None`` (the notebooks' default) is the repository's ``results/``, found
  from this package's location, never the kernel's working directory (papermill runs
  the kernel wherever it was started).
* Importing this module sets pandas to show every column and whole cell texts (no
  ``...`` cutting a quarantine reason or a verdict: the report wraps long text instead).
* Importing this module in IPython shows a :class:`FacetransferError` (a bad parameter,
  bad data) as its one line, ``ParamError: params: train.epochs: ...``, instead of a
  traceback through the library: the executed notebook ends in that line.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from facetransfer import params as P
from facetransfer.errors import FacetransferError, ParamError

REPOSITORY = Path(__file__).resolve().parents[2]  # lib/facetransfer/ → the clone


def mapping(name: str, value: Any) -> dict | None:
    """A dict parameter: a mapping or None as given, JSON/YAML text parsed; else ParamError."""
    if value is None or isinstance(value, Mapping):
        return None if value is None else dict(value)
    if not isinstance(value, str):
        raise ParamError(name, f"must be a mapping or JSON/YAML text for one (got {type(value).__name__})")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1} column {where.column + 1}" if where else ""
        raise ParamError(name, f"is not valid JSON/YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    if parsed is not None and not isinstance(parsed, Mapping):
        raise ParamError(name, f"must be a mapping; the text {value!r} is a {type(parsed).__name__}")
    return parsed


def results_root(value: str | None = None) -> str:
    """``value`` as an absolute path; None: the repository's ``results/``."""
    if value is not None:
        return str(Path(value).expanduser().resolve())
    if not (REPOSITORY / "notebooks").is_dir():
        raise ParamError("results_root", f"is required: facetransfer is not run from a clone ({REPOSITORY} has no notebooks/), so there is no repository results/ folder")
    return str(REPOSITORY / "results")


def introduction(params: Mapping | None):
    """What this run trains, from its own params (03_finetune's introduction), as HTML.

    Every value is HTML-escaped: run names and paths come from study files others share.
    """
    from IPython.display import HTML

    cfg = P.resolve_run(params)
    d, m, t = cfg["data"], cfg["model"], cfg["train"]
    if d["synthetic"] is not None:
        source = f"a SYNTHETIC {d['dataset']}-layout set of {d['synthetic']['n']} generated faces"
    else:
        source = f"the {d['dataset']} data at {d['root']}"
    if d["limit"]:
        source += f" (a seeded subset of {d['limit']} records)"
    head = ", ".join(str(n) for n in m["head"]["dense"]) or "none"
    weights = {"none": "random weights", "imagenet": "ImageNet weights"}.get(m["weights"], f"weights {m['weights']}")
    facts = [
        ("run", cfg["name"] or "(unnamed)"),
        ("task", cfg["task"]),
        ("data", source),
        ("model", f"{m['backbone']} from {weights}, strategy {m['strategy']}, dense head [{head}] at {P.image_size(cfg)} px"),
        ("training", f"{t['epochs']} epoch{'s' if t['epochs'] != 1 else ''} of {t['optimizer']}, learning rate {t['learning_rate']:g}, batch size {t['batch_size']}, seed {cfg['seed']}"),
    ]
    rows = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in facts)
    return HTML(f"<p>This run, from its params:</p><ul>{rows}</ul>")


def study_dir(value: str | None = None) -> str:
    """04_compare's study folder: ``value`` as an absolute path; None: the repository's results/demo."""
    return results_root(value) if value is not None else f"{results_root(None)}/demo"


def _one_line(shell, etype, value, tb, tb_offset=None) -> None:
    """IPython custom exception handler: the error's one line, no traceback."""
    shell._showtraceback(etype, value, [f"{etype.__name__}: {value}"])


def _show_errors_in_one_line() -> None:
    from IPython import get_ipython  # installed with ipykernel (requirements.txt)

    shell = get_ipython()
    if shell is not None:
        shell.set_custom_exc((FacetransferError,), _one_line)


_show_errors_in_one_line()
pd.set_option("display.max_colwidth", None)
pd.set_option("display.max_columns", None)
