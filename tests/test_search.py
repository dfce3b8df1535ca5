"""Search logic: validation, carrying the best value forward, resumable trials, Optuna.

Training is replaced by a deterministic score of the trial's params, so these tests check
the search itself; the real trial path runs in the end-to-end study tests.
"""

import inspect
import os

import pytest

from facetransfer import search
from facetransfer.errors import ParamError

BASE = {
    "data": {"dataset": "celeba", "synthetic": {"n": 40, "size": 64}, "image_size": 32},
    "model": {"backbone": "compact", "weights": "none", "strategy": "full"},
    "train": {"epochs": 1},
}
SPEC = {
    "metric": "val.accuracy",
    "set": {"train.epochs": 2},
    "sequential": [
        {"key": "train.batch_size", "values": [16, 32, 64]},
        {"key": "train.learning_rate", "values": [0.01, 0.001]},
        {"key": "model.head.dropout", "values": [0.0, 0.5]},
    ],
}


@pytest.fixture
def scored(monkeypatch):
    """Replace training with a score that prefers batch 32, lr 0.001 and, given those, dropout 0.5."""
    calls = []

    def fake_train(self, cfg):
        calls.append(cfg)
        t, head = cfg["train"], cfg["model"]["head"]
        assert t["epochs"] == 2  # the spec's `set` applies to every trial
        score = 0.5 + (0.2 if t["batch_size"] == 32 else 0) + (0.1 if t["learning_rate"] == 0.001 else 0)
        score += 0.05 * head["dropout"] if t["batch_size"] == 32 and t["learning_rate"] == 0.001 else 0
        reported = 1 - score if self.metric == "val.loss" else score
        return {"score": reported, "val": {"accuracy": score}, "val_loss": 1 - score, "epochs_run": 2, "seconds": 0.0}

    monkeypatch.setattr(search._Trials, "_train", fake_train)
    return calls


def test_sequential_search_carries_each_best_value_forward(tmp_path, scored):
    result = search.sequential_search(BASE, SPEC, out_dir=tmp_path, results_root=tmp_path)
    assert result.best == {"train.epochs": 2, "train.batch_size": 32, "train.learning_rate": 0.001, "model.head.dropout": 0.5}
    assert result.best_score == pytest.approx(0.825)
    # 7 trials, 5 trainings: (32, 0.001, 0.0) is the same configuration in all three steps
    assert len(result.trials) == 3 + 2 + 2 and len(scored) == 5
    # step 2 ran with step 1's winner, step 3 with both winners
    assert all(c["train"]["batch_size"] == 32 for c in scored[3:])
    assert scored[3]["train"]["learning_rate"] == 0.01 and scored[4]["model"]["head"]["dropout"] == 0.5
    assert scored[4]["train"]["learning_rate"] == 0.001
    chosen = result.trials[result.trials["chosen"]]
    assert list(chosen["value"]) == ["32", "0.001", "0.5"]
    assert result.best_params["model"]["head"]["dropout"] == 0.5
    path = search.write_best(tmp_path, result)
    assert search.load_best(path) == result.best


def test_finished_trials_are_not_retrained(tmp_path, scored):
    search.sequential_search(BASE, SPEC, out_dir=tmp_path, results_root=tmp_path)
    first = len(scored)
    again = search.sequential_search(BASE, SPEC, out_dir=tmp_path, results_root=tmp_path)
    assert len(scored) == first  # every trial came from <out_dir>/trials/<id>.json
    assert again.best["train.batch_size"] == 32
    assert len(list((tmp_path / "trials").glob("*.json"))) == 5


def test_loss_metric_is_minimised(tmp_path, scored):
    spec = {**SPEC, "metric": "val.loss"}
    result = search.sequential_search(BASE, spec, out_dir=tmp_path, results_root=tmp_path)
    assert result.best["train.batch_size"] == 32  # lowest val_loss = highest score here
    assert result.best_score == pytest.approx(1 - 0.825)


