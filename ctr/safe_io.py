"""Safe writes for records and checkpoints (docs/architecture.md §4): a temp file in the same
directory, fsync, then ``os.replace``; nothing but a regular file is ever replaced, and a failed
write names the path and leaves any old file as it was.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np
import torch
from torch import Tensor


def _check_replaceable(path: Path) -> None:
    """Refuse to replace anything at ``path`` that is not a regular file (directory, FIFO, device)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device node" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "not a regular file")
        raise ValueError(f"refusing to write {path}: it exists and is {kind}, not a regular file")


def _atomic_write(path: Union[str, Path], mode: str, write: Callable[[Any], None]) -> None:
    """Write ``path`` via a temp file in the same directory, fsync, then ``os.replace``.

    Nothing but a regular file is replaced (``ValueError`` naming the path); an ``OSError``
    (disk full, read-only directory) is re-raised as one naming ``path`` and the cause, with
    the temp file removed and any old file at ``path`` left as it was.
    """
    path = Path(path)
    _check_replaceable(path)
    tmp: Optional[str] = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        # the CLI prints "[Errno N] <cause>: '<path>'" for the file the user named
        raise OSError(e.errno, f"cannot write: {e.strerror or e}", str(path)) from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_torch_save(obj: Any, path: Union[str, Path]) -> None:
    """``torch.save`` to a temp file in the same directory, fsync, then ``os.replace``.

    Refuses to replace anything but a regular file (``ValueError``); write failures raise an
    ``OSError`` naming ``path`` (see :func:`_atomic_write`).
    """
    _atomic_write(path, "wb", lambda f: torch.save(obj, f))


def atomic_write_json(obj: Any, path: Union[str, Path]) -> None:
    """Write ``obj`` (through :func:`jsonable`) as indented JSON to ``path``, atomically.

    Refuses to replace anything but a regular file (``ValueError`` naming the path); disk-full
    or read-only failures raise an ``OSError`` naming ``path`` and the cause.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> atomic_write_json({"auc": float("nan")}, d / "r.json")
        >>> (d / "r.json").read_text()
        '{\\n  "auc": null\\n}\\n'
        >>> atomic_write_json({}, d)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: refusing to write ...: it exists and is a directory, not a regular file
    """
    def write(f: Any) -> None:
        json.dump(jsonable(obj), f, indent=2, sort_keys=False)
        f.write("\n")

    _atomic_write(path, "w", write)


def jsonable(obj: Any) -> Any:
    """Plain-JSON form: NaN/inf -> None, tensors/numpy scalars -> numbers, tuples -> lists."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def check_writable(path: Union[str, Path], what: str = "output") -> None:
    """Fail before any training when ``path`` cannot be written later: it exists and is not a
    regular file (``ValueError``), or its directory cannot be created or written (``OSError``
    naming the path and the cause). A probe file is created and removed, so a read-only file
    system is caught even when running as root.

    >>> import tempfile
    >>> check_writable(Path(tempfile.mkdtemp()) / "sub" / "r.json")
    >>> check_writable(tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: refusing to write ...: it exists and is a directory, not a regular file
    """
    path = Path(path)
    _check_replaceable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=path.name + ".", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(e.errno, f"cannot write the {what}: {e.strerror or e}", str(path)) from None

