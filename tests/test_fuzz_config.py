"""Property-based tests of RefineConfig: any fields give a config or an error naming one.

``RefineConfig(**fields)`` and ``config.replace(**fields)`` get random subsets of the fields
(and unknown names) with values of every kind: valid ones, wrong types, NaN, inf, huge
integers, numpy scalars, strings, None. Each call returns a config holding exactly the
values given, or raises ValueError/TypeError whose message names ``RefineConfig.<field>``
(an unknown name: the name itself).
"""

from __future__ import annotations

import math
from dataclasses import fields
from fractions import Fraction

import numpy as np
from _fuzz import check_call, examples
from hypothesis import given
from hypothesis import strategies as st

from napari_scribble_refine.core.config import RefineConfig

FIELDS = {
    f.name: f.type if isinstance(f.type, str) else f.type.__name__ for f in fields(RefineConfig)
}

ANY_VALUE = st.one_of(
    st.integers(-5, 100),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.sampled_from(
        [
            None,
            "sgd",
            "adam",
            "cpu",
            "auto",
            "",
            "SGD",
            10**400,
            -(10**400),
            2**32,
            math.nan,
            math.inf,
            1e300,
            -0.0,
            1 + 0j,
            Fraction(1, 3),
            [1],
            {"a": 1},
            b"cpu",
            np.float32(0.5),
            np.float16(np.inf),
            np.int64(3),
            np.uint8(0),
            np.bool_(True),
            np.array(1.0),
            np.array([0.1]),
        ]
    ),
)


def _valid_value(kind: str) -> st.SearchStrategy:
    """Mostly in-range values of a field's type (ranges are checked by the config)."""
    if kind == "bool":
        return st.booleans()
    if kind == "int":
        return st.integers(0, 20)
    if kind == "float":
        return st.floats(0, 1, exclude_max=True)
    return st.sampled_from(["sgd", "adam", "cpu", "auto"])


@st.composite
def config_fields(draw: st.DrawFn) -> dict[str, object]:
    """Some fields (and sometimes an unknown name) with valid or arbitrary values."""
    names = draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=5, unique=True))
    chosen = {name: draw(st.one_of(_valid_value(FIELDS[name]), ANY_VALUE)) for name in names}
    if draw(st.integers(0, 9)) == 0:
        chosen[draw(st.sampled_from(["learning_rat", "lr", "iterations", "Seed"]))] = 1
    return chosen


def _check_config(config: object, given_fields: dict[str, object], base: RefineConfig) -> None:
    """The config holds the given values and ``base``'s elsewhere."""
    assert isinstance(config, RefineConfig)
    for name in FIELDS:
        expected = given_fields.get(name, getattr(base, name))
        assert getattr(config, name) is expected or getattr(config, name) == expected, name


def _names(given_fields: dict[str, object]) -> tuple[str, ...]:
    return tuple(f"RefineConfig.{n}" if n in FIELDS else n for n in given_fields)


@examples(300)
@given(config_fields())
def test_refine_config_holds_the_values_or_names_the_field(chosen):
    outcome = check_call(lambda: RefineConfig(**chosen), names=_names(chosen))
    if outcome.ok:
        _check_config(outcome.result, chosen, RefineConfig())


@examples(200)
@given(config_fields(), config_fields())
def test_refine_config_replace_is_checked_like_a_new_config(first, changes):
    start = check_call(lambda: RefineConfig(**first), names=_names(first))
    if not start.ok:
        return
    config = start.result
    before = RefineConfig(**{f: getattr(config, f) for f in FIELDS})
    outcome = check_call(config.replace, names=_names(changes), **changes)
    assert config == before, "replace() changed the original config"
    if outcome.ok:
        _check_config(outcome.result, changes, config)


def test_refine_config_refuses_integers_too_large_for_a_float_field():
    """Regression (fuzzing): learning_rate=10**400 raised OverflowError from math.isfinite."""
    for value in (10**400, -(10**400)):
        outcome = check_call(
            lambda v=value: RefineConfig(learning_rate=v), names=("RefineConfig.learning_rate",)
        )
        assert isinstance(outcome.error, ValueError), outcome
