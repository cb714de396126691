"""Files of arrays: atomic writes, the `.npz` layout, and nested state (dicts of numbers and arrays) in one `.npz`.

A write to a path goes to a temporary file beside the target (the symlink's target when the path is a link), is
flushed to disk, and replaces the target in one rename: a crash leaves the old file or the new one, never half of
one. The temporary file is removed on any failure; one left by a killed process (SIGKILL runs no handler) is
removed by the next write to the same file. A file object is written as it is, where it stands.

Nested state is stored without pickle: its structure, numbers and strings as JSON in the entry `__state__`,
each array as its own `.npy` entry (dtypes NumPy lacks as their bit pattern, named in the JSON).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import zipfile
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any, TypeAlias

import numpy as np

from xdezero.backends import Bits, to_host

STATE_ENTRY = "__state__"

# What the weights and checkpoint functions accept as a file: a path, or a binary file object.
FileLike: TypeAlias = str | os.PathLike[str] | IO[bytes]


# --- writing ---------------------------------------------------------------------------------------


def _temporaries_of(path: str) -> str:
    directory, base = os.path.split(path)
    return os.path.join(directory, f".{glob.escape(base)}.*.tmp")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _remove_abandoned(path: str) -> None:
    """Remove temporary files of `path` whose writing process no longer runs (it was killed mid-write)."""
    for tmp in glob.glob(_temporaries_of(path)):
        pid = os.path.basename(tmp).rsplit(".", 3)[-3]
        if pid.isdigit() and not _process_alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def atomic_write(target: FileLike, write: Callable[[IO[bytes]], None], what: str) -> str | None:
    """Call `write(f)` on a binary file for `target`: a path (written atomically, through a symlink to its
    target) or a writable binary file object. Returns the path written, None for a file object."""
    if hasattr(target, "write"):
        write(target)
        return None
    path = os.fspath(target)
    real = os.path.realpath(path)  # write through a symlink, as open() and np.savez do
    directory = os.path.dirname(real)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{what}({path!r}): the directory {directory!r} does not exist")
    _remove_abandoned(real)
    tmp = os.path.join(directory, f".{os.path.basename(real)}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, real)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename == tmp:  # name the user's file, not the temporary one
            raise type(e)(e.errno, f"{what}: {e.strerror}", path) from e
        raise
    return path


def write_npz(f: IO[bytes], arrays: dict[str, np.ndarray]) -> None:
    """The zip layout of np.savez, written by hand so that any key (even 'file') is allowed and nothing pickles."""
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, a in arrays.items():
            with zf.open(key + ".npy", mode="w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, np.ascontiguousarray(a), allow_pickle=False)


# --- reading ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def opened(source: FileLike, where: str, expected: str) -> Iterator[IO[bytes]]:
    """`source` open for reading as a binary file (a path is opened and closed here; a file object is read from
    where it stands), after checking that it starts like an `.npz` archive; `expected` names what it should be."""
    if hasattr(source, "read"):
        f = source
        close = False
    else:
        path = os.fspath(source)
        if os.path.isdir(path):
            raise IsADirectoryError(f"{where}: this is a directory; pass {expected}")
        f = open(path, "rb")  # closed below, whatever np.load does with a damaged zip
        close = True
    try:
        _check_npz_magic(f, where, expected)
        try:
            yield f
        except (zipfile.BadZipFile, EOFError, zlib.error) as e:
            raise ValueError(f"{where}: the .npz archive is damaged or truncated ({type(e).__name__}: {e})") from e
    finally:
        if close:
            f.close()


def _check_npz_magic(f: IO[bytes], where: str, expected: str) -> None:
    """Reject what np.load would not open as a zip archive (an empty file, a .npy, anything it would unpickle)."""
    start = f.tell()
    head = f.read(len(np.lib.format.MAGIC_PREFIX))
    f.seek(start)
    if not head:
        raise ValueError(f"{where}: the file is empty, not {expected}")
    if head.startswith(np.lib.format.MAGIC_PREFIX):
        raise ValueError(f"{where}: expected an .npz archive of named arrays, found a single .npy array")
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # a zip's first local header, or an empty zip
        raise ValueError(
            f"{where}: not {expected} (not a zip archive; NumPy would read it as pickled data, which is never loaded)"
        )


def read_entry(archive: Any, key: str, where: str, what: str) -> np.ndarray:
    """Entry `key` of an open np.load archive; a pickled or damaged entry is an error naming `what` it holds."""
    try:
        return archive[key]
    except ValueError as e:  # an object array (pickled), or a damaged .npy header
        raise ValueError(
            f"{where}: {what} cannot be read: it is stored as pickled objects (never loaded) or its header is "
            f"damaged ({e})"
        ) from e


def read_text(archive: Any, key: str, where: str, what: str) -> str:
    """Entry `key` holding one string (as written from `np.array(text)`)."""
    entry = read_entry(archive, key, where, what)
    if entry.dtype.kind != "U" or entry.size != 1:
        raise ValueError(
            f"{where}: {what} is damaged (expected one string, found {entry.dtype} of shape {entry.shape})"
        )
    return str(entry.reshape(-1)[0])


# --- nested state ----------------------------------------------------------------------------------


def _encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"state keys must be strings, got {sorted(map(repr, value))}")
        return {k: _encode(v, arrays) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v, arrays) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        host = to_host(value)
        key = f"a{len(arrays)}"
        if isinstance(host, Bits):
            arrays[key] = host.bits
            return {"__array__": key, "bits_of": host.dtype}
        arrays[key] = host
        return {"__array__": key}
    raise TypeError(f"state holds a {type(value).__name__}; expected dicts, lists, numbers, strings and arrays")


def write_state(f: IO[bytes], state: dict[str, Any]) -> None:
    """Write nested state (dicts with string keys, lists, numbers, strings, None, arrays of any library) as an .npz."""
    arrays: dict[str, np.ndarray] = {}
    structure = json.dumps(_encode(state, arrays))
    write_npz(f, {STATE_ENTRY: np.array(structure), **arrays})


def _decode(value: Any, archive: Any, where: str) -> Any:
    if isinstance(value, dict):
        if "__array__" in value:
            a = read_entry(archive, value["__array__"], where, f"array {value['__array__']!r}")
            return Bits(a, value["bits_of"]) if "bits_of" in value else a
        return {k: _decode(v, archive, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, archive, where) for v in value]
    return value


def read_state(f: IO[bytes], where: str) -> dict[str, Any]:
    """The nested state that `write_state` wrote; arrays as NumPy arrays (or `Bits`), on the host."""
    with np.load(f, allow_pickle=False) as archive:
        if STATE_ENTRY not in archive.files:
            raise ValueError(
                f"{where}: this .npz holds no saved state (no {STATE_ENTRY!r} entry); a weights file is read by "
                "load_weights"
            )
        try:
            structure = json.loads(read_text(archive, STATE_ENTRY, where, "the state's structure"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: the state's structure is damaged ({e})") from e
        return _decode(structure, archive, where)
