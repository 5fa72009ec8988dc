"""``tdn``: the command-line entry point; one subcommand per task.

Each subcommand lives in its own module with ``register(subparsers)``, which adds its
parser and sets ``func(args) -> int``. ``tdn train ...`` hands every remaining argument
to ``tdn_cli.train.main`` (Hydra parses them there), imported only when asked for.

Expected failures (a missing file, an unknown backend, a bad value, an unreadable or
newer checkpoint) print one line, ``tdn <subcommand>: error: ...``, and exit with
status 2; set ``TDN_DEBUG=1`` to get the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence

from tdn_core import TDNError

from . import __version__
from ._errors import UserError
from ._util import HelpFormatter, Parser, switch_on_triton_interpreter

# Imported by build_parser(), after main() had its chance to switch on Triton's
# interpreter: tdn_data and tdn_models import triton (through torch_geometric).
SUBCOMMAND_MODULES = ("bench", "evaluate", "fit_cp", "data", "md")

#: errors that mean bad input, not a bug: reported in one line, exit status 2
EXPECTED_ERRORS = (
    UserError,
    TDNError,  # includes tdn_models.CheckpointError and BackendUnavailable
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ValueError,
)

EPILOG = """Examples:
  tdn bench --backend cp_eager --lmax 1 2 3 --plot tp.png
  tdn fit-cp --lmax 3 --tol 0.05
  tdn data inspect embedded-tiny
  tdn eval model.pt embedded --split test
  tdn relax model.pt molecule.xyz --out relax.traj
  tdn train experiment=tiny   (Hydra overrides; see tdn train --help)
"""


def build_parser() -> Parser:
    """The ``tdn`` parser with every subcommand registered (``train`` is forwarded)."""
    parser = Parser(
        prog="tdn",
        description="TDN: tensor-decomposition equivariant networks: benchmarks, training, "
        "evaluation, CP factors, data and simulations.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tdn {__version__}")
    sub = parser.add_subparsers(title="subcommands", metavar="SUBCOMMAND", parser_class=Parser)
    # listed for --help only: main() forwards `tdn train ...` before argparse sees it
    sub.add_parser("train", help="train a model (Hydra config; see tdn train --help)")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(sub)
    return parser


def _report(prog: str, call: Callable[[], int]) -> int:
    """Run ``call``; an expected error becomes one line on stderr and exit status 2."""
    try:
        return call()
    except EXPECTED_ERRORS as exc:
        if os.environ.get("TDN_DEBUG") == "1":
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _train(argv: list[str]) -> int:
    try:
        train = importlib.import_module(f"{__package__}.train")
    except ModuleNotFoundError as exc:
        if exc.name != "tdn_cli.train":
            raise
        raise UserError("the train subcommand is not installed (no module tdn_cli.train)") from None
    return train.main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tdn`` with ``argv`` (default: the process arguments); returns the exit status."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:
        # `tdn ... | head` closed the pipe: stop quietly, as shell tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _main(argv: list[str]) -> int:
    if any(arg.rpartition("=")[2] == "cp_triton" for arg in argv):
        # without CUDA, cp_triton runs in Triton's interpreter, which is chosen when
        # triton is first imported; a failure is reported by the subcommand itself
        switch_on_triton_interpreter()
    if argv and argv[0] == "train":
        return _report("tdn train", lambda: _train(argv[1:]))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    return _report(args.prog, lambda: args.func(args))
