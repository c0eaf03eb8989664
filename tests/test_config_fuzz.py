"""Hostile values at every config key, from YAML and from ``--set``: each one is either
accepted or answered with one line that names the key, the value and what is expected, and
never with a traceback (``doctune plan`` then reads every accepted config)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from doctune.cli import app
from doctune.config import Config, load_config, valid_keys
from doctune.errors import ConfigError

HOSTILE: list[Any] = [
    "abc", "", " ", -1, -5, 0, 10**30, -(10**30), 1e400, float("nan"), float("inf"), -0.0,
    [1, 2], [], {"a": 1}, True, None, "12", "1e-3", "nan", "../../etc", "\x00", "é" * 300,
]
"""Wrong types, negative sizes, empty strings, huge numbers, NaN and infinities."""

_RUNNER = CliRunner()
_SEEN: dict[str, int] = {"cases": 0, "accepted": 0, "refused": 0}


def _as_set(key: str, value: Any) -> str:
    """``value`` as a user types it after ``--set key=``."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{key}={'.nan' if math.isnan(value) else ('.inf' if value > 0 else '-.inf')}"
    if isinstance(value, str):
        return f"{key}={value}"
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


def _check_refusal(error: ConfigError, key: str) -> None:
    text = str(error)
    assert "\n" not in text, text  # one line
    assert f"`{key}`" in text or f"`{key.split('.')[0]}`" in text, text  # names the key
    assert re.search(r"\(got .*\)|got '|must |should |at least|Did you mean", text), text


def _check(key: str, make: Any) -> None:
    _SEEN["cases"] += 1
    try:
        cfg = make()
    except ConfigError as e:
        _SEEN["refused"] += 1
        _check_refusal(e, key)
        return
    assert isinstance(cfg, Config)
    _SEEN["accepted"] += 1


@pytest.mark.parametrize("key", valid_keys())
def test_every_key_refuses_hostile_values_in_one_line(key: str, tmp_path: Path) -> None:
    section, name = key.split(".", 1)
    for value in HOSTILE:
        _check(key, lambda v=value: load_config(None, [_as_set(key, v)]))
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({section: {name: value}}), encoding="utf-8")
        _check(key, lambda p=path: load_config(p))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(valid_keys()),
       value=st.one_of(st.integers(), st.floats(), st.text(max_size=20), st.booleans(), st.none(),
                       st.lists(st.integers(), max_size=3)))
def test_random_values_then_plan_never_crash(key: str, value: Any) -> None:
    res = _RUNNER.invoke(app, ["plan", "--set", _as_set(key, value), "--device", "cpu"])
    assert res.exit_code in (0, 2), (key, value, res.output, res.exception)
    assert "Traceback" not in res.output
    if res.exit_code == 2:
        errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    _SEEN["cases"] += 1


def test_zz_report_how_many_cases_ran() -> None:
    """Runs last in this file (pytest keeps file order): prints the totals for the record."""
    print(f"config fuzz: {_SEEN['cases']} cases, {_SEEN['accepted']} accepted, "
          f"{_SEEN['refused']} refused with a one-line error")
    if _SEEN["refused"]:
        assert _SEEN["refused"] > _SEEN["accepted"]
