"""``tdn bench``: the tensor-product benchmark (or, with ``--model``, the full network).

Times the chosen backends and the peers (``path_shared``, ``e3nn``, ``cueq``) in one run
on one machine, so their ratios are comparable even where absolute times are noisy, and
checks each product's accuracy: relative error against the exact ``cg`` result and the
measured equivariance error next to the factor set's certified bound (float64, on a
small problem). ``benchmarks/bench_tp.py`` and ``benchmarks/bench_models.py`` run this.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

import torch

from tdn_core import (
    TensorProduct,
    TPDescriptor,
    UnsupportedDescriptor,
    available_backends,
    resolve_rank,
)
from tdn_core._autotune import select_backend
from tdn_core.testing import equivariance_error, random_inputs, random_rotation

from ._errors import UserError
from ._schema import LMAX, POSITIVE, SECONDS
from ._schema import device as check_device
from ._timing import interleaved_medians_ms, median_ms
from ._util import (
    add_command,
    cpu_name,
    parse_rank,
    progress,
    switch_on_triton_interpreter,
    write_json,
)

#: exact peers: the precontracted dense product, the nonzero walk, e3nn, cuequivariance
PEERS = ("path_shared", "sparse", "e3nn", "cueq")
#: --model compares the network against its exact twins (e3nn/cueq run only if asked)
MODEL_PEERS = ("cg", "path_shared")
#: size of the float64 accuracy check (and of cp_triton's interpreted run on a CPU)
CHECK_EDGES, CHECK_CHANNELS = 16, 8
DEFAULT_LMAX, DEFAULT_MODEL_LMAX = [1, 2, 3, 4, 5, 6], [1, 2, 4]
GPU_NOTE = (
    "cp_triton: timings need a CUDA GPU; on this CPU only its correctness is checked, "
    f"through the Triton interpreter (E={CHECK_EDGES}, C={CHECK_CHANNELS}, float64)"
)

EXAMPLES = """Examples:
  tdn bench --backend cp_eager                       # and the peers, L = 1..6
  tdn bench --backend all --lmax 1 2 --edges 1000 --json tp.json --plot tp.png
  tdn bench --backend auto --lmax 4 --mode uuu   # every backend, and what 'auto' picks
  tdn bench --backend all --lmax 1 2 3 4 5 6 7 8 --max-seconds 5  # drop slow ones early
  tdn bench --backend cp_triton --device cuda --dtype float16
  tdn bench --model --backend cp_eager --lmax 1 2    # training step and inference
  tdn bench --model --backend cp_eager --lmax 1 --compile  # eager and torch.compile
"""


def register(sub: argparse._SubParsersAction) -> None:
    summary = "benchmark tensor-product backends against the peers"
    p = add_command(sub, "bench", summary, __doc__.split("\n\n")[0], EXAMPLES, run)
    p.add_argument(
        "--backend",
        "--backends",
        dest="backends",
        nargs="+",
        default=["all"],
        metavar="NAME",
        help="backends to run, or 'all' (every usable one), or 'auto' (all, then what "
        "backend='auto' picks, checked against the table); the peers always run too",
    )
    p.add_argument(
        "--lmax", type=LMAX.arg, nargs="+", help="degrees L (default 1..6; --model 1 2 4)"
    )
    p.add_argument("--edges", type=POSITIVE.arg, default=4000, help="edges E per product")
    p.add_argument("--channels", type=POSITIVE.arg, default=64, help="channels C")
    p.add_argument(
        "--dtype", choices=["float32", "float64", "float16", "bfloat16"], default="float32"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--mode", choices=["uvu", "uuu"], default="uvu", help="product mode")
    p.add_argument(
        "--rank",
        type=parse_rank,
        default="quadratic",
        help="CP rank: an int, 'linear', 'quadratic' or 'full'",
    )
    p.add_argument("--repeats", type=POSITIVE.arg, default=7, help="timed calls (median) per case")
    p.add_argument(
        "--max-seconds",
        type=SECONDS.arg,
        metavar="S",
        help="skip a backend at larger L once its forward+backward took over S seconds",
    )
    p.add_argument("--model", action="store_true", help="benchmark the full TDN network")
    p.add_argument(
        "--molecules", type=POSITIVE.arg, default=16, help="--model: molecules per batch"
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="--model: also time each backend under TDN.compile() (minutes to compile)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")
    p.add_argument("--plot", metavar="FILE.png", help="also draw time against L (log-log)")


# ------------------------------------------------------------------------ backends


def choose_backends(
    requested: Sequence[str], peers: Sequence[str] = PEERS
) -> tuple[list[str], list[str]]:
    """(backends to run: the requested ones then the usable peers, notes on skipped peers).

    Raises:
        UserError: an unknown name (the message lists the registered ones) or a
            requested backend that cannot run here (with the reason).
    """
    status = available_backends()
    for name in requested:
        if name != "all" and name not in status:
            raise UserError(
                f"--backend: unknown backend {name!r}; registered backends: "
                f"{', '.join(status)} (or 'all')"
            )
    if "all" in requested:
        chosen = [n for n, why in status.items() if why is None]
    else:
        chosen = list(dict.fromkeys(requested))
        for name in chosen:
            if status[name] is not None:
                raise UserError(f"--backend: {status[name]}")
    notes = []
    for peer in peers:
        if peer not in chosen and peer in status:
            if status[peer] is None:
                chosen.append(peer)
            else:
                notes.append(f"peer skipped: {status[peer]}")
    return chosen, notes


# ------------------------------------------------------------------------- measure


#: size of the square fp32 matmul that measures the machine's rate
MATMUL_N = 1024


def square_matmul(device: torch.device) -> Callable[[], object]:
    """One [n, n] @ [n, n] fp32 product (n = ``MATMUL_N``): 2 n^3 FLOP per call."""
    a, b = (
        torch.randn(MATMUL_N, MATMUL_N, device=device),
        torch.randn(MATMUL_N, MATMUL_N, device=device),
    )
    return lambda: a @ b


def gflops_of(ms: float) -> float:
    """GFLOP/s of a ``square_matmul`` call that took ``ms`` milliseconds."""
    return 2 * MATMUL_N**3 / (ms * 1e-3) / 1e9


def matmul_gflops(device: torch.device, repeats: int = 3) -> float:
    """This machine's fp32 matmul rate (GFLOP/s), the practical ceiling of any backend."""
    return gflops_of(median_ms(square_matmul(device), repeats, device=device))