def test_optuna_search_picks_the_best_trial(tmp_path, scored):
    spec = {
        "set": {"train.epochs": 2, "train.batch_size": 32},
        "optuna": {"n_trials": 6, "sampler": "random", "seed": 3, "space": {"train.learning_rate": {"choices": [0.01, 0.001]}, "model.head.dropout": {"low": 0.0, "high": 0.5}}},
    }
    result = search.optuna_search(BASE, spec, out_dir=tmp_path, results_root=tmp_path)
    assert len(result.trials) == 6
    assert result.best_score == pytest.approx(result.trials["score"].max())
    best_row = result.trials.loc[result.trials["score"].idxmax()]
    assert result.best["model.head.dropout"] == pytest.approx(best_row["model.head.dropout"])


@pytest.mark.parametrize(
    "spec, key",
    [
        ({"metrc": "val.accuracy"}, "search.metrc"),
        ({"metric": "test.accuracy"}, "search.metric"),
        ({"sequential": [{"key": "train.learnin_rate", "values": [0.1]}]}, "search.sequential[0].key"),
        ({"sequential": [{"key": "train.batch_size", "values": []}]}, "search.sequential[0].values"),
        ({"sequential": [{"key": "train.batch_size", "values": [0]}]}, "search.sequential[0].values"),
        ({"set": {"train.epochs": -1}}, "search.set.train.epochs"),
        ({"fan_out": "yes"}, "search.fan_out"),
        ({"fan_ot": True}, "search.fan_ot"),
        ({"optuna": {"n_trials": 0, "space": {"train.learning_rate": {"low": 0.1, "high": 1.0}}}}, "search.optuna.n_trials"),
        ({"optuna": {"parallel": 0, "space": {"train.learning_rate": {"low": 0.1, "high": 1.0}}}}, "search.optuna.parallel"),
        ({"optuna": {"parallel": 2, "space": {"data.image_size": {"choices": [32, 64]}}}}, "search.optuna.space.data.image_size"),
    ],
)
def test_bad_specs_name_the_key_before_any_trial(tmp_path, scored, spec, key):
    with pytest.raises(ParamError) as err:
        search.sequential_search(BASE, spec, out_dir=tmp_path, results_root=tmp_path)
    assert err.value.key == key, str(err.value)
    assert "\n" not in str(err.value)
    assert scored == []  # nothing trained


def test_trials_score_on_the_validation_split_only():
    source = inspect.getsource(search._Trials._train)
    assert 'evaluate_split(model, data, cfg, "val")' in source
    assert '"test"' not in source
    assert all(name.startswith("val.") for name in search.METRICS)


def test_a_trial_scores_the_same_whatever_ran_before(tmp_path):
    """Same params, same numbers: a trial's score does not depend on the RNG state that earlier
    trials (or a resumed search's cached ones) left behind."""
    import keras
    import numpy as np

    from facetransfer.params import resolve_run

    cfg = resolve_run({**BASE, "data": {**BASE["data"], "synthetic": {"n": 120, "size": 64}}, "train": {"epochs": 2, "batch_size": 8}})
    scores = []
    for burn in (0, 7):
        keras.utils.set_random_seed(burn)
        np.random.random(burn)
        keras.random.uniform((burn + 1,))  # advance the global generators by different amounts
        trials = search._Trials(tmp_path / f"search-{burn}", tmp_path / "results", "val.accuracy", verbose=0)
        result = trials._train(cfg)
        scores.append((result["score"], result["val_loss"], result["val"]["confusion_matrix"]))
    assert scores[0] == scores[1]


