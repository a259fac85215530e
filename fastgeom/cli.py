"""Command line: ``fastgeom <subcommand>`` / ``python -m fastgeom <subcommand>``.

Subcommands: ``info``, ``demo``, ``logvol``, ``spectrum`` (resumable, shardable with torchrun) and
``plot``. See docs/CLI.md for the reference and a worked example. Bad input (files, model, options),
a model failing on some batch or an OSError on a file prints one line ``fastgeom: error: ...`` and
exits with code 2; NaN (untrusted) results exit 3, Ctrl-C 130, out of memory 1 (see ``EXIT_*``).
A run keeps the rows it finished and builds one ``fg.Geometry`` handle, used for every batch.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings

from .runio import InputError, one_line

EXIT_FAILURE = 1  # out of memory even at one point with chunk 1, or an internal error
EXIT_USAGE = 2  # bad input, a model error, an OSError on the output: one line
EXIT_NONFINITE = 3  # the run finished, but some points have NaN (untrusted) values
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT); the rows done are kept
_WARN_REGISTRY: dict = {}  # re-emitted foreign warnings show once per location


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2), like every other input error of the CLI."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------------------------
# info / demo


def _cmd_info(args) -> int:
    from .info import format_info, info

    print(json.dumps(info(), indent=2, default=str) if args.json else format_info())
    return 0


def _cmd_demo(args) -> int:
    from .demo import run

    s = run(out_dir=args.out, epochs=args.epochs, progress=not args.quiet)
    print(json.dumps(s, indent=2))
    print(f"wrote {s['png']}")
    return 0


# ---------------------------------------------------------------------------------------------
# logvol / spectrum

DTYPES = ("float64", "float32", "bfloat16", "float16")


def _pool(text: str):
    """'512' -> target size 512; '2x2' or '2,4' -> kernel (2, 2) / (2, 4)."""
    t = text.strip().lower().replace("x", ",")
    try:
        vals = [int(v) for v in t.split(",")]
    except ValueError:
        raise InputError(f"--pool {text!r}: expected a target size N or a kernel KHxKW, e.g. 512 or 2x2") from None
    if any(v <= 0 for v in vals) or len(vals) not in (1, 2):
        raise InputError(f"--pool {text!r}: expected a positive target size N or a kernel KHxKW")
    return vals[0] if len(vals) == 1 else tuple(vals)


def _add_compute_args(p: argparse.ArgumentParser, spectrum: bool) -> None:
    m = p.add_argument_group("model")
    m.add_argument(
        "--model",
        required=True,
        metavar="SPEC",
        help="MODULE:FACTORY or path/to/file.py:FACTORY (a callable returning an nn.Module), "
        "or a torchvision model name such as resnet34",
    )
    m.add_argument("--model-args", default="{}", metavar="JSON", help="keyword arguments for the factory (JSON object)")
    m.add_argument(
        "--num-classes", type=int, default=None, metavar="N", help="num_classes= for the factory / torchvision model"
    )
    m.add_argument(
        "--cifar-stem",
        action="store_true",
        help="torchvision ResNet (resnet18/34/50/101) with the CIFAR stem: conv1 3x3 stride 1, no max-pool "
        "(fastgeom.models.cifar_resnet; --num-classes defaults to 10)",
    )
    m.add_argument(
        "--activation",
        choices=("relu", "gelu"),
        default=None,
        help="with --cifar-stem: the activation of every block (default relu, as torchvision)",
    )
    m.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="state dict (torch.load(weights_only=True)); without it the factory's initialisation under --seed is used",
    )
    m.add_argument(
        "--layer",
        default=None,
        metavar="NAME",
        help="module name from model.named_modules() (default: the model output)",
    )
    m.add_argument(
        "--pool",
        type=str,
        default=None,
        metavar="N|KHxKW",
        help="average-pool a (C,H,W) feature to N numbers, or with a KHxKW kernel",
    )
    m.add_argument(
        "--target",
        choices=("euclidean", "sphere"),
        default="euclidean",
        help="pull back the flat metric, or the round sphere through phi/|phi|",
    )
    m.add_argument("--normalize", action="store_true", help="divide the features by sqrt(d_out)")
    i = p.add_argument_group("points (one of --points, --path, --plane)")
    i.add_argument("--points", metavar="FILE", help=".pt or .npy tensor of shape (N, *input_shape)")
    i.add_argument("--data", metavar="FILE", help=".pt or .npy tensor (M, *input_shape) that --path/--plane index")
    i.add_argument("--path", metavar="I,J", help="the 1-D path from data[I] to data[J]")
    i.add_argument("--plane", metavar="I,J,K", help="the plane through data[I], data[J], data[K]")
    i.add_argument(
        "--grid",
        type=int,
        default=None,
        metavar="N",
        help="points on the path (default 64) / per plane axis (default 60)",
    )
    i.add_argument(
        "--hull",
        choices=("affine", "convex"),
        default="affine",
        help="plane: the whole [-1,1]^2 patch (affine) or only the triangle (convex)",
    )
    i.add_argument("--input-shape", metavar="C,H,W", help="reshape each point to this shape (e.g. 1,28,28)")
    c = p.add_argument_group("computation")
    c.add_argument("--method", choices=("auto", "dense", "streamed", "linearized", "randomized"), default="auto")
    c.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        metavar="K",
        help="cotangents/tangents per pass (default: from the budget)",
    )
    c.add_argument(
        "--budget-mb", type=float, default=None, metavar="MB", help="memory budget of the streamed engine in MiB"
    )
    c.add_argument("--dtype", choices=DTYPES, default=None, help="dtype of the network pass (default: the model's)")
    c.add_argument(
        "--device", default="auto", metavar="DEV", help="auto (cuda:<local rank> if available), cpu, cuda, cuda:N"
    )
    c.add_argument(
        "--rank-tol", type=float, default=None, metavar="T", help="drop singular values below RANK_TOL * s_max"
    )
    c.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seeds the model initialisation and randomized estimators"
    )
    c.add_argument(
        "--batch-size",
        type=int,
        default=16,
        metavar="B",
        help="points per batch; a batch is the unit of work, of sharding and of saving (default 16)",
    )
    if spectrum:
        c.add_argument(
            "--k",
            type=int,
            default=None,
            metavar="K",
            help="number of singular values (default: all; needed for randomized)",
        )
    o = p.add_argument_group("output")
    o.add_argument("--out", required=True, metavar="FILE.csv", help="results CSV; rerunning with the same file resumes")
    o.add_argument("--diagnostics", action="store_true", help="add rank_structural, cond_est and n_rounding columns")
    o.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    o.add_argument(
        "--dist-backend",
        choices=("auto", "nccl", "gloo"),
        default="auto",
        help="torch.distributed backend under torchrun (auto: nccl on GPUs, gloo on CPU)",
    )
    o.add_argument("--dist-timeout", type=float, default=60.0, metavar="MIN", help="collective timeout in minutes")


def _check_ranges(args) -> None:
    for name, lo in (("batch_size", 1), ("chunk_size", 1), ("grid", 2), ("num_classes", 1), ("k", 1)):
        v = getattr(args, name, None)
        if v is not None and v < lo:
            raise InputError(f"--{name.replace('_', '-')} {v}: must be >= {lo}")
    if args.budget_mb is not None and not (args.budget_mb > 0 and math.isfinite(args.budget_mb)):
        raise InputError(f"--budget-mb {args.budget_mb}: must be a positive number of MiB")
    if args.rank_tol is not None and not (0 <= args.rank_tol < 1):
        raise InputError(f"--rank-tol {args.rank_tol}: must be in [0, 1)")
    if not (args.dist_timeout > 0 and math.isfinite(args.dist_timeout)):
        raise InputError(f"--dist-timeout {args.dist_timeout}: must be a positive number of minutes")
    srcs = [n for n in ("points", "path", "plane") if getattr(args, n)]
    if len(srcs) != 1:
        raise InputError(
            "give exactly one of --points FILE, --path I,J or --plane I,J,K"
            + (f" (got {', '.join('--' + s for s in srcs)})" if srcs else "")
        )
    if srcs[0] in ("path", "plane") and not args.data:
        raise InputError(f"--{srcs[0]} needs --data FILE, the points it indexes")
    if srcs[0] == "points" and (args.data or args.grid is not None):
        raise InputError("--data/--grid go with --path or --plane, not with --points")
    if args.method == "randomized":
        import importlib.util

        if importlib.util.find_spec("fastgeom.randomized") is None:
            raise InputError(
                "--method randomized: fastgeom.randomized is not part of this installation; "
                "use --method streamed (exact)"
            )
        if getattr(args, "k", 1) is None:
            raise InputError("spectrum --method randomized estimates the top singular values: give --k")


def validate(args):
    """Cheap checks of parsed logvol/spectrum options (no files read): (model kwargs, pool, dtype).
    InputError (one line) on a bad value."""
    import torch

    from .runio import parse_ints

    _check_ranges(args)
    try:
        margs = json.loads(args.model_args)
    except json.JSONDecodeError as e:
        raise InputError(one_line(f"--model-args {args.model_args!r}: not JSON ({e})")) from None
    if not isinstance(margs, dict):
        raise InputError(f"--model-args {args.model_args!r}: must be a JSON object such as '{{\"width\": 64}}'")
    for opt, n in (("path", 2), ("plane", 3)):
        if getattr(args, opt):
            parse_ints(getattr(args, opt), n, f"--{opt}")
    if args.input_shape:
        parse_ints(args.input_shape, None, "--input-shape", 1)
    pool = _pool(args.pool) if args.pool else None
    dtype = getattr(torch, args.dtype) if args.dtype else None
    return margs, pool, dtype


def _load_inputs(args):
    """(x (N, *input_shape), extra column names, extra values (N, c) or None, description for the run meta)."""
    import torch

    from .runio import load_points, parse_ints

    shape = parse_ints(args.input_shape, None, "--input-shape", 1) if args.input_shape else None
    if args.points:
        return load_points(args.points, shape), [], None, {"points": "file"}
    data = load_points(args.data, shape)
    spec = args.path or args.plane
    n_anchor = 2 if args.path else 3
    idx = parse_ints(spec, n_anchor, "--path" if args.path else "--plane")
    if max(idx) >= data.shape[0]:
        raise InputError(
            f"{args.data}: {'--path' if args.path else '--plane'} {spec} indexes a point beyond its "
            f"{data.shape[0]} points (indices are 0-based)"
        )
    from . import slices

    anchors = [data[i] for i in idx]
    if args.path:
        n = args.grid or 64
        x = slices.path(anchors[0], anchors[1], n)
        # t_k of the path: the same path between the numbers 0 and 1
        t = slices.path(torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64), n)
        return x, ["t"], t.reshape(n, 1), {"path": list(idx), "grid": n}
    n = args.grid or 60
    pl = slices.plane(anchors[0], anchors[1], anchors[2], n, hull=args.hull)
    ab = torch.stack([pl.a, pl.b], dim=1).to(torch.float64)
    return pl.points, ["a", "b"], ab, {"plane": list(idx), "grid": n, "hull": args.hull}


def _columns(args, cmd: str, d_rank: int | None) -> list[str]:
    if cmd == "spectrum":
        return [f"s{i + 1}" for i in range(d_rank)]
    if args.method == "randomized":
        return ["logvol", "stderr"]
    cols = ["logvol", "rank"]
    if args.diagnostics:
        cols += ["rank_structural", "cond_est", "n_rounding"]
    return cols


def _geometry(model, args, state):
    """The run's one ``fg.Geometry`` handle: validated, probed and its engine built once, reused by every batch."""
    import fastgeom as fg

    return fg.Geometry(
        model,
        args.layer,
        pool=state["pool"],
        target=args.target,
        dtype=state["dtype"],
        method=args.method,
        budget=state["budget"],
    )


