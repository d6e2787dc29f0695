"""RefineConfig: every field checked when a config is made, and no change afterwards."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_scribble_refine.core.config import RefineConfig


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_iterations": 2.5}, r"max_iterations must be an int, got 2\.5 \(float\)"),
        ({"learning_rate": "0.1"}, r"learning_rate must be a float, got '0\.1' \(str\)"),
        ({"trust_region": 1}, r"trust_region must be a bool, got 1 \(int\)"),
        ({"n_layers": True}, r"n_layers must be an int, got True \(bool\)"),
        ({"optimiser": None}, r"optimiser must be a str, got None"),
    ],
)
def test_a_field_of_the_wrong_type_is_a_type_error_naming_it(changes, message):
    with pytest.raises(TypeError, match=message):
        RefineConfig(**changes)


@pytest.mark.parametrize(
    "field", ["learning_rate", "proximity_weight", "keep_weight", "grown_weight", "crf_weight"]
)
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_numbers_are_refused(field, value):
    with pytest.raises(ValueError, match=rf"RefineConfig\.{field} must be a finite number"):
        RefineConfig(**{field: value})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*32\), got -1"),
        ({"seed": 2**32}, r"seed must be an integer in \[0, 2\*\*32\)"),
        ({"max_iterations": 0}, r"max_iterations must be an integer >= 1, got 0"),
        ({"momentum": 1.0}, r"momentum must be a number in \[0, 1\), got 1\.0"),
        ({"optimiser": "lbfgs"}, r"optimiser must be 'sgd' or 'adam', got 'lbfgs'"),
    ],
)
def test_values_out_of_range_name_the_field_and_the_range(changes, message):
    with pytest.raises(ValueError, match=message):
        RefineConfig(**changes)


def test_numpy_scalars_are_accepted():
    config = RefineConfig(seed=np.int64(3), learning_rate=np.float32(0.5), spread=np.bool_(True))
    assert config.seed == 3 and config.learning_rate == 0.5 and config.spread


def test_a_config_cannot_be_changed_and_replace_checks_the_new_one():
    config = RefineConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.learning_rate = 1.0  # type: ignore[misc]
    changed = config.replace(learning_rate=0.3)
    assert changed.learning_rate == 0.3 and config.learning_rate == 0.01
    with pytest.raises(ValueError, match="learning_rate must be a finite number"):
        config.replace(learning_rate=float("inf"))
    with pytest.raises(TypeError, match=r"no field\(s\) \['learning_rat'\]"):
        config.replace(learning_rat=0.3)