def test_a_value_that_cannot_learn_is_skipped_with_its_reason(tmp_path, scored, capsys):
    """adience_tuning: batch size 1 with a BatchNorm head stays in the space but never trains."""
    base = {**BASE, "model": {**BASE["model"], "head": {"batch_norm": True}}}
    spec = {**SPEC, "sequential": [{"key": "train.batch_size", "values": [1, 16, 32]}]}
    result = search.sequential_search(base, spec, out_dir=tmp_path, results_root=tmp_path)
    assert [c["train"]["batch_size"] for c in scored] == [16, 32]
    assert result.best["train.batch_size"] == 32
    assert result.skipped == [{"key": "train.batch_size", "value": 1, "reason": result.skipped[0]["reason"]}]
    assert "model.head.batch_norm" in result.skipped[0]["reason"]
    assert "skip train.batch_size=1" in capsys.readouterr().out
    import json

    assert json.loads(search.write_best(tmp_path, result).read_text())["skipped"] == result.skipped
    only_one = {**SPEC, "sequential": [{"key": "train.batch_size", "values": [1]}]}
    with pytest.raises(ParamError, match="no value of train.batch_size can learn"):
        search.sequential_search(base, only_one, out_dir=tmp_path, results_root=tmp_path)


@pytest.mark.parametrize(
    "optuna, words",
    [
        ({"n_trials": 4}, "TPE after 1 random trials (4 trials)"),
        ({"n_trials": 12}, "TPE after 4 random trials (12 trials)"),
        ({"n_trials": 4, "n_startup_trials": 10}, "random (4 trials; TPE would start after 10 random trials)"),
        ({"n_trials": 4, "sampler": "random"}, "random (4 trials)"),
    ],
)
def test_optuna_says_how_it_really_samples(tmp_path, scored, optuna, words):
    space = {"train.learning_rate": {"low": 0.0001, "high": 0.01, "log": True}}
    spec = search.validate_spec({"set": {"train.epochs": 2}, "optuna": {**optuna, "space": space}}, BASE)
    assert search.sampler_description(spec["optuna"]) == words
    result = search.optuna_search(BASE, spec, out_dir=tmp_path, results_root=tmp_path)
    assert result.method == f"optuna: {words}"


def test_tpe_leaves_its_random_start_up_phase(tmp_path, scored, monkeypatch):
    """After n_startup_trials, TPE proposes values (Optuna's TPESampler.n_startup_trials)."""
    import optuna

    seen = {}
    original = optuna.samplers.TPESampler.__init__

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(optuna.samplers.TPESampler, "__init__", spy)
    spec = {"set": {"train.epochs": 2}, "optuna": {"n_trials": 6, "space": {"model.head.dropout": {"low": 0.0, "high": 0.5}}}}
    search.optuna_search(BASE, spec, out_dir=tmp_path, results_root=tmp_path)
    assert seen["n_startup_trials"] == 2


def test_search_use_chooses_what_feeds_use_search_runs(tmp_path, scored):
    optuna_part = {"n_trials": 3, "sampler": "random", "space": {"model.head.dropout": {"low": 0.0, "high": 0.5}}}
    spec = {**SPEC, "optuna": optuna_part}
    seq = search.sequential_search(BASE, spec, out_dir=tmp_path, results_root=tmp_path)
    opt = search.optuna_search(BASE, spec, out_dir=tmp_path, results_root=tmp_path)
    assert search.validate_spec(spec, BASE)["use"] == "sequential"  # the default with steps
    assert search.chosen(search.validate_spec(spec, BASE), seq, opt) is seq
    assert search.chosen(search.validate_spec({**spec, "use": "optuna"}, BASE), seq, opt) is opt
    best = search.chosen(search.validate_spec({**spec, "use": "best"}, BASE), seq, opt)
    assert best.best_score == max(seq.best_score, opt.best_score)
    with pytest.raises(ParamError) as err:
        search.validate_spec({**SPEC, "use": "optuna"}, BASE)
    assert err.value.key == "search.use"
    with pytest.raises(ParamError) as err:
        search.validate_spec({**SPEC, "use": "tpe"}, BASE)
    assert err.value.key == "search.use" and "sequential, optuna, best" in str(err.value)