def _evaluate(cmd, g, xb, args, state):
    """Values (B lists) for one batch through the run's handle `g`; keeps in state['chunk'] a chunk the
    engine halved after an out-of-memory error."""
    if args.method == "randomized":
        if cmd == "logvol":
            v, e = g.logvol(xb, normalize=args.normalize, progress=False, return_stderr=True, seed=args.seed)
            return [[a, b] for a, b in zip(v.tolist(), e.tolist())]
        return g.spectrum(xb, k=args.k, normalize=args.normalize, progress=False, seed=args.seed).tolist()
    kw = dict(
        rank_tol=args.rank_tol,
        normalize=args.normalize,
        progress=False,
        chunk_size=state["chunk"],
        return_diagnostics=True,
    )
    if cmd == "logvol":
        lv, d = g.logvol(xb, **kw)
        cols = [lv, d.rank]
        if args.diagnostics:
            cols += [d.rank_structural, d.cond_est, d.n_rounding]
        vals = list(zip(*[c.tolist() for c in cols]))
    else:
        s, d = g.spectrum(xb, k=args.k, **kw)
        vals = s.tolist()
    if d is not None and d.chunk is not None:
        state["chunk"] = d.chunk
    return [list(v) for v in vals]


def _fastgeom_warning(w) -> bool:
    """A warning of fastgeom's own (counted and summarised per run; others are shown as usual)."""
    return w.category.__module__.split(".")[0] == "fastgeom"


