"""Search logic: validation, carrying the best value forward, resumable trials, Optuna.

Training is replaced by a deterministic score of the trial's params, so these tests check
the search itself; the real trial path runs in the end-to-end study tests.
"""

import inspect

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
        ({"optuna": {"n_trials": 0, "space": {"train.learning_rate": {"low": 0.1, "high": 1.0}}}}, "search.optuna.n_trials"),
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