def test_val_loss_and_accuracy_score_the_same_returned_model(tmp_path, monkeypatch):
    """val.loss is the loss of the model the trial returns (the one val.accuracy scores), not the
    lowest val_loss of any epoch in the history."""
    import pandas as pd

    from facetransfer import train
    from facetransfer.params import resolve_run

    def no_training(model, data, cfg, run_dir, **kw):
        train.compile_model(model, cfg, 0.001)
        return train.TrainResult(history=pd.DataFrame({"epoch": [1], "val_loss": [0.001]}), timings={}, used_feature_cache=False)

    monkeypatch.setattr(train, "fit", no_training)
    cfg = resolve_run({**BASE, "data": {**BASE["data"], "synthetic": {"n": 120, "size": 64}}})
    result = search._Trials(tmp_path / "search", tmp_path / "results", "val.loss", verbose=0)._train(cfg)
    assert result["val_loss"] == result["score"] > 0.1  # an untrained sigmoid's cross-entropy, not the history's 0.001


# ----------------------------------------------------------------------------------------
# concurrency: the step's values and Optuna's trials as tasks on a Dask cluster


@pytest.fixture
def cluster(monkeypatch, scored):
    """A 2-worker LocalCluster in this process (threads, so the fake training applies in the
    workers) whose address the search finds where facetransfer run's workers set it. Each
    training sleeps a little and records its worker and interval; data preparation records
    where it ran (``cluster.prepared``)."""
    import threading
    import time

    from distributed import LocalCluster, get_worker

    fake_train = search._Trials._train
    lock = threading.Lock()

    def where() -> str:
        try:
            return get_worker().address
        except ValueError:
            return "here"  # not on a worker

    def slow_train(self, cfg):
        start = time.monotonic()
        time.sleep(0.3)
        result = fake_train(self, cfg)
        with lock:
            spans.append((where(), start, time.monotonic()))
        return result

    class Spans(list):  # (worker, start, end) of every training; .prepared: where data was prepared
        prepared: list[str]

    spans = Spans()
    spans.prepared = []
    monkeypatch.setattr(search._Trials, "_train", slow_train)
    monkeypatch.setattr(search._Trials, "data", lambda self, cfg: spans.prepared.append(where()))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as local:
        monkeypatch.setenv(search.SCHEDULER_ENV, local.scheduler_address)
        yield spans


FAN_OUT = {**SPEC, "fan_out": True}


def workers(spans) -> list[str]:
    return [worker for worker, _, _ in spans]


def overlapping(spans) -> bool:
    return any(a[1] < b[2] and b[1] < a[2] for i, a in enumerate(spans) for b in spans[i + 1 :])


def test_without_fan_out_a_search_trains_its_values_itself_even_with_a_cluster(tmp_path, cluster, scored):
    search.sequential_search(BASE, SPEC, out_dir=tmp_path, results_root=tmp_path)
    assert set(workers(cluster)) == {"here"} and len(cluster) == len(scored) > 0


def test_a_steps_values_train_concurrently_and_choose_as_serially(tmp_path, monkeypatch, cluster, scored):
    concurrent = search.sequential_search(BASE, FAN_OUT, out_dir=tmp_path / "dask", results_root=tmp_path)
    assert len(set(workers(cluster))) == 2 and "here" not in workers(cluster) and overlapping(cluster)
    assert cluster.prepared == ["here"] * len(scored)  # a worker cannot start processes: data is prepared here
    trained = len(scored)
    assert search.sequential_search(BASE, FAN_OUT, out_dir=tmp_path / "dask", results_root=tmp_path).best == concurrent.best
    assert len(scored) == trained  # a re-run takes every trial from the cache
    monkeypatch.delenv(search.SCHEDULER_ENV)
    serial = search.sequential_search(BASE, FAN_OUT, out_dir=tmp_path / "serial", results_root=tmp_path)
    assert (serial.best, serial.best_score) == (concurrent.best, concurrent.best_score)
    columns = ["step", "key", "value", "score", "trial_id", "chosen"]
    assert serial.trials[columns].equals(concurrent.trials[columns])