def _batch_error(e: Exception, b: range) -> tuple[int, str]:
    """(exit code, one-line message) for an exception while computing the batch b."""
    where = f"points {b.start}..{b.stop - 1}"
    if isinstance(e, MemoryError):  # the engine already halved chunk and point batch down to 1
        return EXIT_FAILURE, one_line(f"{where}: {e}")
    if isinstance(e, ValueError):  # fastgeom's checks (e.g. a Jacobian that is exactly zero)
        return EXIT_USAGE, one_line(f"{where}: {e}")
    return EXIT_USAGE, one_line(f"{where}: the model failed ({type(e).__name__}: {e})")


def model_meta(args, margs) -> dict:
    """The settings of a run's sidecar that name the feature map (model, weights, layer, dtype)."""
    from .runio import file_digest

    return {
        "model": args.model,
        "model_args": margs,
        "num_classes": args.num_classes,
        "cifar_stem": args.cifar_stem,
        "activation": args.activation,
        "checkpoint_sha1": file_digest(args.checkpoint) if args.checkpoint else None,
        "seed": args.seed,
        "layer": args.layer,
        "pool": args.pool,
        "target": args.target,
        "dtype": args.dtype,
    }


def _run(cmd: str, args) -> int:
    import torch
    from tqdm.auto import tqdm

    from . import distributed as D
    from .runio import ResultsCSV, build_model, load_checkpoint, tensor_digest

    margs, pool, dtype = validate(args)
    try:
        ctx = D.init(args.device, args.dist_backend, args.dist_timeout)
    except ValueError as e:
        raise InputError(str(e)) from None

    csv = None
    try:
        torch.manual_seed(args.seed)
        model = build_model(args.model, margs, args.cifar_stem, args.num_classes, args.activation)
        if args.checkpoint:
            load_checkpoint(model, args.checkpoint)
        model = model.to(ctx.device).eval()
        x, extra_cols, extra, src = _load_inputs(args)
        N = x.shape[0]
        if N == 0:
            raise InputError(f"{args.points or args.data}: no points to evaluate")
        state = {
            "pool": pool,
            "dtype": dtype,
            "chunk": args.chunk_size,
            "budget": int(args.budget_mb * 2**20) if args.budget_mb else None,
        }
        # one handle per run, probed on one point: a wrong input shape or layer is reported before any work
        try:
            g = _geometry(model, args, state)
            probe = g.probe(x[:1].to(ctx.device))
            d_in, d_out = probe.d_in, probe.d_out
        except Exception as e:  # noqa: BLE001 - whatever the model raises, one line naming the inputs
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            where = args.points or args.data
            raise InputError(
                one_line(
                    f"{where}: points of shape {tuple(x.shape[1:])} do not fit --model "
                    f"{args.model}" + (f" --layer {args.layer}" if args.layer else "") + f": {msg}"
                )
            ) from None
        full = min(d_in, d_out)
        k = None if cmd == "logvol" else (full if args.k is None else min(args.k, full))
        columns = _columns(args, cmd, k) + extra_cols
        meta = {
            "command": cmd,
            "columns": columns,
            **model_meta(args, margs),
            "normalize": args.normalize,
            "method": args.method,
            "rank_tol": args.rank_tol,
            "n_points": N,
            "points_sha1": tensor_digest(x),
            "source": src,
        }
        status: dict | None = None
        if ctx.is_main:
            try:
                csv = ResultsCSV(args.out, columns, meta).open()
                status = {"done": sorted(csv.done)}
            except InputError as e:
                status = {"error": str(e)}
        status = ctx.broadcast(status)
        if "error" in status:
            if ctx.is_main:
                raise InputError(status["error"])
            return EXIT_USAGE
        done = set(status["done"])
        batches = D.pending_batches(N, args.batch_size, done)
        plan = D.rounds(batches, ctx.world)
        mine = [D.my_batch(r, ctx.rank) for r in plan]
        n_mine = sum(sum(1 for i in b if i not in done) for b in mine if b is not None)
        n_todo = sum(1 for b in batches for i in b if i not in done)
        bar = tqdm(
            total=n_mine,
            desc=f"{cmd} rank {ctx.rank}/{ctx.world}",
            unit="pt",
            position=ctx.rank,
            disable=args.quiet,
            file=sys.stderr,
            dynamic_ncols=True,
            leave=True,
        )
        t0 = time.time()
        warned: dict[str, list] = {}  # fastgeom warning class -> [batches, first message]
        try:
            for b in mine:
                rows, err = [], None
                if b is not None:
                    try:
                        with warnings.catch_warnings(record=True) as w:
                            warnings.simplefilter("always")
                            xb = x[b.start : b.stop].to(ctx.device)
                            vals = _evaluate(cmd, g, xb, args, state)
                    except Exception as e:  # noqa: BLE001 - reported in one line; the rows done are kept
                        err = _batch_error(e, b)
                        w = []
                    for ww in w:
                        if _fastgeom_warning(ww):
                            c = warned.setdefault(
                                ww.category.__name__,
                                [0, f"points {b.start}..{b.stop - 1}: " + one_line(ww.message, 200)],
                            )
                            c[0] += 1
                        else:  # not ours: let the usual filters show it (once per location)
                            warnings.warn_explicit(
                                ww.message, ww.category, ww.filename, ww.lineno, registry=_WARN_REGISTRY
                            )
                    if err is None:
                        for j, i in enumerate(b):
                            rows.append([i, *vals[j], *(extra[i].tolist() if extra is not None else [])])
                        bar.update(sum(1 for i in b if i not in done))
                results = ctx.gather((rows, err))
                stop = None
                if ctx.is_main:
                    try:
                        csv.append(sorted((r for rr, _ in results for r in rr), key=lambda r: r[0]))
                    except InputError as e:
                        stop = (EXIT_USAGE, str(e))
                    stop = stop or next((e for _, e in results if e is not None), None)
                stop = ctx.broadcast(stop)
                if stop is not None:
                    if not ctx.is_main:
                        return stop[0]
                    raise _RunStopped(
                        stop[0],
                        f"{stop[1]} (the rows finished before are kept in {args.out}; "
                        "fix the cause and rerun the same command to resume)",
                    )
        finally:
            bar.close()
        notes = ctx.gather(warned)
        if not ctx.is_main:
            return 0
        csv.finalize()
        dt = time.time() - t0
        if not args.quiet:
            tot: dict[str, list] = {}
            for nn in notes:
                for kk, (vv, first) in nn.items():
                    tot.setdefault(kk, [0, first])[0] += vv
            for kk, (vv, first) in sorted(tot.items()):
                see = (
                    "; see the rank/n_rounding columns (--diagnostics) of the CSV"
                    if kk in ("RankDeficiencyWarning", "PrecisionWarning")
                    else ""
                )
                print(f"fastgeom: note: {kk} in {vv} batch(es) (first: {first}){see}", file=sys.stderr)
            print(
                f"{cmd}: {N} points in {args.out} ({n_todo} computed now on {ctx.world} process(es), "
                f"{N - n_todo} already there) in {dt:.1f} s"
                + (f", {n_todo / dt:.2f} points/s" if dt > 0 and n_todo else "")
            )
        bad = csv.nonfinite()
        if bad:
            shown = ", ".join(map(str, bad[:10])) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
            print(
                f"fastgeom: warning: {len(bad)} of {N} points have NaN values in {args.out} (untrusted points, "
                f"e.g. a non-finite Jacobian or an input that overflows --dtype; the warnings above name the cause): "
                f"index {shown}",
                file=sys.stderr,
            )
            return EXIT_NONFINITE
        return 0
    finally:
        if csv is not None:
            csv.close()
        ctx.close()


