"""JAX's persistent compilation cache for the command line.

A command compiles its programs once per machine: the compiled code is kept in the user's
cache directory (`$JAXOPT_TOKENS_CACHE_DIR`, else `$XDG_CACHE_HOME/jaxopt-tokens/jax`, else
`~/.cache/jaxopt-tokens/jax`), so a repeated command on the same shapes skips XLA. The cache
is bounded (`MAX_BYTES`, least recently used entries evicted); bounding it also makes JAX
guard every read and write with a file lock, so processes running at once never read a
half-written entry. `JAXOPT_TOKENS_NO_CACHE=1` turns it off; a `JAX_COMPILATION_CACHE_DIR`
the user set is left to JAX. The library itself never changes JAX's settings: only the
command line run as a program does (`main()` without arguments).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import jaxopt_tokens as jt

__all__ = ["cache_dir", "enable_compilation_cache", "MAX_BYTES", "ENV_DIR", "ENV_OFF"]

#: the environment variable naming the cache directory
ENV_DIR = "JAXOPT_TOKENS_CACHE_DIR"
#: the environment variable that turns the cache off (any value but "" and "0")
ENV_OFF = "JAXOPT_TOKENS_NO_CACHE"
#: the cache's bound in bytes
MAX_BYTES = 1 << 30


def cache_dir(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The directory the command line caches compiled programs in, or None when off."""
    if environ.get(ENV_OFF, "") not in ("", "0") or environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    if environ.get(ENV_DIR):
        return Path(environ[ENV_DIR])
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "jaxopt-tokens" / "jax"


def enable_compilation_cache() -> Path | None:
    """Point JAX's persistent cache at `cache_dir()` (every program cached, however quick
    its compile); the directory, or None when the cache is off or cannot be created."""
    where = cache_dir()
    if where is None:
        return None
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: run uncached rather than fail
        return None
    settings = {
        "jax_compilation_cache_dir": str(where),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
        "jax_compilation_cache_max_size": MAX_BYTES,
    }
    if "jax" in sys.modules:  # imported before the command started (a site hook, say)
        import jax

        for name, value in settings.items():
            jax.config.update(name, value)
    else:  # JAX reads these when a command first imports it; nothing is imported here
        for name, value in settings.items():
            os.environ.setdefault(name.upper(), str(value))
    # the traced and lowered programs too, beside the compiled ones (no JAX imported here)
    jt.keep_programs_in(where / "programs")
    return where