PARALLEL = {
    "set": {"train.epochs": 2, "train.batch_size": 32},
    "optuna": {"n_trials": 6, "sampler": "tpe", "n_startup_trials": 2, "seed": 3, "parallel": 2, "space": {"train.learning_rate": {"choices": [0.01, 0.001]}, "model.head.dropout": {"low": 0.0, "high": 0.5}}},
}


def test_optuna_trials_run_concurrently_through_a_journal(tmp_path, cluster, scored):
    result = search.optuna_search(BASE, PARALLEL, out_dir=tmp_path, results_root=tmp_path)
    assert len(set(workers(cluster))) == 2 and "here" not in workers(cluster) and overlapping(cluster)
    assert len(result.trials) == 6 and len(scored) <= 6  # a value proposed twice trains once
    assert result.best_score == pytest.approx(result.trials["score"].max())
    assert result.method == "optuna: TPE after 2 random trials (6 trials), 2 at a time"
    assert (tmp_path / search.JOURNAL).is_file()


def test_a_killed_parallel_search_resumes_from_its_journal(tmp_path, scored, monkeypatch, capsys):
    """What kill -9 after 3 of 6 trials leaves (3 finished, a 4th running): the re-run trains
    only the 3 trials left, tells the stale one failed, and its result holds 6."""
    import optuna

    monkeypatch.delenv(search.SCHEDULER_ENV, raising=False)  # the workers take turns here
    search.optuna_search(BASE, {**PARALLEL, "optuna": {**PARALLEL["optuna"], "n_trials": 3}}, out_dir=tmp_path, results_root=tmp_path)
    name = search._study_name(BASE, search.validate_spec(PARALLEL, BASE), 3)
    journal = search._journal_storage(tmp_path / search.JOURNAL)
    optuna.load_study(study_name=name, storage=journal).ask()  # the trial the killed worker was running
    first = len(scored)
    assert 1 <= first <= 3
    capsys.readouterr()
    result = search.optuna_search(BASE, PARALLEL, out_dir=tmp_path, results_root=tmp_path)
    out = capsys.readouterr().out
    assert "3 of 6 trials already in" in out and "no Dask cluster" in out
    assert len(scored) - first <= 3 and len(result.trials) == 6
    states = [t.state for t in optuna.load_study(study_name=name, storage=journal).trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1 and states.count(optuna.trial.TrialState.COMPLETE) == 6


def test_dask_workers_tell_the_search_kernel_their_scheduler(monkeypatch):
    """facetransfer run's workers set DASK_SCHEDULER_ADDRESS, which the search's kernel (their
    child) inherits: it then gives its trials to the study's cluster."""
    from distributed import Client, LocalCluster

    from facetransfer.executors import on_dask

    for name in (search.SCHEDULER_ENV, *on_dask.THREAD_VARS):
        monkeypatch.setenv(name, "1")  # restored afterwards: the plugin sets them in this process
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as local, Client(local) as client:
        client.register_plugin(on_dask.ThreadLimits({}))
        assert os.environ[search.SCHEDULER_ENV] == local.scheduler_address


def test_an_unreachable_scheduler_is_one_line(tmp_path, scored, monkeypatch):
    import socket

    from facetransfer.errors import FacetransferError

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv(search.SCHEDULER_ENV, f"tcp://127.0.0.1:{port}")
    monkeypatch.setattr(search, "CONNECT_TIMEOUT_S", 1)
    with pytest.raises(FacetransferError) as err:
        search.sequential_search(BASE, FAN_OUT, out_dir=tmp_path, results_root=tmp_path)
    assert f"DASK_SCHEDULER_ADDRESS=tcp://127.0.0.1:{port}: no Dask scheduler answered" in str(err.value) and "\n" not in str(err.value)
    assert scored == []