class _RunStopped(Exception):
    """A batch failed: stop the run with this exit code and one-line message (rows done are kept)."""

    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code = code


def _cmd_logvol(args) -> int:
    return _run("logvol", args)


def _cmd_spectrum(args) -> int:
    return _run("spectrum", args)


# ---------------------------------------------------------------------------------------------
# plot


def plane_image(a, b, v):
    """Heat map of values v at plane coordinates (a, b) on a regular grid: (image (nb, na) with NaN
    where no point was evaluated, e.g. outside a convex hull; imshow extent (l, r, bottom, top))."""
    import numpy as np

    ua, ub = np.unique(a), np.unique(b)
    img = np.full((ub.size, ua.size), np.nan)
    img[np.searchsorted(ub, b), np.searchsorted(ua, a)] = v
    da = (ua[1] - ua[0]) / 2 if ua.size > 1 else 0.5
    db = (ub[1] - ub[0]) / 2 if ub.size > 1 else 0.5
    return img, (float(ua[0] - da), float(ua[-1] + da), float(ub[0] - db), float(ub[-1] + db))


def _cmd_plot(args) -> int:
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .runio import read_csv

    cols, a = read_csv(args.csv)
    if a.shape[0] == 0:
        raise InputError(f"{args.csv}: has no rows to plot")
    out = args.out or os.path.splitext(args.csv)[0] + ".png"
    spec_cols = [c for c in cols if c[:1] == "s" and c[1:].isdigit()]
    col = args.column or next((c for c in ("logvol", "K", "R") if c in cols), None)
    if col is not None and col not in cols:
        raise InputError(f"{args.csv}: no column {col!r}; it has {', '.join(cols)}")
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    title = args.title or os.path.basename(args.csv)
    if col is None and spec_cols and "t" in cols:  # spectra along a path: each singular value against t
        s = a[:, [cols.index(c) for c in spec_cols]]
        t = a[:, cols.index("t")]
        idx = np.linspace(0, s.shape[1] - 1, min(s.shape[1], args.max_lines)).round().astype(int)
        cmap = plt.get_cmap("viridis")
        for j, i in enumerate(idx):
            ax.semilogy(
                t,
                np.where(s[:, i] > 0, s[:, i], np.nan),
                color=cmap(j / max(1, len(idx) - 1)),
                lw=1,
                label=spec_cols[i] if len(idx) <= 8 else None,
            )
        ax.set_xlabel("t")
        ax.set_ylabel("singular values")
        if len(idx) <= 8:
            ax.legend(fontsize="small")
    elif col is None and spec_cols:
        s = a[:, [cols.index(c) for c in spec_cols]]
        rows = np.linspace(0, s.shape[0] - 1, min(s.shape[0], args.max_lines)).round().astype(int)
        cmap = plt.get_cmap("viridis")
        for j, r in enumerate(rows):
            v = s[r]
            ax.semilogy(
                np.arange(1, v.size + 1)[v > 0],
                v[v > 0],
                color=cmap(j / max(1, len(rows) - 1)),
                lw=1,
                label=f"index {int(a[r, 0])}" if len(rows) <= 8 else None,
            )
        ax.set_xlabel("i")
        ax.set_ylabel("singular value $s_i$")
        if len(rows) <= 8:
            ax.legend(fontsize="small")
    else:
        v = a[:, cols.index(str(col))].copy()
        label = col
        if args.log10 and col == "logvol":
            v = v / math.log(10)
            label = "log10 volume element"
        if "a" in cols and "b" in cols:
            img, ext = plane_image(a[:, cols.index("a")], a[:, cols.index("b")], v)
            from .plot import value_colors  # curvature columns: diverging map centred at 0

            im = ax.imshow(img, origin="lower", aspect="equal", extent=ext, **value_colors(col, v, args.cmap))
            fig.colorbar(im, ax=ax, label=label)
            ax.set_xlabel("a")
            ax.set_ylabel("b")
        else:
            t = a[:, cols.index("t")] if "t" in cols else a[:, 0]
            ax.plot(t, v, marker="." if v.size <= 100 else None)
            ax.set_xlabel("t" if "t" in cols else "index")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=args.dpi)
    except OSError as e:
        raise InputError(f"{out}: cannot write the figure ({e})") from None
    finally:
        plt.close(fig)
    if not args.quiet:
        print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fastgeom", description="Riemannian geometry of neural network feature maps")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    pi = sub.add_parser("info", help="versions, built and usable backends, build metadata")
    pi.add_argument("--json", action="store_true")
    pi.set_defaults(func=_cmd_info)
    pd = sub.add_parser("demo", help="train the sinusoid task and plot its log volume element (CPU, < 1 min)")
    pd.add_argument("--out", default="demo_out")
    pd.add_argument("--epochs", type=int, default=1000)
    pd.add_argument("--quiet", action="store_true")
    pd.set_defaults(func=_cmd_demo)
    pl = sub.add_parser(
        "logvol",
        help="log volume element at many points, to a resumable CSV (torchrun-able)",
        description="Log volume element (sum of log singular values of the layer's Jacobian) at "
        "every point; CSV columns index,logvol,rank[,diagnostics][,t | a,b].",
    )
    _add_compute_args(pl, spectrum=False)
    pl.set_defaults(func=_cmd_logvol)
    ps = sub.add_parser(
        "spectrum",
        help="singular values of the Jacobian at many points, to a resumable CSV",
        description="Singular values of the layer's Jacobian, descending; CSV columns index,s1..sk[,t | a,b].",
    )
    _add_compute_args(ps, spectrum=True)
    ps.set_defaults(func=_cmd_spectrum)
    pp = sub.add_parser("plot", help="plot a results CSV: path (line), plane (heat map) or spectra, to PNG")
    pp.add_argument("csv", metavar="CSV")
    pp.add_argument("--out", default=None, metavar="FILE.png", help="default: the CSV's name with .png")
    pp.add_argument("--column", default=None, help="value column (default logvol; spectra when absent)")
    pp.add_argument("--log10", action="store_true", help="show logvol in base 10")
    pp.add_argument("--title", default=None)
    pp.add_argument("--cmap", default="viridis")
    pp.add_argument("--dpi", type=int, default=150)
    pp.add_argument("--max-lines", type=int, default=16, help="spectra: at most this many rows")
    pp.add_argument("--quiet", action="store_true")
    pp.set_defaults(func=_cmd_plot)
    from .cli_curvature import add_parsers  # curvature, geodesic

    add_parsers(sub, _add_compute_args)
    return p


