"""Params fuzzing: random mutations of valid params always give a one-line ParamError
naming a key, never another exception."""

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from facetransfer.errors import ParamError
from facetransfer.params import flatten, is_known_key, resolve_run, set_dotted

VALID = {
    "task": "gender",
    "data": {"dataset": "celeba", "synthetic": {"n": 40, "size": 64}, "image_size": 64},
    "model": {"backbone": "compact", "weights": "none", "strategy": "full", "head": {"dense": [16]}},
    "train": {"epochs": 1, "early_stopping": {"patience": 1}},
}
KEYS = sorted(flatten(resolve_run(VALID)))
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-10**6, max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(-5, 5), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _check(raw):
    try:
        resolved = resolve_run(raw)
    except ParamError as exc:
        message = str(exc)
        assert "\n" not in message
        assert message.startswith("params: ")
        named = exc.key.split("[")[0]
        # the named key is a schema key, or the unknown key the mutation introduced
        assert exc.key == "params" or is_known_key(named) or (
            "unknown key" in message and named not in KEYS
        ), message
        return None
    return resolved


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(KEYS), value=JUNK)
def test_wrong_values_give_one_line_errors(key, value):
    raw = copy.deepcopy(VALID)
    set_dotted(raw, key, value)
    _check(raw)


@settings(max_examples=100, deadline=None)
@given(section=st.sampled_from(["", "data", "model", "model.head", "train", "data.split"]), name=st.text(min_size=1, max_size=10))
def test_unknown_keys_are_named(section, name):
    raw = copy.deepcopy(VALID)
    dotted = f"{section}.{name}" if section else name
    if is_known_key(dotted) or "." in name:
        return
    set_dotted(raw, dotted, 1)
    try:
        resolve_run(raw)
    except ParamError as exc:
        assert exc.key == dotted
        assert "unknown key" in str(exc)
    else:
        raise AssertionError(f"unknown key {dotted!r} was accepted")


@settings(max_examples=60, deadline=None)
@given(section=st.sampled_from(["data", "model", "train", "eval", "model.head", "data.split"]), value=JUNK)
def test_sections_replaced_by_junk(section, value):
    raw = copy.deepcopy(VALID)
    set_dotted(raw, section, value)
    _check(raw)
