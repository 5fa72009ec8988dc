"""``tdn eval``: energy and force errors of a checkpoint on a dataset, per split.

Reads the data through ``tdn_data.load_dataset`` (the embedded sets, PubChemQCR or OC20
LMDBs, QM9, or any file ASE reads, such as extxyz). Sources with splits (PubChemQCR-style
shards) are evaluated per split, others as one set ``all``. Prints energy MAE and RMSE
per atom (meV/atom) and per structure (meV), force-component MAE and RMSE (meV/Å), the
force tail per atom (p99, p99.9, worst), the force errors per element and against the
distance to each atom's nearest neighbour (close contacts are where potentials fail),
and draws parity plots and the per-atom error against that distance (PNG).
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from tdn_data import PubChemQCRDataset, QM9Dataset, load_dataset
from tdn_data.graphs import batch_radius_graph
from tdn_models import StructureError, check_graphs, load_checkpoint

from ._errors import UserError
from ._schema import POSITIVE
from ._schema import device as check_device
from ._util import add_command, existing_file, progress, write_json

EXAMPLES = """Examples:
  tdn eval model.pt embedded                       # train, val and test splits
  tdn eval model.pt embedded --split test --backend path_shared --plot test_parity.png
  tdn eval model.pt frames.extxyz --json errors.json
  tdn eval model.pt md17_aspirin.extxyz --energy-unit kcal/mol   # MD17 stores kcal/mol
  tdn eval model.pt iso17.db --energy-key total_energy --forces-key atomic_forces
"""


def register(sub: argparse._SubParsersAction) -> None:
    summary = "energy/force errors of a checkpoint on a dataset, with parity plots"
    p = add_command(sub, "eval", summary, __doc__.split("\n\n")[0], EXAMPLES, run)
    p.add_argument("checkpoint", help="a file written by tdn train / tdn_models.save_checkpoint")
    p.add_argument("data", help="dataset name (embedded, embedded-tiny, qm9) or path")
    p.add_argument(
        "--split",
        choices=["train", "val", "test", "all"],
        help="one split only (default: every split the source has)",
    )
    p.add_argument("--backend", help="tensor-product backend (default: the checkpoint's)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        help="run the model in this dtype (default: the checkpoint's own)",
    )
    p.add_argument("--batch-size", type=POSITIVE.arg, default=16, help="structures per batch")
    p.add_argument(
        "--max-samples", type=POSITIVE.arg, help="evaluate at most N structures per split"
    )
    p.add_argument(
        "--plot",
        default="parity.png",
        metavar="FILE.png",
        help="parity plots; FILE_nn.png beside it: per-atom force error against the "
        "distance to the nearest neighbour",
    )
    p.add_argument("--no-plot", action="store_true", help="do not draw the parity plots")
    p.add_argument("--json", metavar="FILE", help="also write the metrics to FILE")
    ase = p.add_argument_group("files ASE reads (extxyz, ASE db, ...)")
    ase.add_argument(
        "--energy-unit",
        default="eV",
        help="unit the labels are stored in (eV, meV, kcal/mol, kJ/mol, Hartree); forces "
        "are taken in that unit per Å",
    )
    ase.add_argument("--energy-key", help="where the energy lives (db key or info entry)")
    ase.add_argument("--forces-key", help="where the forces live (db data or arrays entry)")


def open_splits(source: str, split: str | None, **options) -> dict[str, Dataset]:
    """``{split name: dataset}``: the one asked for, else train/val/test where the
    source has splits (PubChemQCR shards, QM9), else ``{"all": everything}``.
    ``options`` go to :func:`tdn_data.load_dataset` (e.g. ``energy_unit``)."""
    if split is not None:
        return {split: load_dataset(source, split=None if split == "all" else split, **options)}
    full = load_dataset(source, **options)
    if isinstance(full, PubChemQCRDataset | QM9Dataset):
        return {s: load_dataset(source, split=s, **options) for s in ("train", "val", "test")}
    return {"all": full}


def _ase_options(args: argparse.Namespace) -> dict:
    """load_dataset options from the ASE flags; only those given (other readers refuse
    unknown options), and a clear error where the source is not a file ASE reads."""
    options = {"energy_unit": args.energy_unit} if args.energy_unit != "eV" else {}
    for key in ("energy_key", "forces_key"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    return options


def predict(model, dataset: Dataset, batch_size: int, device: torch.device, desc: str) -> dict:
    """Reference and predicted values over ``dataset``: ``energy``/``energy_pred`` [B] eV,
    ``atoms`` [B], and where the data has forces ``z`` [N], ``f``/``f_pred`` [N, 3] eV/Å
    and ``nn`` [N] Å, each atom's nearest-neighbour distance (inf without one within
    the model's cutoff) (numpy, float64)."""
    from torch_geometric.loader import DataLoader

    keys = ("energy", "energy_pred", "atoms", "z", "f", "f_pred", "nn")
    out: dict[str, list] = {k: [] for k in keys}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    elements, seen = model.trained_elements(), 0
    for batch in progress(loader, desc):
        try:  # numbers for structures the model cannot answer would be silently wrong
            check_graphs(batch, model.cutoff, elements, first=seen)
        except StructureError as e:
            raise UserError(f"{desc}: {e}") from None
        seen += batch.num_graphs
        batch = batch.to(device)
        batch.pos = batch.pos.to(model.dtype)
        if getattr(batch, "cell", None) is not None:
            batch.cell = batch.cell.to(model.dtype)
        has_forces = getattr(batch, "forces", None) is not None
        result = model(batch, forces=has_forces)
        out["energy"].append(batch.energy.reshape(-1).double().cpu().numpy())
        out["energy_pred"].append(result["energy"].detach().double().cpu().numpy())
        out["atoms"].append(torch.bincount(batch.batch, minlength=batch.num_graphs).cpu().numpy())
        if has_forces:
            out["z"].append(batch.z.cpu().numpy())
            out["f"].append(batch.forces.double().cpu().numpy())
            out["f_pred"].append(result["forces"].detach().double().cpu().numpy())
            out["nn"].append(nearest_neighbour(batch, model.cutoff))
    arrays = {k: np.concatenate(v) for k, v in out.items() if v}
    if "energy" not in arrays:
        raise UserError(f"{desc}: the dataset has no structures to evaluate")
    return arrays