def _product(name: str, L: int, channels: int, mode: str, rank, dtype, device) -> TensorProduct:
    tp = TensorProduct(L, L, L, channels, backend=name, mode=mode, rank=rank)
    return tp.to(dtype=dtype, device=device)


def _no_grad_call(tp: TensorProduct, *inputs: torch.Tensor):
    def call():
        with torch.no_grad():
            tp(*inputs)

    return call


def time_product(
    name: str, L: int, edges: int, channels: int, mode: str, rank, dtype, device, repeats: int
) -> dict:
    """Forward, forward+backward (gradients of x, y and the weight) and double backward
    (the force-training pattern) medians, ms, of one backend's edge product on Gaussian
    inputs; for a CP backend also its factored FLOP
    count (GFLOP), the forward of its factored order (cp_eager's ``order``) and the
    matmul rate (GFLOP/s), timed in turn, so that the fraction of the rate it reaches
    does not depend on when the load changed."""
    tp = _product(name, L, channels, mode, rank, dtype, device)
    x, y, w = (t.to(device) for t in random_inputs(tp.descriptor, edges, dtype))
    xg, yg, wg = (t.clone().requires_grad_(True) for t in (x, y, w))
    grad_out = torch.randn_like(tp(x, y, w))

    forward = _no_grad_call(tp, x, y, w)

    def forward_backward():
        torch.autograd.grad(tp(xg, yg, wg), (xg, yg, wg), grad_out)

    def double_backward():
        # force training: a gradient with create_graph (y: the edge harmonics, through
        # which positions enter), then a backward through it (to x and the weight)
        (gy,) = torch.autograd.grad(tp(xg, yg, wg), yg, grad_out, create_graph=True)
        torch.autograd.grad(gy.square().sum(), (xg, wg))

    # few repeats for slow backends: the run time is bounded by the slowest, not the count
    probe = median_ms(forward_backward, 1, warmup=1, device=device)
    reps = max(1, min(repeats, int(20_000 / max(probe, 1e-3))))
    row: dict = {"repeats": reps}
    if tp.factors is None:
        row["forward_ms"] = median_ms(forward, reps, device=device)
    else:
        # cp_eager may run the dense order (fewer FLOPs); the GEMM rate is the factored
        # order's, on the factored FLOP count, from a second product when they differ.
        # Where its factored forward runs the fused CPU kernel, a third product times
        # the same order in PyTorch ops: what the kernel buys on this machine.
        fns = [forward, square_matmul(device)]
        variants = {}  # row key -> cp_eager settings of a product timed in turn
        executor = tp.executor
        if hasattr(executor, "order"):
            row["order"] = executor.resolved_order()
            row["cpu_kernel"] = executor.uses_cpu_kernel(x)  # in the factored order
            if row["order"] != "factored":
                variants["factored_forward_ms"] = {"order": "factored"}
            if row["cpu_kernel"]:
                variants["factored_ops_forward_ms"] = {"order": "factored", "cpu_kernel": False}
        for settings in variants.values():
            variant = _product(name, L, channels, mode, rank, dtype, device)
            for attr, value in settings.items():
                setattr(variant.executor, attr, value)
            fns.append(_no_grad_call(variant, x, y, w))
        fwd_ms, mm_ms, *rest = interleaved_medians_ms(fns, reps, device=device)
        row.update(dict(zip(variants, rest, strict=True)))
        row.setdefault("factored_forward_ms", fwd_ms)
        row.update(
            forward_ms=fwd_ms,
            cp_gflop=tp.descriptor.flops("cp", edges) / 1e9,
            matmul_gflops=gflops_of(mm_ms),
        )
    row["forward_backward_ms"] = median_ms(forward_backward, reps, device=device)
    row["double_backward_ms"] = median_ms(double_backward, reps, warmup=1, device=device)
    return row


