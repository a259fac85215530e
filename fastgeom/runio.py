"""Run input/output for the command line: loading points, models and checkpoints with one-line
errors, and an append-only, crash-safe results CSV that a rerun resumes.

Every loader raises ``InputError`` (a ``ValueError``) whose message names the file and the problem
and fits on one line; the CLI prints it and exits with code 2.

The results CSV has a header ``index,<value columns>`` and one row per point. Rows are appended
with a single ``os.write`` per batch on an ``O_APPEND`` descriptor and ``fsync``ed, so a process
killed with SIGKILL leaves only complete rows (a torn last line, should the OS ever produce one,
has no newline and is discarded on reading). ``ResultsCSV.done`` is the set of indices present;
a rerun computes only the others and ``finalize`` rewrites the file sorted and deduplicated
(atomically, through a uniquely named temporary file and ``os.replace``). A sidecar
``<out>.meta.json`` records the settings that determine the values, so a rerun with different
settings is refused instead of mixing results. While a run writes, it holds an ``fcntl`` lock on
``<out>.lock`` (removed at the end), so a second process on the same file stops with a one-line
error instead of racing on it.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import hashlib
import importlib
import importlib.util
import json
import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch


class InputError(ValueError):
    """Bad user input (file, model, argument); the message is one line naming the file and the problem."""


def one_line(msg: object, limit: int = 400) -> str:
    """Collapse a (possibly multi-line) message onto one line, at most `limit` characters."""
    s = re.sub(r"\s*\n\s*", "; ", str(msg).strip())
    s = re.sub(r"\s+", " ", s)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _err(path, problem: str, fix: str = "") -> InputError:
    return InputError(one_line(f"{path}: {problem}" + (f"; {fix}" if fix else "")))


# --------------------------------------------------------------------------------------------
# points


def _torch_load(path: str):
    """torch.load(weights_only=True) on CPU; warnings torch emits while failing on a corrupt file are
    dropped (the caller reports the failure in one line), those of a successful load are passed on."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        obj = torch.load(path, map_location="cpu", weights_only=True)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return obj


POINT_SUFFIXES = (".pt", ".pth", ".npy")


def load_tensor_file(path: str, what: str = "points") -> torch.Tensor:
    """Load a tensor from a ``.pt``/``.pth`` (``torch.save(x)``, read with ``weights_only=True``) or
    ``.npy`` (no pickles) file. InputError naming `path` on any failure."""
    if not os.path.isfile(path):
        raise _err(path, f"{what} file not found", "check the path")
    ext = os.path.splitext(path)[1].lower()
    if ext not in POINT_SUFFIXES:
        raise _err(
            path,
            f"unsupported {what} file type {ext or '(none)'!r}",
            "save the tensor with torch.save(x, 'file.pt') or numpy.save('file.npy', x)",
        )
    if ext == ".npy":
        try:
            # mmap first: the header's shape is checked against the file size before anything is allocated
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            arr = np.array(arr)
        except Exception as e:  # noqa: BLE001 - any failure of a corrupt file becomes one line
            raise _err(
                path,
                f"not a readable .npy array ({type(e).__name__}: {e})",
                "write it with numpy.save(path, array) (object arrays are not accepted)",
            ) from None
        if arr.dtype.kind not in "biuf":
            raise _err(path, f"array has dtype {arr.dtype}, not a real number type", "save a float array")
        if arr.dtype.kind == "f" and arr.dtype.itemsize > 8:
            raise _err(
                path,
                f"array has dtype {arr.dtype} (extended precision), which torch does not hold",
                "save it as float64: numpy.save(path, array.astype('float64'))",
            )
        # native byte order and C order (a big-endian or Fortran-ordered file holds the same numbers)
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
        return torch.from_numpy(arr)
    try:
        obj = _torch_load(path)
    except Exception as e:  # noqa: BLE001
        raise _err(
            path, f"not a readable torch file ({type(e).__name__}: {e})", "write it with torch.save(tensor, path)"
        ) from None
    if isinstance(obj, torch.Tensor):
        return _dense_tensor(obj, path, what)
    if isinstance(obj, Mapping):
        keys = ", ".join(repr(k) for k in list(obj)[:6]) + (", ..." if len(obj) > 6 else "")
        raise _err(
            path, f"holds a dict (keys {keys}), not a tensor", f"save the {what} tensor itself: torch.save(x, path)"
        )
    raise _err(
        path, f"holds a {type(obj).__name__}, not a tensor", f"save the {what} tensor itself: torch.save(x, path)"
    )


