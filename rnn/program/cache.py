"""Generated kernels on disk: a private per-user folder, imported from there so that
Numba's own cache (``cache=True``) keeps their machine code between runs.

Numba loads pickled index files from that folder, so it must be one nobody else can
write: ``$UNROLL_CACHE``, else ``$XDG_CACHE_HOME/unroll``, else ``~/.cache/unroll``,
created 0700 and checked for ownership. If it is not safe (or cannot be made), this
process uses a fresh private folder instead and compiles anew. A corrupt cache entry
is removed and rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import stat
import sys
import tempfile
import warnings
from pathlib import Path

_dirs: dict[str, Path] = {}  # the configured folder -> the one in use


def _safe(path: Path) -> bool:
    st = path.lstat()
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def cache_dir() -> Path:
    """The folder generated kernels live in (see the module docstring)."""
    base = os.environ.get("UNROLL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "unroll")
    if base in _dirs and _dirs[base].is_dir():
        return _dirs[base]
    path = Path(base) / "kernels"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        ok = _safe(path) and _safe(path.parent)
        why = "it is not a folder of yours that only you can write"
    except OSError as e:
        ok, why = False, str(e)
    if not ok:
        warnings.warn(f"unroll: not caching compiled kernels in {path} ({why}); using a "
                      f"private folder for this process", RuntimeWarning, stacklevel=2)
        path = Path(tempfile.mkdtemp(prefix="unroll-kernels-"))  # 0700, unpredictable
    _dirs[base] = path
    return path


def _drop_corrupt_index(fn) -> None:
    """Numba unpickles a function's cache index on its first call; a corrupt one raises
    there every time. Read it now and delete it if it does not load, so it is rebuilt."""
    cache = getattr(getattr(fn, "_cache", None), "_cache_file", None)
    if cache is None:  # NUMBA_DISABLE_JIT, or a Numba without this layout
        return
    try:
        cache._load_index()
    except Exception:  # noqa: BLE001 - whatever a damaged pickle raises
        Path(cache._index_path).unlink(missing_ok=True)


def load(src: str, prefix: str):
    """Import generated source as a module, written once to the cache folder under a
    name that is the hash of the source."""
    digest = hashlib.sha1(src.encode()).hexdigest()[:16]
    name = f"unroll_{prefix}_{digest}"
    path = cache_dir() / f"{prefix}_{digest}.py"
    if not path.exists() or path.read_text() != src:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(src)
        os.replace(tmp, path)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # Numba's cache finds a function's module by name
    spec.loader.exec_module(mod)
    for fn in vars(mod).values():
        if hasattr(fn, "py_func"):
            _drop_corrupt_index(fn)
    return mod