def check_product(name: str, L: int, mode: str, rank, device: torch.device) -> dict:
    """Accuracy in float64 on a small problem: ``output_rel_error`` against the exact
    ``cg`` product, ``equivariance_error`` under a random rotation (normalized like the
    bound), and the factor set's ``rank``, ``rel_error`` and ``bound`` (0 when exact)."""
    gen = torch.Generator().manual_seed(L)
    tp = _product(name, L, CHECK_CHANNELS, mode, rank, torch.float64, device)
    ref = _product("cg", L, CHECK_CHANNELS, mode, rank, torch.float64, device)
    cpu_inputs = random_inputs(tp.descriptor, CHECK_EDGES, torch.float64, generator=gen)
    x, y, w = (t.to(device) for t in cpu_inputs)
    with torch.no_grad():
        exact = ref(x, y, w)
        err = float((tp(x, y, w) - exact).norm() / exact.norm())
        R = random_rotation(torch.float64, generator=gen).to(device)
        equi = equivariance_error(tp, tp.descriptor, x, y, w, R)
    f = tp.factors
    return {
        "rank": None if f is None else f.rank,
        "rel_error": 0.0 if f is None else f.rel_error,
        "bound": 0.0 if f is None else f.bound,
        "output_rel_error": err,
        "equivariance_error": equi,
    }


# --------------------------------------------------------------------------- report


def _add_ratios(group: list[dict]) -> None:
    """Speed ratios against each peer (peer time / backend time) and the GEMM rate."""
    timed = {r["backend"]: r for r in group if r.get("forward_ms") is not None}
    for r in timed.values():
        for peer in PEERS:
            if peer in timed:
                base = timed[peer]
                r[f"speedup_vs_{peer}_fb"] = base["forward_backward_ms"] / r["forward_backward_ms"]
                r[f"speedup_vs_{peer}_fwd"] = base["forward_ms"] / r["forward_ms"]
        for ms, fraction in (
            ("factored_forward_ms", "fraction_of_matmul_rate"),
            ("factored_ops_forward_ms", "ops_fraction_of_matmul_rate"),
        ):
            if ms in r:
                r[fraction] = r["cp_gflop"] / (r[ms] * 1e-3) / r["matmul_gflops"]


def _cell(value: float | None, width: int, spec: str = ".2f", suffix: str = "") -> str:
    text = "-" if value is None else f"{value:{spec}}{suffix}"
    return f"{text:>{width}}"


def format_table(rows: list[dict], peers: list[str]) -> str:
    """The benchmark table: medians (ms), forward+backward speed ratio against each peer,
    the GEMM rate of CP backends, output error, equivariance error and bound."""
    head = f"{'L':>2} {'backend':<12} {'fwd ms':>9} {'fwd+bwd ms':>10} {'dbl-bwd ms':>10}"
    head += "".join(f" {'x ' + p:>13}" for p in peers)
    head += f" {'GEMM rate':>9} {'ops rate':>8} {'rel err':>8} {'equi err':>8} {'bound':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        frac, ops = r.get("fraction_of_matmul_rate"), r.get("ops_fraction_of_matmul_rate")
        cells = [
            f"{r['L']:>2} {r['backend']:<12}",
            _cell(r.get("forward_ms"), 9),
            _cell(r.get("forward_backward_ms"), 10),
            _cell(r.get("double_backward_ms"), 10),
            *(_cell(r.get(f"speedup_vs_{p}_fb"), 13, ".2f", "x") for p in peers),
            _cell(None if frac is None else 100 * frac, 9, ".0f", "%"),
            _cell(None if ops is None else 100 * ops, 8, ".0f", "%"),
            *(_cell(r[k], 8, ".1e") for k in ("output_rel_error", "equivariance_error", "bound")),
        ]
        lines.append(" ".join(cells))
    return "\n".join(lines)


