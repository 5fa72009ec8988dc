"""``tdn fit-cp``: fit (or find) the CP factor set of the path-summed CG tensor and store it.

Looks in the shipped files and the user cache first (``$TDN_CACHE_DIR``, else
``~/.cache/tdn``), fits by ALS otherwise and writes the result into the user cache,
where every later ``TensorProduct`` with the same degrees and rank finds it. Prints the
relative Frobenius error ``||M - M_R|| / ||M||`` and the certified equivariance bound.
"""

from __future__ import annotations

import argparse
import time

from tdn_core import cp_factors
from tdn_core._factors import _file_name, _shipped_dir, default_cache_dir

from ._schema import LMAX, number
from ._util import add_command, parse_rank, write_json

EXAMPLES = """Examples:
  tdn fit-cp --lmax 3                      # rank 7 L^2 ("quadratic")
  tdn fit-cp --lmax 2 --rank 20
  tdn fit-cp --lmax 4 --tol 0.05           # smallest rank with rel. error <= 0.05
  TDN_CACHE_DIR=/scratch/tdn tdn fit-cp --lmax 2 --lmax-sh 1 --rank full --group O3
"""


def register(sub: argparse._SubParsersAction) -> None:
    summary = "fit and store a CP factor set; print its error and bound"
    p = add_command(sub, "fit-cp", summary, __doc__.split("\n\n")[0], EXAMPLES, run)
    p.add_argument(
        "--lmax", type=LMAX.arg, required=True, help="degree L of every input and output"
    )
    p.add_argument("--lmax-sh", type=LMAX.arg, help="degree of the second input (default --lmax)")
    p.add_argument("--lmax-out", type=LMAX.arg, help="degree of the output (default --lmax)")
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--rank",
        type=parse_rank,
        default="quadratic",
        help="an int, 'linear' (7L), 'quadratic' (7L^2) or 'full' (exact)",
    )
    how.add_argument(
        "--tol", type=number(0, 1, above=True).arg, help="smallest rank with relative error <= TOL"
    )
    p.add_argument("--group", choices=["SO3", "O3"], default="SO3")
    p.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")


def _location(key: tuple) -> str:
    """Where the factor set of ``key`` = (group, l1, l2, l3, rank) is stored now."""
    name = _file_name(key)
    if _shipped_dir().joinpath(name).is_file():
        return f"shipped with tdn-core ({name})"
    user = default_cache_dir() / "cp" / name
    return str(user) if user.is_file() else "not stored (the cache directory is not writable)"


def run(args: argparse.Namespace) -> int:
    """Run ``tdn fit-cp``; returns the exit status."""
    l1 = args.lmax
    l2 = l1 if args.lmax_sh is None else args.lmax_sh
    l3 = l1 if args.lmax_out is None else args.lmax_out
    t0 = time.perf_counter()
    f = cp_factors(l1, l2, l3, args.rank, args.group, tol=args.tol)
    seconds = time.perf_counter() - t0
    where = _location((f.group, l1, l2, l3, f.rank))
    print(
        f"group {f.group}, lmax (in, sh, out) = ({l1}, {l2}, {l3}), dims {f.dims}, "
        f"rank {f.rank} ({f.method})\n"
        f"rel_error ||M - M_R||/||M||: {f.rel_error:.4e}\n"
        f"equivariance bound 2||E_(3)||_2: {f.bound:.4e}\n"
        f"source: {f.source} ({seconds:.1f} s); stored: {where}"
    )
    if args.json:
        write_json(
            args.json,
            {
                "group": f.group,
                "lmax_in": l1,
                "lmax_sh": l2,
                "lmax_out": l3,
                "rank": f.rank,
                "method": f.method,
                "rel_error": f.rel_error,
                "bound": f.bound,
                "tol": f.tol,
                "source": f.source,
                "stored": where,
            },
        )
    return 0