def nearest_neighbour(batch, cutoff: float) -> np.ndarray:
    """Distance (Å) from each atom of ``batch`` to its nearest neighbour, periodic images
    included: [N], inf where none lies within ``cutoff``."""
    return nearest_in_graph(batch_radius_graph(batch, cutoff), batch.num_nodes)


def nearest_in_graph(graph, num_nodes: int) -> np.ndarray:
    """Each atom's shortest edge length (Å) in a radius ``graph``: [N], inf for none."""
    nn = torch.full((num_nodes,), torch.inf, dtype=torch.float64)
    dst, d = graph.edge_index[1].cpu(), graph.edge_len.detach().double().cpu()
    return nn.scatter_reduce(0, dst, d, "amin").numpy()


#: Å, edges of the nearest-neighbour bins of :func:`metrics`: below 0.9 Å only strained
#: bonds and clashes (C-H is 1.09, O-H 0.96, H2 0.74)
NN_BINS = (0.0, 0.8, 0.9, 1.0, 1.1, 1.3, np.inf)


def force_by_nn_distance(per_atom: np.ndarray, nn: np.ndarray) -> list[dict]:
    """Per-atom force error norms ``per_atom`` [N] (eV/Å) binned by nearest-neighbour
    distance ``nn`` [N] (Å, :data:`NN_BINS`): atoms, mean and worst error per bin."""
    rows = []
    for lo, hi in itertools.pairwise(NN_BINS):
        e = per_atom[(nn >= lo) & (nn < hi)]
        rows.append(
            {
                "nn_from_A": lo,
                "nn_to_A": None if np.isinf(hi) else hi,
                "atoms": len(e),
                "force_atom_mean_eV_per_A": float(e.mean()) if len(e) else None,
                "force_worst_atom_eV_per_A": float(e.max()) if len(e) else None,
            }
        )
    return rows