def _machine(device: torch.device, gflops: float) -> dict:
    return {
        "processor": cpu_name(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "matmul_gflops": gflops,
    }


def _model_label(row: dict) -> str:
    return f"{row['backend']} (compiled)" if row.get("compiled") else row["backend"]


def _plot(path: str, rows: list[dict], key: str, ylabel: str, title: str) -> None:
    from ._plots import loglog_lines

    series: dict[str, tuple[list, list]] = {}
    for r in rows:
        if r.get(key) is not None:
            xs, ys = series.setdefault(_model_label(r), ([], []))
            xs.append(r["L"])
            ys.append(r[key])
    loglog_lines(path, series, xlabel="L (lmax)", ylabel=ylabel, title=title)


# ------------------------------------------------------------------------------ run


def run(args: argparse.Namespace) -> int:
    """Run ``tdn bench`` (see the module doc); returns the exit status."""
    device = check_device(args.device, "--device")
    if "cp_triton" in args.backends and device.type == "cpu" and not args.model:
        print(GPU_NOTE, flush=True)
        if not switch_on_triton_interpreter():
            raise UserError(
                "cp_triton: triton was imported before its interpreter could be switched "
                "on; run with TRITON_INTERPRET=1 set in the environment"
            )
    if "auto" in args.backends and args.model:
        raise UserError("--backend auto: compares products only; drop --model")
    requested = ["all" if b == "auto" else b for b in args.backends]
    backends, notes = choose_backends(requested, MODEL_PEERS if args.model else PEERS)
    for note in notes:
        print(note, file=sys.stderr)
    if args.model:
        return _run_model(args, backends, device)
    return _run_products(args, backends, device)


def _run_products(args: argparse.Namespace, backends: list[str], device: torch.device) -> int:
    dtype = getattr(torch, args.dtype)
    lmaxes = args.lmax or DEFAULT_LMAX
    # cp_triton's timings on a CPU would time Triton's interpreter: check it only
    untimed = {"cp_triton"} if device.type == "cpu" else set()
    gflops = matmul_gflops(device)
    machine = _machine(device, gflops)
    print(
        f"machine: {machine['processor']} ({machine['device']}), {machine['threads']} threads, "
        f"torch {torch.__version__}; fp32 matmul {gflops:.0f} GFLOP/s\n"
        f"E={args.edges} edges, C={args.channels} channels, {args.dtype}, mode {args.mode}, "
        f"rank {args.rank!r}; medians in ms; errors in float64 on E={CHECK_EDGES}, "
        f"C={CHECK_CHANNELS}",
        flush=True,
    )
    rows: list[dict] = []
    skipped: set[str] = set()
    too_slow: set[str] = set()  # --max-seconds
    cases = [(L, name) for L in lmaxes for name in backends]
    for L, name in progress(cases, "bench"):
        if name in skipped or name in too_slow:
            continue
        try:
            row = {"backend": name, "L": L, **check_product(name, L, args.mode, args.rank, device)}
        except UnsupportedDescriptor as exc:
            if name in args.backends:  # asked for by name (not a peer, not 'all')
                raise
            print(f"skipped: {exc}", file=sys.stderr)
            skipped.add(name)
            continue
        if name not in untimed:
            timing = time_product(
                name,
                L,
                args.edges,
                args.channels,
                args.mode,
                args.rank,
                dtype,
                device,
                args.repeats,
            )
            row.update(timing)
            if (
                args.max_seconds is not None
                and timing["forward_backward_ms"] > 1e3 * args.max_seconds
            ):
                print(
                    f"{name}: forward+backward {timing['forward_backward_ms'] / 1e3:.1f} s at "
                    f"L={L}, over --max-seconds {args.max_seconds:g}: not timed at larger L",
                    file=sys.stderr,
                )
                too_slow.add(name)
        rows.append(row)
    for L in lmaxes:
        _add_ratios([r for r in rows if r["L"] == L])
    peers = [p for p in PEERS if any(r["backend"] == p and "forward_ms" in r for r in rows)]
    print(format_table(rows, peers))
    above = [r for r in rows if r["equivariance_error"] > r["bound"] + 1e-9]
    for r in above:
        print(f"warning: {r['backend']} at L={r['L']}: equivariance error above its bound")
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "prog")}
    payload = {"machine": machine, "settings": settings, "results": rows}
    if "auto" in args.backends:
        payload["auto"] = [
            check_auto(rows, L, args.edges, args.channels, args.mode, args.rank, dtype, device)
            for L in lmaxes
        ]
        print(format_auto(payload["auto"]))
    if args.json:
        write_json(args.json, payload)
        print(f"wrote {args.json}")
    if args.plot:
        title = f"edge product, E={args.edges}, C={args.channels}, {args.dtype}, forward+backward"
        _plot(args.plot, rows, "forward_backward_ms", "forward+backward (ms)", title)
        print(f"wrote {args.plot}")
    return 1 if above else 0


