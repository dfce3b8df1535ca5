"""The notebooks' parameters as papermill gives them (facetransfer.notebook): dict
parameters as JSON/YAML text, path defaults from the repository, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facetransfer import notebook
from facetransfer.errors import ParamError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "text", ['{"train": {"epochs": 1}, "name": "x"}', "train: {epochs: 1}\nname: x\n", "{train: {epochs: 1}, name: x}"]
)
def test_dict_parameters_accept_json_and_yaml_text(text):
    assert notebook.mapping("params", text) == {"train": {"epochs": 1}, "name": "x"}
    assert notebook.mapping("params", {"a": 1}) == {"a": 1} and notebook.mapping("params", None) is None


@pytest.mark.parametrize(
    "value,needle",
    [('{"train": {"epochs": 1}', "params: is not valid JSON/YAML at line 1"), ("[1, 2]", "params: must be a mapping; the text '[1, 2]' is a list"), (3, "must be a mapping or JSON/YAML text")],
)
def test_bad_dict_parameter_is_one_line(value, needle):
    with pytest.raises(ParamError) as exc:
        notebook.mapping("params", value)
    assert "\n" not in str(exc.value) and needle in str(exc.value)


def test_results_root_defaults_to_the_repository_whatever_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert notebook.results_root(None) == str(REPO / "results")
    assert notebook.study_dir(None) == str(REPO / "results" / "demo")
    assert notebook.results_root("out") == str(tmp_path / "out")  # given: relative to where it was given


@pytest.mark.slow
def test_a_bad_parameter_ends_the_executed_notebook_in_one_line(tmp_path):
    import papermill
    from papermill.exceptions import PapermillExecutionError

    out = tmp_path / "out.ipynb"
    with pytest.raises(PapermillExecutionError):
        papermill.execute_notebook(
            str(REPO / "notebooks" / "03_finetune.ipynb"), str(out), kernel_name="facetransfer", progress_bar=False,
            parameters={"params": '{"train": {"epoch": 1}}', "results_root": str(tmp_path)}, cwd=str(tmp_path),
        )  # fmt: skip
    errors = [o for c in json.loads(out.read_text())["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert len(errors) == 1
    assert errors[0]["traceback"] == [f"ParamError: {errors[0]['evalue']}"]  # one line, no traceback through the library
    assert errors[0]["evalue"].startswith("params: train.epoch: unknown key (did you mean train.epochs?)")
