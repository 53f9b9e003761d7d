"""Programs kept ahead of time: what makes a repeated command start in about a second.

`call(name, fn, *args)` runs `fn(*args)` as one jitted program. While a directory is set
(`keep_in`; only the command line sets one, beside its compilation cache), the program, traced
and lowered once, is kept there as a `jax.export` artifact (StableHLO in JAX's versioned
flatbuffer format: no pickle, nothing runs on load but the program itself). A later process
calling it on the same shapes loads it instead of tracing and lowering it again, and JAX's
persistent cache gives the compiled code, so a warm command pays little beyond importing JAX.

An artifact's name is a digest of everything the program depends on: its name, the static
part of its arguments (`equinox.partition`), the array shapes and dtypes, the platform, JAX's
and jaxlib's versions and the package's own source (an edited checkout never runs a stale
program). A corrupt or unreadable artifact is rebuilt; at most `MAX_ARTIFACTS` are kept (the
least recently used go). Inside a trace (`jit`, `vmap`, `grad` of a caller) `fn` is simply
inlined. Docs: *Command line*.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["call", "keep_in", "kept_in", "source_digest", "MAX_ARTIFACTS"]

#: the most artifacts kept in the directory
MAX_ARTIFACTS = 256
_PACKAGE = Path(__file__).resolve().parent
_where: list[Path] = []


def keep_in(directory: str | Path | None) -> None:
    """Keep exported programs in `directory` from now on (None: stop keeping them).

    Args:
        directory: where the artifacts go (created when the first is written), or None.
    """
    _where[:] = [] if directory is None else [Path(directory)]


def kept_in() -> Path | None:
    """The directory exported programs are kept in.

    Returns:
        The directory `keep_in` set, or None.
    """
    return _where[0] if _where else None


@functools.cache
def source_digest() -> str:
    """A digest of the package's Python sources (a few milliseconds; once per process)."""
    h = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        h.update(str(path.relative_to(_PACKAGE)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _digest(fn: Callable[..., Any], name: str, static: str, leaves) -> str:
    import equinox as eqx
    import jax
    from jaxlib import version as jaxlib_version

    from ._version import __version__

    device = jax.devices()[0]
    parts = [
        name,
        f"{fn.__module__}.{fn.__qualname__}",
        static,
        # shapes, dtypes and weak types: a weak scalar promotes differently from a strong one
        repr(
            [(tuple(a.shape), str(a.dtype), bool(getattr(a, "weak_type", False))) for a in leaves]
        ),
        f"{device.platform}:{getattr(device, 'device_kind', '')}",
        str(jax.dtypes.canonicalize_dtype(float)),  # float64 only where x64 is on
        # the random streams' implementation (a simulation's draws depend on it)
        str(getattr(jax.config, "jax_default_prng_impl", "")),
        str(getattr(jax.config, "jax_threefry_partitionable", "")),
        jax.__version__,
        jaxlib_version.__version__,
        eqx.__version__,
        __version__,
        source_digest(),
    ]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def _store(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # as a file the user writes (mkstemp makes it private)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    kept = sorted(path.parent.glob("*.jaxexport"), key=lambda p: p.stat().st_mtime)
    for old in kept[: max(0, len(kept) - MAX_ARTIFACTS)]:
        old.unlink(missing_ok=True)
    hour_ago = time.time() - 3600
    for stale in path.parent.glob(".*.tmp"):  # left by a process killed while writing
        if stale.stat().st_mtime < hour_ago:
            stale.unlink(missing_ok=True)


@functools.lru_cache(maxsize=128)
def _jitted(fn):
    import equinox as eqx

    return eqx.filter_jit(fn)


def call(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` as one jitted program, loaded from its kept artifact when there is one.

    Args:
        name: the program's name (the start of its artifact's file name).
        fn: a pure function; it must return arrays in dicts, lists and tuples.
        *args: its arguments: pytrees whose array leaves are traced and whose other leaves
            are static (part of the artifact's name through their `repr`).

    Returns:
        `fn(*args)`.
    """
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    params, static = eqx.partition(args, eqx.is_array)
    leaves, tree = jax.tree.flatten(params)
    where = kept_in()
    if where is None or any(
        isinstance(x, jax.core.Tracer)  # pyright: ignore[reportAttributeAccessIssue]
        or jnp.issubdtype(x.dtype, jax.dtypes.extended)  # typed keys: not exported
        for x in leaves
    ):
        return _jitted(fn)(*args)

    def program(*arrays):
        return fn(*eqx.combine(jax.tree.unflatten(tree, arrays), static))

    path = where / f"{name}-{_digest(fn, name, f'{tree}{static!r}', leaves)}.jaxexport"
    try:
        exported = jax.export.deserialize(bytearray(path.read_bytes()))
    except Exception:  # absent, unreadable, corrupt or of another format: built below
        exported = None
    else:
        try:
            os.utime(path)  # recently used (a read-only cache is still read)
        except OSError:
            pass
    if exported is None:
        try:
            exported = jax.export.export(jax.jit(program))(*leaves)
        except Exception:  # a program JAX cannot export: run it as the library does
            return _jitted(fn)(*args)
        try:
            _store(path, bytes(exported.serialize()))
        except Exception:  # a full or read-only cache, an output it cannot serialize
            pass
    return exported.call(*leaves)
