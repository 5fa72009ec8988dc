"""The rules of tdn_cli._schema: what each kind of value allows, the shipped configs
pass them, and the issue's bad values fail in one line naming the key."""

from __future__ import annotations

import argparse
import math

import pytest

from tdn_cli._errors import UserError
from tdn_cli._schema import TRAIN, check_config, choice, flag, integer, number
from tdn_cli.train import _resolved, compose_config


@pytest.mark.parametrize(
    ("rule", "good", "bad"),
    [
        (integer(1), [1, 7, 10**9], [0, -1, 1.5, True, "3", None, math.nan]),
        (integer(0, 8), [0, 8], [-1, 9]),
        (integer(1, nullable=True), [None, 2], [0]),
        (number(0, above=True), [1e-9, 3, 2.5], [0, -1, math.nan, math.inf, False, "1"]),
        (number(0, 1), [0, 1, 0.5], [-0.1, 1.1]),
        (flag(), [True, False], [0, 1, "true", None]),
        (choice("cpu", "cuda"), ["cpu"], ["tpu", None, 0]),
    ],
)
def test_a_rule_allows_what_it_says_and_nothing_else(rule, good, bad):
    for value in good:
        assert rule.ok(value), (rule.expected(), value)
    for value in bad:
        assert not rule.ok(value), (rule.expected(), value)


def test_an_option_is_converted_then_checked():
    assert integer(1).arg("3") == 3 and number(0).arg("0.5") == 0.5
    for text in ("0", "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"'{text}': expected an integer >= 1"):
            integer(1).arg(text)
    with pytest.raises(argparse.ArgumentTypeError, match="expected a number > 0"):
        number(0, above=True).arg("nan")


@pytest.mark.parametrize(
    "overrides",
    [[], ["experiment=tiny"], ["model=schnet"], ["model=nequip"], ["trainer=quick"],
     ["trainer/scheduler=plateau"], ["data=embedded_tiny"], ["experiment=tdn-best"]],
    ids=str,
)  # fmt: skip
def test_every_shipped_config_passes(overrides):
    check_config(_resolved(compose_config(overrides)))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_epochs=-1", "trainer.max_epochs=-1: expected an integer >= 1"),
        ("model.lmax=99", "model.lmax=99: expected an integer from 0 to 8"),
        ("trainer.batch_size=0", "trainer.batch_size=0: expected an integer >= 1"),
        ("model.cutoff=0", "model.cutoff=0: expected a number > 0"),
        ("model.channels=abc", "model.channels='abc': expected an integer >= 1"),
        ("trainer.optimizer.lr=-1e-3", "trainer.optimizer.lr=-0.001: expected a number > 0"),
        ("trainer.device=tpu", "trainer.device='tpu': expected one of auto, cpu, cuda"),
        ("model.heads=5", "model.heads=5: expected a divisor of model.channels=48"),
        ("model.rank=0", "model.rank=0: expected a positive integer or one of"),
        ("trainer.max_steps=0", "trainer.max_steps=0: expected an integer >= 1 (or null)"),
    ],
)
def test_a_bad_value_is_one_line_naming_key_value_and_what_is_allowed(override, message):
    with pytest.raises(UserError) as e:
        check_config(_resolved(compose_config([override])))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_zero_loss_is_refused():
    config = _resolved(compose_config(["trainer.energy_weight=0", "trainer.force_weight=0"]))
    with pytest.raises(UserError, match="at least one > 0"):
        check_config(config)


def _keys(node: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in node.items():
        out.add(f"{prefix}{k}")
        if isinstance(v, dict):
            out |= _keys(v, f"{prefix}{k}.")
    return out


def test_every_rule_names_a_key_of_some_shipped_config():
    from omegaconf import OmegaConf

    keys = set()
    for overrides in ([], ["model=schnet"], ["trainer/scheduler=plateau"], ["data=path"]):
        keys |= _keys(OmegaConf.to_container(compose_config(overrides), resolve=False))
    assert not set(TRAIN) - keys, f"rules for keys no config has: {set(TRAIN) - keys}"


def test_the_radial_basis_rule_lists_the_models_bases():
    # the rule is written out, so that checking a config does not import torch
    from tdn_models import RADIAL_BASES

    assert set(TRAIN["model.radial_basis"].choices) == set(RADIAL_BASES)
