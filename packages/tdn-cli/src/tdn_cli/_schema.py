"""The rules every ``tdn`` config value and option meets, checked before any work starts.

One :class:`Rule` says what a value may be (its type, range or choices); the same rule
serves a Hydra key of ``tdn train`` (:func:`check_config`, through :data:`TRAIN`) and a
command-line option of the other subcommands (``type=rule.arg`` in argparse). A value
that breaks its rule is one :class:`UserError` line, ``<key>=<value>: expected <what>``,
and ``tdn`` exits with status 2 before it has read a file or built a model.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from tdn_core._wigner3j_generator import LMAX_TABLE

from ._errors import UserError

__all__ = [
    "LMAX",
    "POSITIVE",
    "SECONDS",
    "TRAIN",
    "Rule",
    "check_config",
    "choice",
    "flag",
    "integer",
    "number",
]


@dataclass(frozen=True)
class Rule:
    """What one value may be.

    kind: ``"int"``, ``"float"`` (ints accepted), ``"bool"`` or ``"choice"``;
    low, high: the inclusive range (``None``: unbounded); ``open_low``: ``> low``;
    choices: the allowed values of a ``"choice"``; nullable: ``None`` is allowed.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    choices: tuple = ()
    nullable: bool = False

    def expected(self) -> str:
        """The allowed values in words: ``an integer >= 1``, ``one of cpu, cuda``..."""
        if self.kind == "choice":
            text = f"one of {', '.join(map(str, self.choices))}"
        elif self.kind == "bool":
            text = "true or false"
        else:
            text = "an integer" if self.kind == "int" else "a number"
            if self.low is not None and self.high is not None and not self.open_low:
                text += f" from {_num(self.low)} to {_num(self.high)}"
            else:
                if self.low is not None:
                    text += f" {'>' if self.open_low else '>='} {_num(self.low)}"
                if self.high is not None:
                    text += f" <= {_num(self.high)}"
        return text + (" (or null)" if self.nullable else "")

    def ok(self, value: Any) -> bool:
        """Whether ``value`` (as parsed: YAML or the option's text converted) is allowed."""
        if value is None:
            return self.nullable
        if self.kind == "choice":
            return value in self.choices
        if self.kind == "bool" or isinstance(value, bool):
            return self.kind == "bool" and isinstance(value, bool)
        if self.kind == "int" and not isinstance(value, int):
            return False
        if not isinstance(value, int | float) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or value <= self.high

    def check(self, key: str, value: Any) -> None:
        """Raise :class:`UserError` ``key=value: expected ...`` unless ``value`` is allowed."""
        if not self.ok(value):
            raise UserError(f"{key}={_show(value)}: expected {self.expected()}")

    def arg(self, text: str) -> Any:
        """argparse ``type=``: the option's text converted and checked (argparse names
        the option in its one-line error)."""
        value: Any = text
        try:
            if self.kind == "int":
                value = int(text)
            elif self.kind == "float":
                value = float(text)
        except ValueError:
            pass  # not a number: reported as such below
        if not self.ok(value):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {self.expected()}")
        return value


def integer(low: int | None = None, high: int | None = None, nullable: bool = False) -> Rule:
    return Rule("int", low, high, nullable=nullable)


def number(
    low: float | None = None, high: float | None = None, *, above: bool = False,
    nullable: bool = False,
) -> Rule:  # fmt: skip
    """A real number in [low, high]; ``above=True``: strictly greater than ``low``."""
    return Rule("float", low, high, open_low=above, nullable=nullable)


def choice(*options: Any) -> Rule:
    return Rule("choice", choices=options)


def flag() -> Rule:
    return Rule("bool")


