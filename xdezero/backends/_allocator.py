"""glibc's malloc, tuned for array programs when asked: large temporaries are reused inside the process instead
of being handed back to the kernel on free and page-faulted in again on the next step.

glibc serves an allocation at or above its mmap threshold (128 KiB when a process starts) straight from the
kernel and unmaps it on free; below the threshold, free memory at the top of the heap beyond the trim threshold
goes back to the kernel too. A training step allocates and frees the same few arrays of a megabyte or more
every step, so it pays fresh page faults for each of them every time. glibc raises its mmap threshold by itself
after the first large free, but keeps trimming the heap, and how much depends on the order of frees.

`tune_allocator()` sets both thresholds once with `mallopt`: blocks below 32 MiB come from the heap, and up to
64 MiB of free heap stays in the process. The price is that memory: a process keeps up to 64 MiB it no longer
uses. A library must not change process-wide settings behind its user's back, so this happens only when asked:
a call to `xdezero.tune_allocator()`, XDEZERO_MALLOC=tuned in the environment (applied at `import xdezero`), or
the `xdezero` command, an application, for its own process. Nothing is changed where the C library is not
glibc, where GLIBC_TUNABLES or a MALLOC_*_ variable already sets a malloc parameter (the user's settings win), or
when XDEZERO_MALLOC=system.
"""

from __future__ import annotations

import ctypes
import os
import warnings

MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its adaptive threshold on 64-bit systems
TRIM_THRESHOLD = 64 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # the parameter numbers of glibc's <malloc.h>
_SETTINGS = ("tuned", "system")
# glibc's older spelling of its malloc tunables, still honoured
_MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

_state = "as the process started it"  # what was done, in words


def _glibc_version() -> str | None:
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.35"; unknown name or None elsewhere
    except (AttributeError, ValueError, OSError):
        return None
    return version if version and version.startswith("glibc") else None


def _setting() -> str:
    setting = os.environ.get("XDEZERO_MALLOC", "").strip().lower()
    if setting and setting not in _SETTINGS:
        warnings.warn(
            f"XDEZERO_MALLOC={setting!r} is not understood: use 'tuned' to tune glibc's malloc for large arrays, "
            "or 'system' to leave it as the process started it; leaving it as it is",
            RuntimeWarning,
            stacklevel=3,
        )
        return "system"
    return setting


def tune_allocator() -> str:
    """Set glibc's mmap and trim thresholds for this process (once), unless told or found not to; returns what
    was done, in words."""
    global _state
    if _state.startswith("glibc"):
        return _state
    version = _glibc_version()
    if _setting() == "system":
        _state = "as the process started it (XDEZERO_MALLOC=system)"
    elif version is None:
        _state = "left alone: the C library is not glibc"
    elif "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        _state = "left to GLIBC_TUNABLES, which sets malloc parameters"
    elif any(name in os.environ for name in _MALLOC_VARIABLES):
        _state = "left to the MALLOC_*_ environment variables, which set malloc parameters"
    else:
        mallopt = ctypes.CDLL(None).mallopt
        if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD):
            _state = f"{version}: mmap threshold 32 MiB, trim threshold 64 MiB"
        else:
            _state = f"left alone: {version} refused the thresholds"
    return _state


def apply_allocator_setting() -> str:
    """At import: tune only if the environment asks for it (XDEZERO_MALLOC=tuned); returns what was done."""
    return tune_allocator() if _setting() == "tuned" else _state


def allocator_info() -> str:
    """What `tune_allocator` did in this process, in words."""
    return _state