def check_auto(
    rows: list[dict], L: int, edges: int, channels: int, mode: str, rank, dtype, device
) -> dict:
    """What ``backend="auto"`` (exact policy, tuned for ``edges`` edges) picks at ``L``,
    timed on its own, next to the fastest exact backend of this run's table
    (forward+backward)."""
    desc = TPDescriptor(L, L, L, channels, mode, rank=resolve_rank(rank, L, L, L))
    chose = select_backend(desc, dtype, device, edges=edges)
    exact = {
        r["backend"]: r["forward_backward_ms"]
        for r in rows
        if r["L"] == L and r["rank"] is None and r.get("forward_backward_ms") is not None
    }
    fastest = min(exact, key=exact.__getitem__) if exact else None
    chose_ms = exact.get(chose)
    within = None if chose_ms is None or fastest is None else chose_ms <= 1.1 * exact[fastest]
    return {
        "L": L,
        "chose": chose,
        "chose_ms": chose_ms,
        "table_fastest": fastest,
        "table_fastest_ms": None if fastest is None else exact[fastest],
        "within_10_percent": within,
    }


def format_auto(checks: list[dict]) -> str:
    lines = ["backend='auto' (exact policy) against this table's fastest exact backend:"]
    for c in checks:
        verdict = {True: "within 10%", False: "MORE than 10% slower", None: "not in table"}
        lines.append(
            f"  L={c['L']}: auto picks {c['chose']}; table's fastest {c['table_fastest']} "
            f"({_cell(c['table_fastest_ms'], 0)} ms, auto's pick {_cell(c['chose_ms'], 0)} ms): "
            f"{verdict[c['within_10_percent']]}"
        )
    return "\n".join(lines)


def _run_model(args: argparse.Namespace, backends: list[str], device: torch.device) -> int:
    from tdn_models._malloc import retain_freed_memory

    from ._bench_model import MODEL_DESCRIPTION, bench_model, reference_batch

    retain_freed_memory()  # page faults cost ~20 % of a CPU training step otherwise
    if device.type == "cpu" and "cp_triton" in backends:
        print("cp_triton skipped: its model timings need a CUDA GPU", file=sys.stderr)
        backends = [b for b in backends if b != "cp_triton"]
    ds, batch = reference_batch(args.molecules)
    source = [ds[i] for i in range(0, len(ds), 20)]
    print(
        f"batch: {batch.num_graphs} molecules, {batch.num_nodes} atoms; {MODEL_DESCRIPTION}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )
    head = f"{'L':>2} {'backend':<22} {'train ms':>10} {'infer ms':>10} {'train atoms/s':>14}"
    head += f" {'infer atoms/s':>14}"
    print(head)
    rows = []
    compiled = (False, True) if args.compile else (False,)
    cases = [
        (L, b, c) for L in (args.lmax or DEFAULT_MODEL_LMAX) for b in backends for c in compiled
    ]
    for L, backend, compile in progress(cases, "bench --model"):
        r = bench_model(backend, L, batch, source, args.repeats, device, compile)
        rows.append(r)
        print(
            f"{L:>2} {_model_label(r):<22} {r['train_step_ms']:>10.1f} {r['inference_ms']:>10.1f} "
            f"{r['train_atoms_per_s']:>14.0f} {r['inference_atoms_per_s']:>14.0f}",
            flush=True,
        )
    if args.json:
        meta = {
            "machine": cpu_name(),
            "device": str(device),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "atoms": batch.num_nodes,
            "molecules": batch.num_graphs,
            "model": MODEL_DESCRIPTION,
        }
        write_json(args.json, {"meta": meta, "results": rows})
        print(f"wrote {args.json}")
    if args.plot:
        title = f"TDN training step, {batch.num_nodes} atoms"
        _plot(args.plot, rows, "train_step_ms", "training step (ms)", title)
        print(f"wrote {args.plot}")
    return 0