def device(name: str, key: str):
    """The torch device ``name`` (``auto``: CUDA where torch sees it, else the CPU),
    checked to exist here; ``key`` names the option or config key in the error."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"{key}={_show(name)}: expected a torch device (cpu, cuda, cuda:1...)"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key}={_show(name)}: asked for, but torch sees no CUDA device here")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"{key}={_show(name)}: expected cpu or cuda (tdn runs on nothing else)")
    return dev


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _show(value: Any) -> str:
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value)


POSITIVE = integer(1)
LENGTH = number(0, above=True)  # Å
SECONDS = number(0, above=True)
#: degrees the CG table reaches: above it, e3nn computes blocks and CP factors are
#: fitted at start-up, for minutes to hours (the library API still allows it)
LMAX = integer(0, LMAX_TABLE)
#: ``tdn train``'s keys (dotted, in the resolved config) and their rules; a key a model
#: or scheduler does not have is not checked
TRAIN: dict[str, Rule] = {
    "seed": integer(0),
    "resume": flag(),
    "trainer.max_epochs": POSITIVE,
    "trainer.max_steps": integer(1, nullable=True),
    "trainer.batch_size": POSITIVE,
    "trainer.energy_weight": number(0),
    "trainer.force_weight": number(0),
    "trainer.grad_clip": number(0, above=True, nullable=True),
    "trainer.ema_decay": number(0, 1),  # 0: no averaging
    "trainer.checkpoint_every": POSITIVE,
    "trainer.device": choice("auto", "cpu", "cuda"),
    "trainer.dtype": choice("float32", "float64"),
    "trainer.compile": flag(),
    "trainer.num_workers": integer(0),
    "trainer.progress": flag(),
    "trainer.optimizer.lr": number(0, above=True),
    "trainer.optimizer.weight_decay": number(0),
    "trainer.scheduler.warmup_steps": integer(0),
    "trainer.scheduler.min_factor": number(0, 1),
    "trainer.scheduler.factor": number(0, 1, above=True),
    "trainer.scheduler.patience": integer(0),
    "trainer.scheduler.min_lr": number(0),
    "model.lmax": LMAX,
    "model.channels": POSITIVE,
    "model.layers": POSITIVE,
    "model.heads": POSITIVE,
    "model.cutoff": LENGTH,
    "model.num_basis": POSITIVE,
    "model.radial_hidden": POSITIVE,
    "model.avg_neighbors": number(0, above=True),
    "model.max_neighbors": integer(1, nullable=True),
    "model.direct_forces": flag(),
    "model.radial_basis": choice("bessel", "gaussian"),  # tdn_models.RADIAL_BASES
    "model.zbl": flag(),
    "model.hidden_channels": POSITIVE,
    "model.num_filters": POSITIVE,
    "model.num_interactions": POSITIVE,
    "model.num_gaussians": POSITIVE,
    "data.max_train_samples": integer(1, nullable=True),
    "data.max_val_samples": integer(1, nullable=True),
    "data.val_fraction": number(0, 1, above=True),
}


def _get(config: dict, key: str) -> tuple[bool, Any]:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def check_config(config: dict, rules: dict[str, Rule] = TRAIN) -> None:
    """Check the resolved ``config`` against ``rules``, then the combinations of values.

    Raises:
        UserError: the first value or combination that is not allowed, in one line.
    """
    for key, rule in rules.items():
        present, value = _get(config, key)
        if present:
            rule.check(key, value)
    model, trainer = config.get("model", {}), config.get("trainer", {})
    if "heads" in model and model["channels"] % model["heads"]:
        raise UserError(
            f"model.heads={model['heads']}: expected a divisor of model.channels="
            f"{model['channels']} (each head takes channels / heads)"
        )
    if "rank" in model:
        rank = model["rank"]
        if isinstance(rank, bool) or not (
            (isinstance(rank, int) and rank >= 1) or rank in ("linear", "quadratic", "full")
        ):
            raise UserError(
                f"model.rank={_show(rank)}: expected a positive integer or one of "
                "linear, quadratic, full"
            )
    if model.get("direct_forces") and model.get("lmax", 1) < 1:
        raise UserError("model.direct_forces=true: expected model.lmax >= 1 (forces are l = 1)")
    if trainer.get("energy_weight") == 0 and trainer.get("force_weight") == 0:
        raise UserError(
            "trainer.energy_weight=0 and trainer.force_weight=0: expected at least one > 0 "
            "(the loss would be zero)"
        )