def metrics(p: Mapping[str, np.ndarray]) -> dict:
    """MAE and RMSE of energies (eV, and eV/atom) and force components (eV/Å).

    ``energy_median_error_eV_per_atom`` is the offset of the energies and
    ``energy_mae_debiased_eV_per_atom`` the MAE once it is removed (the median is the
    constant shift that minimizes the MAE): the number to read when the labels come
    from another level of theory, with another energy zero, than the training data.
    """
    de = p["energy_pred"] - p["energy"]
    de_atom = de / p["atoms"]
    bias = float(np.median(de_atom))
    m = {
        "structures": len(de),
        "atoms": int(p["atoms"].sum()),
        "energy_mae_eV": float(np.abs(de).mean()),
        "energy_rmse_eV": float(np.sqrt((de**2).mean())),
        "energy_mae_eV_per_atom": float(np.abs(de_atom).mean()),
        "energy_rmse_eV_per_atom": float(np.sqrt((de_atom**2).mean())),
        "energy_median_error_eV_per_atom": bias,
        "energy_mae_debiased_eV_per_atom": float(np.abs(de_atom - bias).mean()),
    }
    if "f" in p:
        df = p["f_pred"] - p["f"]
        m["force_mae_eV_per_A"] = float(np.abs(df).mean())
        m["force_rmse_eV_per_A"] = float(np.sqrt((df**2).mean()))
        # the tail, per atom: the MAE hides the few atoms that tear a molecule apart in MD
        per_atom = np.linalg.norm(df, axis=1)
        m["force_atom_p99_eV_per_A"] = float(np.percentile(per_atom, 99))
        m["force_atom_p999_eV_per_A"] = float(np.percentile(per_atom, 99.9))
        m["force_worst_atom_eV_per_A"] = float(per_atom.max())
        if "nn" in p:
            worst = int(per_atom.argmax())
            m["force_worst_atom_nn_A"] = float(p["nn"][worst])
            m["force_by_nn_distance"] = force_by_nn_distance(per_atom, p["nn"])
    return m


def element_errors(preds: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict]:
    """Force-component MAE and RMSE (eV/Å) per element, over every split with forces."""
    from ase.data import chemical_symbols

    with_forces = [p for p in preds.values() if "f" in p]
    if not with_forces:
        return {}
    z = np.concatenate([p["z"] for p in with_forces])
    df = np.concatenate([p["f_pred"] - p["f"] for p in with_forces])
    table = {}
    for element in np.unique(z):
        d = df[z == element]
        table[chemical_symbols[int(element)]] = {
            "atoms": len(d),
            "force_mae_eV_per_A": float(np.abs(d).mean()),
            "force_rmse_eV_per_A": float(np.sqrt((d**2).mean())),
        }
    return table