def _dense_tensor(t: torch.Tensor, path: str, what: str) -> torch.Tensor:
    """A loaded tensor as a plain dense CPU tensor: sparse layouts densified; meta, nested and
    quantized tensors refused (InputError naming `path`)."""
    if t.is_meta:
        raise _err(
            path,
            f"holds a meta tensor of shape {tuple(t.shape)} (a shape without values)",
            f"save the {what} themselves",
        )
    if getattr(t, "is_nested", False):
        raise _err(path, "holds a nested tensor", f"save one (N, *input_shape) tensor of {what}")
    if t.is_quantized:
        raise _err(path, f"holds a quantized tensor ({t.dtype})", "save t.dequantize()")
    if t.layout != torch.strided:
        t = t.to_dense()
    return t.detach()


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_points(x: torch.Tensor, path: str, input_shape: Sequence[int] | None = None) -> torch.Tensor:
    """Check `x` loaded from `path` is (N, *input_shape) finite floats; reshape to input_shape if given."""
    if x.dim() < 2:
        raise _err(
            path,
            f"points tensor has shape {tuple(x.shape)}, expected (N, *input_shape) with one row per point",
            "for a single point save x[None]",
        )
    if x.dtype == torch.bool or x.is_complex():
        raise _err(path, f"points tensor has dtype {x.dtype}", "save real floating-point points")
    if not x.is_floating_point():
        raise _err(
            path,
            f"points tensor has integer dtype {x.dtype}; geometry needs floating-point inputs",
            "convert first, e.g. x.float() / 255 then normalise as in training",
        )
    if x.dtype not in FLOAT_DTYPES:
        raise _err(path, f"points tensor has dtype {x.dtype}", "save float16, bfloat16, float32 or float64 points")
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        n = int(np.prod(shape))
        if x[0].numel() != n:
            raise _err(
                path,
                f"points have {x[0].numel()} numbers each (shape {tuple(x.shape)}), "
                f"but --input-shape {','.join(map(str, shape))} needs {n}",
                "fix --input-shape or the file",
            )
        x = x.reshape(x.shape[0], *shape)
    if x.shape[0] and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).nonzero().flatten().tolist()
        raise _err(
            path,
            f"points contain NaN or Inf at index {', '.join(map(str, bad[:5]))}"
            + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""),
            "remove or replace them",
        )
    return x


def load_points(path: str, input_shape: Sequence[int] | None = None) -> torch.Tensor:
    """Points (N, *input_shape) from a .pt/.npy file, checked; InputError naming the file otherwise."""
    return as_points(load_tensor_file(path, "points"), path, input_shape)


