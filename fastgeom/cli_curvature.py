"""``fastgeom curvature`` and ``fastgeom geodesic`` (registered by fastgeom/cli.py; see docs/CLI.md, docs/CURVATURE.md).

``curvature --plane I,J,K --grid N``: Gaussian curvature K of the plane through data[I], data[J], data[K]
at each grid point (the plane's own directions d/da, d/db), with the area element sqrt(det g), to a
resumable CSV ``index,K,area,a,b``. ``--scalar``: the Ricci scalar R of the full pullback metric instead
(immersions only; any of --points/--path/--plane), CSV ``index,R[,t | a,b]``. Same model options, resume
(rerun with the same --out) and one-line exit-2 errors as ``fastgeom logvol``; one process (no torchrun).

``geodesic --data FILE --path I,J --grid N``: discrete geodesic from data[I] to data[J] with N segments,
saved with its length to a .pt file (``{"path", "length", "segment_lengths", "energy", "straight_energy",
"converged", "iterations"}``); a one-line JSON summary is printed.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

from .runio import InputError, one_line

UNUSED = {"method": "auto", "rank_tol": None, "normalize": False, "diagnostics": False}


def _reject_unused(args, cmd: str) -> None:
    for name, default in UNUSED.items():
        if getattr(args, name, default) != default:
            raise InputError(f"--{name.replace('_', '-')} is a logvol/spectrum option; {cmd} does not use it")


def _setup(args, cmd):
    """(model, device, pool, dtype, budget, margs) from the shared model options."""
    import torch

    from .cli import validate
    from .runio import build_model, load_checkpoint

    _reject_unused(args, cmd)
    margs, pool, dtype = validate(args)
    dev = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    torch.manual_seed(args.seed)
    model = build_model(args.model, margs, args.cifar_stem, args.num_classes, args.activation)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
    budget = int(args.budget_mb * 2**20) if args.budget_mb else None
    return model.to(dev).eval(), dev, pool, dtype, budget, margs


def _probe(model, x, args, pool, dtype, where):
    from .api import prepare

    try:
        return prepare(model, x[:1], args.layer, pool, dtype, args.target)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise InputError(
            one_line(
                f"{where}: points of shape {tuple(x.shape[1:])} do not fit --model {args.model}"
                + (f" --layer {args.layer}" if args.layer else "")
                + f": {msg}"
            )
        ) from None


def _cmd_curvature(args) -> int:
    import torch

    from . import surfaces
    from .api import PrecisionWarning, RankDeficiencyWarning
    from .cli import _load_inputs, model_meta
    from .engine.guards import ad_guards
    from .runio import ResultsCSV, load_points, parse_ints, tensor_digest

    if not args.scalar and not args.plane:
        raise InputError(
            "curvature needs --plane I,J,K (the Gaussian curvature of that plane); "
            "--scalar computes the Ricci scalar at --points/--path/--plane"
        )
    model, dev, pool, dtype, budget, margs = _setup(args, "curvature")
    x, extra_cols, extra, src = _load_inputs(args)
    N = x.shape[0]
    where = args.points or args.data
    if N == 0:
        raise InputError(f"{where}: no points to evaluate")
    fmap, d_in, d_out = _probe(model, x.to(dev), args, pool, dtype, where)
    if args.scalar and d_out < d_in:
        raise InputError(
            f"--scalar: the feature map sends d_in = {d_in} inputs to d_out = {d_out} < d_in features "
            "(a submersion), whose full pullback metric is degenerate; use the Gaussian curvature of "
            "a plane (drop --scalar, give --plane I,J,K)"
        )
    u = v = None
    if not args.scalar:
        shape = parse_ints(args.input_shape, None, "--input-shape", 1) if args.input_shape else None
        data = load_points(args.data, shape)
        i, j, k = parse_ints(args.plane, 3, "--plane")
        u, v = surfaces.plane_directions(data[i], data[j], data[k])
        u, v = u.to(x.dtype), v.to(x.dtype)
        u, v = u.to(dev), v.to(dev)
    columns = (["R"] if args.scalar else ["K", "area"]) + extra_cols
    meta = {
        "command": "curvature",
        "columns": columns,
        "scalar": args.scalar,
        **model_meta(args, margs),
        "n_points": N,
        "points_sha1": tensor_digest(x),
        "source": src,
    }
    t0, todo = time.time(), 0
    warned: dict[str, int] = {}
    with ResultsCSV(args.out, columns, meta) as csv:
        pending = [i for i in range(N) if i not in csv.done]
        todo = len(pending)
        for s in range(0, len(pending), args.batch_size):
            b = pending[s : s + args.batch_size]
            xb = x[b].to(dev)
            with warnings.catch_warnings(record=True) as w, ad_guards():  # stable activation derivatives
                warnings.simplefilter("always")
                try:
                    if args.scalar:
                        cols = [
                            surfaces.scalar_curvature_fmap(
                                fmap, xb, d_out, chunk_size=args.chunk_size, budget=budget, progress=False
                            )
                        ]
                    else:
                        K, g = surfaces.gaussian_curvature_fmap(
                            fmap,
                            xb,
                            u,
                            v,
                            return_metric=True,
                            chunk_size=args.chunk_size,
                            budget=budget,
                            progress=False,
                        )
                        cols = [K, torch.linalg.det(g).clamp_min(0).sqrt()]
                except ValueError as e:
                    raise InputError(one_line(f"points {b[0]}..{b[-1]}: {e}")) from None
            for name in {
                ww.category.__name__ for ww in w if issubclass(ww.category, (RankDeficiencyWarning, PrecisionWarning))
            }:
                warned[name] = warned.get(name, 0) + 1
            vals = list(zip(*[c.tolist() for c in cols]))
            csv.append([[i, *vals[j], *(extra[i].tolist() if extra is not None else [])] for j, i in enumerate(b)])
        csv.finalize()
    if not args.quiet:
        for kind, nb in sorted(warned.items()):
            print(f"fastgeom: note: {kind} in {nb} batch(es); those points are NaN in the CSV", file=sys.stderr)
        print(
            f"curvature: {N} points in {args.out} ({todo} computed now, {N - todo} already there) "
            f"in {time.time() - t0:.1f} s"
        )
    return 0


def _cmd_geodesic(args) -> int:
    import torch

    from . import paths
    from .engine.guards import ad_guards
    from .runio import load_points, parse_ints

    model, dev, pool, dtype, budget, _ = _setup(args, "geodesic")
    shape = parse_ints(args.input_shape, None, "--input-shape", 1) if args.input_shape else None
    data = load_points(args.data, shape)
    i, j = parse_ints(args.path, 2, "--path")
    if max(i, j) >= data.shape[0]:
        raise InputError(f"{args.data}: --path {args.path} indexes a point beyond its {data.shape[0]} points (0-based)")
    fmap, _, _ = _probe(model, data[[i]].to(dev), args, pool, dtype, args.data)
    if not str(args.out).endswith(".pt"):
        raise InputError(f"--out {args.out}: geodesic writes a .pt file (path, length, ...)")
    try:
        with ad_guards():  # saturation-stable activation derivatives (engine.stable)
            r = paths.geodesic_fmap(
                fmap, data[i].to(dev), data[j].to(dev), n=args.grid or 32, max_iter=args.max_iter, budget=budget
            )
            seg = paths.path_length_fmap(fmap, r.path, per_segment=True, budget=budget)
    except ValueError as e:
        raise InputError(one_line(f"--path {args.path}: {e}")) from None
    out = {
        "path": r.path.cpu(),
        "length": float(r.length),
        "segment_lengths": seg.cpu(),
        "energy": r.energy,
        "straight_energy": r.straight_energy,
        "converged": r.converged,
        "iterations": r.iterations,
    }
    try:
        torch.save(out, args.out)
    except OSError as e:
        raise InputError(f"{args.out}: cannot write ({e})") from None
    print(json.dumps({k: v for k, v in out.items() if k not in ("path", "segment_lengths")}))
    return 0


def add_parsers(sub, add_compute_args) -> None:
    """Register ``curvature`` and ``geodesic`` on the CLI's subparsers (``add_compute_args``: cli's shared options)."""
    pc = sub.add_parser(
        "curvature",
        help="Gaussian curvature of a plane (or --scalar: Ricci scalar) to a resumable CSV",
        description="Gaussian curvature K and area element sqrt(det g) of the plane through three "
        "data points (CSV index,K,area,a,b), or with --scalar the Ricci scalar of the "
        "full pullback metric of an immersion (CSV index,R[,t | a,b]). Gauss's equation, "
        "float64 (docs/CURVATURE.md).",
    )
    add_compute_args(pc, spectrum=False)
    pc.add_argument("--scalar", action="store_true", help="Ricci scalar of the full metric (immersions: d_out >= d_in)")
    pc.set_defaults(func=_cmd_curvature)
    pg = sub.add_parser(
        "geodesic",
        help="discrete geodesic between two data points, with its length, to a .pt file",
        description="Minimise the discrete energy of an N-segment path from data[I] to data[J] "
        "(L-BFGS from the straight path); save the path and its length.",
    )
    add_compute_args(pg, spectrum=False)
    pg.add_argument("--max-iter", type=int, default=500, help="L-BFGS iterations (default 500)")
    pg.set_defaults(func=_cmd_geodesic)