def _print_tables(per_split: dict[str, dict], per_element: dict[str, dict]) -> None:
    print(
        f"{'split':<6} {'structs':>7} {'atoms':>7} {'E MAE':>9} {'E RMSE':>9} {'E MAE':>9} "
        f"{'F MAE':>8} {'F RMSE':>8} {'F p99.9':>9} {'F worst':>9}\n{'':<22} {'meV/atom':>9} "
        f"{'meV/atom':>9} {'meV':>9} {'meV/Å':>8} {'meV/Å':>8} {'atom eV/Å':>9} {'atom eV/Å':>9}"
    )
    for name, m in per_split.items():
        f_mae, f_rmse = m.get("force_mae_eV_per_A"), m.get("force_rmse_eV_per_A")
        print(
            f"{name:<6} {m['structures']:>7} {m['atoms']:>7} "
            f"{1e3 * m['energy_mae_eV_per_atom']:>9.2f} "
            f"{1e3 * m['energy_rmse_eV_per_atom']:>9.2f} {1e3 * m['energy_mae_eV']:>9.2f} "
            + (
                ""
                if f_mae is None
                else f"{1e3 * f_mae:>8.1f} {1e3 * f_rmse:>8.1f} "
                f"{m['force_atom_p999_eV_per_A']:>9.3f} {m['force_worst_atom_eV_per_A']:>9.3f}"
            )
        )
    for name, m in per_split.items():
        if "force_by_nn_distance" not in m:
            continue
        print(
            f"\n{name}: force error per atom by nearest-neighbour distance "
            f"(worst atom: {m['force_worst_atom_nn_A']:.2f} Å from its neighbour)\n"
            f"{'nn (Å)':<10} {'atoms':>8} {'mean eV/Å':>10} {'worst eV/Å':>11}"
        )
        for row in m["force_by_nn_distance"]:
            hi = "" if row["nn_to_A"] is None else f"{row['nn_to_A']:g}"
            span = f"{row['nn_from_A']:g}-{hi}"
            mean, worst = row["force_atom_mean_eV_per_A"], row["force_worst_atom_eV_per_A"]
            cells = "" if mean is None else f"{mean:>10.3f} {worst:>11.3f}"
            print(f"{span:<10} {row['atoms']:>8} {cells}")
    if per_element:
        print(
            f"\nforces per element\n{'element':<8} {'atoms':>8} {'MAE meV/Å':>10} "
            f"{'RMSE meV/Å':>11}"
        )
        for symbol, m in per_element.items():
            print(
                f"{symbol:<8} {m['atoms']:>8} {1e3 * m['force_mae_eV_per_A']:>10.1f} "
                f"{1e3 * m['force_rmse_eV_per_A']:>11.1f}"
            )


def _plot(path: str, preds: Mapping[str, Mapping[str, np.ndarray]], title: str) -> None:
    from ._plots import error_against_distance, parity

    energy = {
        s: (p["energy"] / p["atoms"], p["energy_pred"] / p["atoms"]) for s, p in preds.items()
    }
    panels = [("energy per atom", "eV/atom", energy)]
    forces = {s: (p["f"].ravel(), p["f_pred"].ravel()) for s, p in preds.items() if "f" in p}
    if forces:
        panels.append(("force component", "eV/Å", forces))
    parity(path, panels, title)
    near = {
        s: (p["nn"], np.linalg.norm(p["f_pred"] - p["f"], axis=1))
        for s, p in preds.items()
        if "nn" in p
    }
    if near:
        error_against_distance(_sibling(path, "_nn"), near, title)


def _sibling(path: str, suffix: str) -> str:
    """``parity.png`` -> ``parity_nn.png``."""
    stem, dot, ext = path.rpartition(".")
    return f"{stem}{suffix}.{ext}" if dot else f"{path}{suffix}"


def run(args: argparse.Namespace) -> int:
    """Run ``tdn eval``; returns the exit status."""
    checkpoint = existing_file(args.checkpoint, "CHECKPOINT")
    device = check_device(args.device, "--device")
    dtype = None if args.dtype is None else getattr(torch, args.dtype)
    model, info = load_checkpoint(checkpoint, backend=args.backend, device=device, dtype=dtype)
    try:
        splits = open_splits(args.data, args.split, **_ase_options(args))
    except TypeError as e:  # a reader that takes no such option (embedded, LMDB, QM9)
        raise UserError(
            f"--energy-unit/--energy-key/--forces-key apply to files ASE reads only; "
            f"{args.data!r} is read by another reader ({e})"
        ) from None
    preds = {}
    for name, ds in splits.items():
        if args.max_samples is not None and len(ds) > args.max_samples:
            ds = Subset(ds, np.linspace(0, len(ds) - 1, args.max_samples).astype(int).tolist())
        preds[name] = predict(model, ds, args.batch_size, device, f"eval {name}")
    per_split = {name: metrics(p) for name, p in preds.items()}
    per_element = element_errors(preds)
    print(f"checkpoint {checkpoint} ({info['model']}, backend {model.backend}) on {args.data}")
    _print_tables(per_split, per_element)
    if args.json:
        write_json(args.json, {"splits": per_split, "per_element": per_element})
        print(f"wrote {args.json}")
    if not args.no_plot:
        _plot(args.plot, preds, f"{checkpoint.name} on {args.data}")
        print(f"wrote {args.plot} and {_sibling(args.plot, '_nn')}")
    return 0