def parse_ints(text: str, n: int | None, name: str, minimum: int = 0) -> tuple[int, ...]:
    """'3,7' -> (3, 7); InputError naming the option otherwise (exactly n values if n is given)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(
            f"{name} {text!r}: expected comma-separated integers, e.g. {','.join(str(i) for i in range(n or 2))}"
        ) from None
    if n is not None and len(vals) != n:
        raise InputError(f"{name} {text!r}: expected {n} comma-separated integers, got {len(vals)}")
    if any(v < minimum for v in vals):
        raise InputError(f"{name} {text!r}: values must be >= {minimum}")
    return vals


def tensor_digest(x: torch.Tensor) -> str:
    """sha1 of a tensor's dtype, shape and bytes (identifies the points of a run)."""
    h = hashlib.sha1(f"{x.dtype}{tuple(x.shape)}".encode())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def file_digest(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# models and checkpoints


def _import_factory_module(mod: str, spec: str):
    if mod.endswith(".py") or os.sep in mod or "/" in mod:
        if not os.path.isfile(mod):
            raise InputError(f"--model {spec}: file {mod} not found; give MODULE:FACTORY or path/to/file.py:FACTORY")
        name = "fastgeom_user_" + hashlib.sha1(os.path.abspath(mod).encode()).hexdigest()[:12]
        try:
            sp = importlib.util.spec_from_file_location(name, mod)
            m = importlib.util.module_from_spec(sp)
            sys.modules[name] = m
            sp.loader.exec_module(m)
        except Exception as e:  # noqa: BLE001
            sys.modules.pop(name, None)
            raise InputError(one_line(f"--model {spec}: importing {mod} failed ({type(e).__name__}: {e})")) from None
        return m
    try:
        return importlib.import_module(mod)
    except ModuleNotFoundError as e:
        raise InputError(
            one_line(
                f"--model {spec}: cannot import module {mod!r} ({e}); check PYTHONPATH or give path/to/file.py:FACTORY"
            )
        ) from None
    except Exception as e:  # noqa: BLE001
        raise InputError(
            one_line(f"--model {spec}: importing module {mod!r} failed ({type(e).__name__}: {e})")
        ) from None


def _torchvision_names() -> list[str]:
    try:
        import torchvision

        return list(torchvision.models.list_models(module=torchvision.models))
    except Exception:  # noqa: BLE001
        return []


def build_model(
    spec: str,
    kwargs: dict | None = None,
    cifar: bool = False,
    num_classes: int | None = None,
    activation: str | None = None,
) -> torch.nn.Module:
    """``MODULE:FACTORY`` / ``path/file.py:FACTORY`` (called with ``kwargs``) or a torchvision model name.

    With ``cifar`` a torchvision ResNet name gives ``fastgeom.models.cifar_resnet(name, activation,
    num_classes)`` (3x3 stride-1 stem, no max-pool; activation default ``"relu"`` as in torchvision,
    ``num_classes`` default 10).
    """
    kwargs = dict(kwargs or {})
    if activation is not None and (":" in spec or not cifar):
        raise InputError(f"--activation {activation}: only for a torchvision ResNet with --cifar-stem")
    if cifar and ":" in spec:
        raise InputError(f"--cifar-stem: only for a torchvision ResNet name (resnet18/34/50/101), not {spec!r}")
    if ":" in spec:
        mod, _, fac = spec.rpartition(":")
        if not mod or not fac.isidentifier():
            raise InputError(f"--model {spec!r}: expected MODULE:FACTORY, e.g. mypkg.models:make_net")
        m = _import_factory_module(mod, spec)
        fn = getattr(m, fac, None)
        if fn is None:
            names = [n for n in dir(m) if not n.startswith("_") and callable(getattr(m, n, None))]
            close = difflib.get_close_matches(fac, names, n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise InputError(f"--model {spec}: unknown factory {fac!r} in {mod}{hint}")
        if not callable(fn):
            raise InputError(f"--model {spec}: {fac!r} in {mod} is a {type(fn).__name__}, not a callable factory")
        if num_classes is not None:
            kwargs.setdefault("num_classes", num_classes)
        try:
            model = fn(**kwargs)
        except Exception as e:  # noqa: BLE001
            raise InputError(
                one_line(f"--model {spec}: calling {fac}(**{kwargs}) failed ({type(e).__name__}: {e})")
            ) from None
    elif cifar:
        from .models.resnet import ARCHS, cifar_resnet

        if spec not in ARCHS:
            raise InputError(f"--model {spec!r} --cifar-stem: choose one of {', '.join(sorted(ARCHS))}")
        if kwargs:
            raise InputError(f"--model-args: not used with --cifar-stem (got {kwargs})")
        model = cifar_resnet(spec, activation=activation or "relu", num_classes=num_classes or 10)
    else:
        names = _torchvision_names()
        if spec not in names:
            close = difflib.get_close_matches(spec, names, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise InputError(
                f"--model {spec!r}: unknown model, neither MODULE:FACTORY nor a torchvision model name{hint}"
            )
        import torchvision

        if num_classes is not None:
            kwargs.setdefault("num_classes", num_classes)
        try:
            model = torchvision.models.get_model(spec, weights=None, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise InputError(
                one_line(f"--model {spec}: torchvision could not build it ({type(e).__name__}: {e})")
            ) from None
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"--model {spec}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
_PREFIXES = ("module.", "_orig_mod.")


def _shape(t) -> str:
    return "(" + ",".join(map(str, tuple(t.shape))) + ")"


def load_checkpoint(model: torch.nn.Module, path: str) -> None:
    """Load a state dict (``torch.load(weights_only=True)``) into `model`, strictly.

    Accepts a plain state dict or one under ``state_dict``/``model_state_dict``/``model``/``net``,
    with DDP (``module.``) or ``torch.compile`` (``_orig_mod.``) prefixes. InputError naming the file
    and listing missing/unexpected keys and shape mismatches otherwise.
    """
    if not os.path.isfile(path):
        raise _err(path, "checkpoint file not found", "check --checkpoint")
    try:
        obj = _torch_load(path)
    except Exception as e:  # noqa: BLE001
        raise _err(
            path,
            f"corrupt or unreadable checkpoint ({type(e).__name__}: {e})",
            "it must be a state dict saved with torch.save(model.state_dict(), path)",
        ) from None
    sd = obj
    if isinstance(sd, Mapping):
        for k in _WRAPPER_KEYS:
            if k in sd and isinstance(sd[k], Mapping):
                sd = sd[k]
                break
    if (
        not isinstance(sd, Mapping)
        or not sd
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items())
    ):
        raise _err(
            path,
            f"not a state dict of tensors (holds a {type(obj).__name__})",
            "save it with torch.save(model.state_dict(), path)",
        )
    for pre in _PREFIXES:
        if all(k.startswith(pre) for k in sd):
            sd = {k[len(pre) :]: v for k, v in sd.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) e.g. {', '.join(map(repr, missing[:3]))}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) e.g. {', '.join(map(repr, unexpected[:3]))}")
        for k in shapes[:3]:
            parts.append(f"{k!r} is {_shape(sd[k])} in the checkpoint but {_shape(own[k])} in the model")
        raise _err(
            path,
            "checkpoint does not match the model: " + "; ".join(parts),
            "pass the --model (and --model-args/--num-classes/--cifar-stem) it was trained with",
        )
    try:
        model.load_state_dict(sd, strict=True)
    except Exception as e:  # noqa: BLE001
        raise _err(path, f"loading the checkpoint failed ({type(e).__name__}: {e})") from None


# --------------------------------------------------------------------------------------------
# results CSV


def format_value(v) -> str:
    """Round-trip text of a number (repr of a float: 17 significant digits at most)."""
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return repr(float(v))


def _write_all(fd: int, buf: bytes) -> None:
    """Write all of `buf` to `fd` (``os.write`` may write less than asked) and fsync."""
    n = 0
    while n < len(buf):
        n += os.write(fd, buf[n:])
    os.fsync(fd)


def os_error(path: str, e: OSError, doing: str) -> InputError:
    """One-line InputError for an OSError while `doing` something with `path` (full disk, read-only, ...)."""
    fix = {
        errno.ENOSPC: "free some space",
        errno.EDQUOT: "free some space (disk quota)",
        errno.EROFS: "choose an --out on a writable file system",
        errno.EACCES: "choose an --out you may write",
        errno.EPERM: "choose an --out you may write",
        errno.ENOENT: "create the directory first",
    }.get(e.errno, "")
    where = e.filename if isinstance(e.filename, str) and e.filename else path
    return _err(where, f"cannot {doing} ({e.strerror or type(e).__name__})", fix)


def write_atomic(path: str, text: str) -> None:
    """Replace `path` by `text` atomically: a temporary file with a unique name beside it, fsync,
    ``os.replace``; the temporary file is removed on any failure. OSError passes through."""
    d, base = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{base}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class RunLock:
    """Exclusive lock of one output file for the lifetime of a run: ``fcntl.flock`` on ``<path>.lock``
    (holding the owner's pid), taken without waiting. The holder removes the lock file before it
    lets go; a process that locked a file removed meanwhile (it opened it just before) retries on
    the new one, so two processes never both hold the lock."""

    def __init__(self, path: str):
        self.path = path + ".lock"
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    holder = os.read(fd, 32).decode(errors="replace").strip()
                finally:
                    os.close(fd)
                raise _err(  # noqa: B904  (the lock's own BlockingIOError is not the user's error)
                    self.path[:-5],
                    "is being written by another fastgeom process" + (f" (pid {holder})" if holder.isdigit() else ""),
                    f"wait for it to finish, or use another --out (if no such process runs, delete {self.path})",
                )
            except BaseException:
                os.close(fd)
                raise
            try:
                st = os.stat(self.path)
                same = (st.st_ino, st.st_dev) == (os.fstat(fd).st_ino, os.fstat(fd).st_dev)
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder removed this file after we opened it: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


class ResultsCSV:
    """Append-only results file ``index,<columns>`` with resume; see the module docstring.

    Args:
        path: the CSV file. columns: value columns after ``index``. meta: settings that determine
            the values; stored in ``<path>.meta.json`` and compared on resume.

    ``open`` takes a ``RunLock`` on the file (a second process on the same path gets a one-line
    InputError) that ``close`` releases. Every OSError (full disk, read-only location, ...) becomes
    a one-line InputError naming the file; rows written before it stay in the file.
    """

    def __init__(self, path: str, columns: Sequence[str], meta: dict | None = None):
        self.path = path
        self.columns = ["index", *columns]
        self.header = ",".join(self.columns)
        self.meta_path = path + ".meta.json"
        self.meta = meta
        self.rows: dict[int, str] = {}  # index -> full line without newline (rows already in the file)
        self._fd: int | None = None
        self._lock: RunLock | None = None

    # reading --------------------------------------------------------------
    def open(self) -> ResultsCSV:
        """Lock the file, check header/meta of an existing file and read the indices present; create
        the file if absent."""
        d = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(d):
            raise _err(self.path, f"output directory {d} does not exist", "create it first")
        if os.path.isdir(self.path):
            raise _err(self.path, "is a directory", "give a file name such as results.csv")
        try:
            self._lock = RunLock(self.path).acquire()
        except OSError as e:
            raise os_error(self.path, e, "create a lock file beside it") from None
        try:
            exists = os.path.exists(self.path) and os.path.getsize(self.path) > 0
            if exists:
                self._check_meta()
                self._read()
            else:
                self._write_meta()
                with open(self.path, "w") as f:
                    f.write(self.header + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            self.close()
            raise os_error(self.path, e, "open it for writing") from None
        except BaseException:
            self.close()
            raise
        return self

    def _check_meta(self) -> None:
        if self.meta is None:
            return
        if not os.path.exists(self.meta_path):
            raise _err(
                self.path,
                f"exists but has no {os.path.basename(self.meta_path)} describing its run",
                "use a new --out (or delete the file) to start over",
            )
        try:
            with open(self.meta_path) as f:
                old = json.load(f)
        except Exception as e:  # noqa: BLE001
            raise _err(
                self.meta_path,
                f"unreadable run description ({type(e).__name__}: {e})",
                "use a new --out (or delete both files)",
            ) from None
        want = json.loads(json.dumps(self.meta))
        diff = [k for k in sorted(set(old) | set(want)) if old.get(k) != want.get(k)]
        if diff:
            k = diff[0]
            raise _err(
                self.path,
                f"was written by a different run ({k}: {old.get(k)!r} there, {want.get(k)!r} now"
                + (f"; also {', '.join(diff[1:4])}" if len(diff) > 1 else "")
                + ")",
                "rerun with the same settings to resume, or use a new --out",
            )

    def _write_meta(self) -> None:
        if self.meta is not None:
            write_atomic(self.meta_path, json.dumps(self.meta, indent=1, sort_keys=True))

    def _read(self) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        nl = data.find(b"\n")
        head = (data if nl < 0 else data[:nl]).decode("utf-8", errors="replace").strip()
        if head != self.header:
            raise _err(
                self.path,
                f"has header {head[:80]!r} but this run writes {self.header!r}",
                "use a new --out for a different command or columns",
            )
        end = data.rfind(b"\n") + 1
        if nl < 0 or end < len(data):
            # the bytes after the last newline are a row cut by a kill (or a header without its newline):
            # drop them, so that appends start on a fresh line
            with open(self.path, "r+b") as f:
                if nl < 0:
                    f.seek(0, os.SEEK_END)
                    f.write(b"\n")
                else:
                    f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
            if nl < 0:
                return
        ncol = len(self.columns)
        for raw in data[nl + 1 : end].split(b"\n"):
            ln = raw.decode("utf-8", errors="replace")
            if not ln.strip():
                continue
            parts = ln.split(",")
            try:
                idx = int(parts[0])
                [float(p) for p in parts[1:]]
            except ValueError:
                raise _err(
                    self.path, f"has a malformed row {ln[:60]!r}", "delete that row (or the file) and rerun"
                ) from None
            if len(parts) != ncol:
                raise _err(
                    self.path,
                    f"row {ln[:60]!r} has {len(parts)} fields, header has {ncol}",
                    "delete that row (or the file) and rerun",
                )
            self.rows.setdefault(idx, ln)

    @property
    def done(self) -> set[int]:
        return set(self.rows)

    def nonfinite(self) -> list[int]:
        """Indices of the rows with a NaN or infinite value (untrusted points), ascending."""
        return sorted(i for i, ln in self.rows.items() if not all(math.isfinite(float(v)) for v in ln.split(",")[1:]))

    # writing --------------------------------------------------------------
    def append(self, rows: Sequence[Sequence]) -> None:
        """Append rows ``(index, *values)`` with one write + fsync; skips indices already present.
        A failed write (InputError naming the file) leaves the earlier rows, and at most one torn line
        that the next open drops."""
        lines = {}
        for r in rows:
            idx = int(r[0])
            if idx in self.rows or idx in lines:
                continue
            if len(r) != len(self.columns):
                raise ValueError(f"row {r!r} has {len(r)} fields, expected {len(self.columns)}")
            lines[idx] = ",".join(format_value(v) for v in r)
        if not lines:
            return
        try:
            _write_all(self._fd, ("\n".join(lines.values()) + "\n").encode())
        except OSError as e:
            raise os_error(self.path, e, f"append {len(lines)} row(s)") from None
        self.rows.update(lines)

    def finalize(self) -> None:
        """Rewrite the file sorted by index without duplicates (atomic), if it is not already."""
        self._close_fd()
        try:
            with open(self.path) as f:
                body = [ln for ln in f.read().split("\n")[1:] if ln.strip()]
            idx = [int(ln.split(",", 1)[0]) for ln in body]
            if idx == sorted(set(idx)):
                return
            write_atomic(self.path, self.header + "\n" + "".join(self.rows[i] + "\n" for i in sorted(self.rows)))
        except OSError as e:
            raise os_error(self.path, e, "rewrite it sorted (its rows are all there, unsorted)") from None

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Close the file and release its lock."""
        self._close_fd()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()


def read_csv(path: str) -> tuple[list[str], np.ndarray]:
    """(columns, float64 array (rows, columns)) of a results CSV (complete rows only)."""
    if not os.path.isfile(path):
        raise _err(path, "CSV file not found", "check the path")
    try:
        with open(path) as f:
            lines = f.read().split("\n")
    except Exception as e:  # noqa: BLE001
        raise _err(path, f"unreadable ({type(e).__name__}: {e})") from None
    cols = lines[0].strip().split(",")
    if not cols or cols[0] != "index":
        raise _err(path, f"is not a fastgeom results CSV (header {lines[0][:60]!r})", "pass a file written by --out")
    rows = []
    for ln in lines[1:-1]:
        if not ln.strip():
            continue
        parts = ln.split(",")
        if len(parts) != len(cols):
            raise _err(path, f"row {ln[:60]!r} has {len(parts)} fields, header has {len(cols)}")
        try:
            rows.append([float(p) for p in parts])
        except ValueError:
            raise _err(path, f"has a malformed row {ln[:60]!r}") from None
    return cols, np.array(rows, dtype=np.float64).reshape(len(rows), len(cols))
