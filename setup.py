"""Extension build for fastgeom._C (everything else lives in pyproject.toml).

Build switches (environment variables):

=====================  =====================================================================
FASTGEOM_BUILD_EXT     ``auto`` (default) builds the C++ extension when torch and a C++
                       compiler are importable/present; ``0`` skips it; ``1`` makes a failed
                       build an error instead of a warning.
FASTGEOM_BUILD_CUDA    ``auto`` (default): CUDA sources are added when nvcc (CUDA_HOME) and a
                       CUDA build of torch exist and either a GPU is visible or
                       TORCH_CUDA_ARCH_LIST is set; ``0`` never; ``1`` always (error if it cannot).
TORCH_CUDA_ARCH_LIST   e.g. ``9.0`` for H100/H200; needed to build CUDA without a visible GPU.
CUDA_HOME              the CUDA toolkit (default /usr/local/cuda).
=====================  =====================================================================

Without torch at build time (pip's build isolation) or without a compiler, the pure-Python
package installs and falls back to torch kernels; ``fastgeom.info()`` reports it.
Use ``pip install --no-build-isolation .`` to build against the torch already installed.
"""

import glob
import os
import shutil
import subprocess
import warnings

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    v = os.environ.get(name, "auto").strip().lower()
    if v in ("0", "false", "no", "off"):
        return "0"
    if v in ("1", "true", "yes", "on"):
        return "1"
    return "auto"


def _compiler_version(cmd):
    try:
        out = subprocess.run([cmd, "--version"], capture_output=True, text=True, timeout=20)
        return out.stdout.splitlines()[0].strip()
    except Exception:  # noqa: BLE001 - version string only
        return "unknown"


def _extensions():
    ext_flag = _flag("FASTGEOM_BUILD_EXT")
    cuda_flag = _flag("FASTGEOM_BUILD_CUDA")
    if ext_flag == "0":
        print("fastgeom: FASTGEOM_BUILD_EXT=0, skipping the compiled extension")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension as cx
    except ImportError as e:
        msg = (
            "fastgeom: torch is not importable at build time (build isolation?); installing the "
            "pure-Python package. Use `pip install --no-build-isolation .` to build fastgeom._C."
        )
        if ext_flag == "1" or cuda_flag == "1":
            raise RuntimeError(msg) from e
        print(msg)
        return [], {}
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        msg = f"fastgeom: no C++ compiler ({cxx!r}) found; installing the pure-Python package."
        if ext_flag == "1" or cuda_flag == "1":
            raise RuntimeError(msg)
        print(msg)
        return [], {}

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "ops", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    # headers: a change to any of them rebuilds the extension (ninja also tracks them by depfile)
    headers = sorted(
        glob.glob(os.path.join("csrc", "**", "*.h"), recursive=True)
        + glob.glob(os.path.join("csrc", "**", "*.cuh"), recursive=True)
    )
    nvcc = os.path.join(cx.CUDA_HOME, "bin", "nvcc") if cx.CUDA_HOME else None
    have_nvcc = bool(nvcc and os.path.exists(nvcc))
    cuda_torch = torch.version.cuda is not None
    if cuda_flag == "1":
        if not (have_nvcc and cuda_torch):
            raise RuntimeError(
                f"FASTGEOM_BUILD_CUDA=1 but nvcc found={have_nvcc} (CUDA_HOME={cx.CUDA_HOME}), "
                f"torch CUDA build={cuda_torch}. Set CUDA_HOME and install a CUDA build of torch."
            )
        with_cuda = True
    elif cuda_flag == "0":
        with_cuda = False
    else:
        with_cuda = (
            have_nvcc and cuda_torch and (torch.cuda.is_available() or bool(os.environ.get("TORCH_CUDA_ARCH_LIST")))
        )
    nvcc_version = "none"
    if with_cuda:
        nvcc_version = _compiler_version(nvcc)
        try:
            nvcc_version = (
                subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
            )
        except Exception:  # noqa: BLE001
            pass
    meta = {
        "FASTGEOM_TORCH_VERSION": torch.__version__,
        "FASTGEOM_CXX_VERSION": _compiler_version(cxx),
        "FASTGEOM_NVCC_VERSION": nvcc_version,
        "FASTGEOM_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST", "auto") if with_cuda else "none",
    }
    macros = [(k, '"' + v.replace('"', "'") + '"') for k, v in meta.items()]
    cxx_flags = ["-O3"]
    include_dirs = [os.path.join(HERE, "csrc")]
    # nvidia headers shipped in the torch wheel (cusparse.h etc.), needed by ATen's CUDA headers
    for site in {os.path.dirname(os.path.dirname(torch.__file__))}:
        for inc in glob.glob(os.path.join(site, "nvidia", "*", "include")):
            include_dirs.append(inc)
    if with_cuda:
        macros.append(("FASTGEOM_WITH_CUDA", "1"))
        ext = cx.CUDAExtension(
            "fastgeom._C",
            sources + cuda_sources,
            include_dirs=include_dirs,
            define_macros=macros,
            depends=headers,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
        )
    else:
        ext = cx.CppExtension(
            "fastgeom._C",
            sources,
            include_dirs=include_dirs[:1],
            define_macros=macros,
            depends=headers,
            extra_compile_args={"cxx": cxx_flags},
        )
    print(f"fastgeom: building fastgeom._C (cuda={with_cuda}) from {len(ext.sources)} sources")

    required = ext_flag == "1" or cuda_flag == "1"

    class OptionalBuildExt(cx.BuildExtension):
        """Build _C; in auto mode a failed build falls back to the pure-Python package."""

        def run(self):
            try:
                super().run()
            except Exception as e:  # noqa: BLE001
                if required:
                    raise
                warnings.warn(
                    f"fastgeom: building the extension failed ({e}); the package falls "
                    "back to torch kernels. fastgeom.info() reports this.",
                    stacklevel=2,
                )

    return [ext], {"build_ext": OptionalBuildExt.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
