"""The acceptance step as one custom kernel per round (Metal or CUDA), built once and reused.

Sources are kernels/acceptance.{metal,cu} in a checkout and mlx_spec/data/ in an installed
wheel. get_kernel() returns a drop-in for accept_greedy / accept_sampled on Metal and CUDA, and
None on the CPU backend or when MLX_SPEC_REFERENCE_ACCEPT=1 forces the pure-MLX reference.
"""

from __future__ import annotations

import hashlib
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Callable

import mlx.core as mx

from mlx_spec import acceptance, platform
from mlx_spec.errors import SpecError

FORCE_REFERENCE_ENV = "MLX_SPEC_REFERENCE_ACCEPT"
SOURCE_FILES = {"metal": "acceptance.metal", "cuda": "acceptance.cu"}
# Threads in the one group a round runs on. MLX raises if a Metal group exceeds the pipeline's
# limit, which can fall below 1024 with register use; 512 keeps a margin. CUDA blocks take 1024.
THREADS = {"metal": 512, "cuda": 1024}
KERNEL_DTYPES = (mx.float32, mx.float16, mx.bfloat16)
# MLX's Metal binding puts inputs of fewer than 8 elements in the constant address space, so
# the generated source (and a recompile) would change as k crosses 7; short inputs are padded.
MIN_INPUT = 8
_SECTION = re.compile(r"^// ==== (\w+) ====\n", re.M)


def source_dirs() -> list[Path]:
    """Where kernel sources are looked for: the checkout's kernels/, then the package data."""
    here = Path(__file__).resolve().parent
    return [here.parent / "kernels", here / "data"]


def load_source(backend: str) -> dict[str, str]:
    """The backend's kernel file cut at its markers: 'header' plus one body per kernel."""
    name = SOURCE_FILES[backend]
    for folder in source_dirs():
        path = folder / name
        if path.is_file():
            parts = _SECTION.split(path.read_text())
            sections = dict(zip(parts[1::2], parts[2::2]))
            sections["header"] = sections.pop("prelude") + sections.pop("common")
            return sections
    raise SpecError(
        f"acceptance kernel source {name} not found in {', '.join(map(str, source_dirs()))}",
        f"reinstall mlx-spec, or set {FORCE_REFERENCE_ENV}=1 to use the MLX reference",
    )


def reference_forced() -> bool:
    """True when the environment asks for the pure-MLX reference everywhere."""
    return os.environ.get(FORCE_REFERENCE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def kernel_backend() -> str | None:
    """'metal' or 'cuda' where an acceptance kernel can run; None on the CPU backend."""
    backend = platform.backend()
    return backend if backend in SOURCE_FILES else None


def backend_kernel_name() -> str:
    """What runs the acceptance step here, in words (for doctor and bench)."""
    backend = kernel_backend()
    if backend is None:
        return f"MLX reference (no kernel on the {platform.backend()} backend)"
    if reference_forced():
        return f"MLX reference ({FORCE_REFERENCE_ENV}=1)"
    return f"{backend} kernel"


def get_kernel(greedy: bool) -> Callable | None:
    """A function with accept_greedy's (greedy) or accept_sampled's signature, or None."""
    backend = kernel_backend()
    if backend is None or reference_forced():
        return None
    return _build(backend, greedy)


@lru_cache(maxsize=None)
def _build(backend: str, greedy: bool) -> Callable:
    sections = load_source(backend)
    make = mx.fast.metal_kernel if backend == "metal" else mx.fast.cuda_kernel
    name = "accept_greedy" if greedy else "accept_sampled"
    # MLX caches compiled CUDA kernels on disk by name: the source's hash in the name keeps an
    # edited or upgraded kernel from reusing the old one.
    digest = hashlib.sha256((sections["header"] + sections[name]).encode()).hexdigest()[:12]
    kernel = make(
        name=f"mlx_spec_{name}_{digest}",
        input_names=["target", "drafts"] if greedy else ["target", "q", "drafts", "u"],
        output_names=["out_n", "out_extra"],
        source=sections[name],
        header=sections["header"],
    )
    launch = _greedy_launcher if greedy else _sampled_launcher
    return launch(kernel, THREADS[backend])


@lru_cache(maxsize=None)
def _placeholder(dtype: mx.Dtype) -> mx.array:
    # Stands in for an absent input (no drafts at k = 0, no q for n-gram proposals); never read.
    return mx.zeros((MIN_INPUT,), dtype=dtype)


def _padded(x: mx.array, dtype: mx.Dtype) -> mx.array:
    """x as `dtype`, zero-padded to MIN_INPUT elements (the kernels read only the first k or
    k + 1, from the target's row count)."""
    x = x.astype(dtype)
    short = MIN_INPUT - x.size
    return mx.concatenate([x, mx.zeros((short,), dtype=dtype)]) if short > 0 else x


def _run(kernel, inputs: list, template: list, threads: int) -> tuple[mx.array, mx.array]:
    n, extra = kernel(
        inputs=inputs,
        template=template,
        grid=(threads, 1, 1),
        threadgroup=(threads, 1, 1),
        output_shapes=[(1,), (1,)],
        output_dtypes=[mx.int32, mx.int32],
    )
    return n.reshape(()), extra.reshape(())


def _greedy_launcher(kernel, threads: int) -> Callable:
    def accept_greedy_kernel(target_logits: mx.array, drafts: mx.array):
        k = drafts.shape[0]
        if (
            target_logits.ndim != 2
            or target_logits.shape[0] < k + 1
            or target_logits.dtype not in KERNEL_DTYPES
        ):
            return acceptance.accept_greedy(target_logits, drafts)  # shapes the kernel skips
        target = target_logits[: k + 1]
        ids = _padded(drafts, mx.int32) if k > 0 else _placeholder(mx.int32)
        return _run(kernel, [target, ids], [("T", target.dtype), ("THREADS", threads)], threads)

    return accept_greedy_kernel


def _sampled_launcher(kernel, threads: int) -> Callable:
    def accept_sampled_kernel(p: mx.array, q: mx.array | None, drafts: mx.array, u: mx.array):
        k, vocab = drafts.shape[0], p.shape[-1]
        supported = (
            p.ndim == 2
            and p.shape[0] >= k + 1
            and p.dtype in KERNEL_DTYPES
            and u.size >= k + 1
            and (q is None or (q.ndim == 2 and q.shape[0] >= k and q.shape[1] == vocab))
            and (q is None or q.dtype in KERNEL_DTYPES)
        )
        if not supported:
            return acceptance.accept_sampled(p, q, drafts, u)  # the reference decides
        has_q = q is not None and k > 0
        q_in = q[:k] if has_q else _placeholder(mx.float32)
        ids = _padded(drafts, mx.int32) if k > 0 else _placeholder(mx.int32)
        uniforms = _padded(u.reshape(-1)[: k + 1], mx.float32)
        # Every input dtype is a template argument: MLX names (and caches) a CUDA kernel by its
        # template arguments only, so a q of another dtype must not reuse a compiled kernel.
        template = [("T", p.dtype), ("TQ", q_in.dtype), ("HAS_Q", has_q), ("THREADS", threads)]
        return _run(kernel, [p[: k + 1], q_in, ids, uniforms], template, threads)

    return accept_sampled_kernel