def main(argv=None) -> int:
    """Run the command line; returns the exit code (see docs/CLI.md, "Exit codes"). Every failure is
    one line on stderr, never a traceback (``FASTGEOM_TRACEBACK=1`` re-raises unexpected errors)."""
    import os

    args = build_parser().parse_args(argv)
    # torch's own deprecation notice, raised inside torch.func on first use; not the user's business
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
    out = getattr(args, "out", None)
    kept = (
        f"the rows finished so far are kept in {out}; rerun the same command to resume"
        if args.cmd in ("logvol", "spectrum")
        else ""
    )
    try:
        return args.func(args)
    except InputError as e:
        print(f"fastgeom: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except _RunStopped as e:
        print(f"fastgeom: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("fastgeom: interrupted" + (f"; {kept}" if kept else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError as e:
        print(f"fastgeom: error: {one_line(e)}" + (f" ({kept})" if kept else ""), file=sys.stderr)
        return EXIT_FAILURE
    except OSError as e:  # any file the run reads or writes
        from .runio import os_error

        print(
            f"fastgeom: error: {os_error(out or '?', e, 'read or write it')}" + (f" ({kept})" if kept else ""),
            file=sys.stderr,
        )
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - a bug of fastgeom's: still one line, with a way to see more
        if os.environ.get("FASTGEOM_TRACEBACK"):
            raise
        print(
            f"fastgeom: internal error: {one_line(f'{type(e).__name__}: {e}')}"
            + (f" ({kept})" if kept else "")
            + "; rerun with FASTGEOM_TRACEBACK=1 for the traceback and please "
            "report it",
            file=sys.stderr,
        )
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
