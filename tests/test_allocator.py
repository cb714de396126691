"""Asked to (xdezero.tune_allocator(), XDEZERO_MALLOC=tuned, the xdezero command), xdezero tunes glibc's malloc so
that freed large arrays are reused, not page-faulted in again; `import xdezero` alone changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _on_glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError):
        return False


pytestmark = pytest.mark.skipif(not _on_glibc(), reason="the allocator tuning applies to glibc only")

# Three 2 MiB arrays allocated and freed together, 30 times: 6 MiB of free heap each round, more than glibc's
# own (adapted) trim threshold of 4 MiB, so an untuned process gives the pages back and faults them in again.
_PROGRAM = """
import resource
import numpy as np
import sys
import xdezero.backends as b
if sys.argv[1] == "call":
    b.tune_allocator()
for _ in range(3):
    arrays = [np.ones(1 << 19, dtype=np.float32) for _ in range(3)]
    del arrays
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
    arrays = [np.ones(1 << 19, dtype=np.float32) for _ in range(3)]
    del arrays
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, b.allocator_info(), sep="|")
"""


def _run(how: str = "import", **env: str) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("XDEZERO_MALLOC", "GLIBC_TUNABLES")}
    clean = {k: v for k, v in clean.items() if not (k.startswith("MALLOC_") and k.endswith("_"))}
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM, how], env={**clean, **env}, capture_output=True, text=True, check=True
    ).stdout
    faults, info = out.strip().split("|")
    return int(faults), info


def test_asking_keeps_freed_large_arrays_in_the_process():
    untouched, untouched_info = _run()
    called, called_info = _run("call")
    from_env, env_info = _run(XDEZERO_MALLOC="tuned")
    assert untouched_info == "as the process started it"  # import alone leaves the process as it was
    assert (
        called_info == env_info == f"{os.confstr('CS_GNU_LIBC_VERSION')}: mmap threshold 32 MiB, trim threshold 64 MiB"
    )
    # 30 rounds x 3 arrays x 512 pages of 4 KiB: the untuned process faults on (nearly) every page again.
    assert untouched > 10_000, untouched
    assert called < untouched / 10, (called, untouched)
    assert from_env < untouched / 10, (from_env, untouched)


def test_system_setting_and_user_malloc_tunables_win_over_a_call():
    faults, info = _run("call", XDEZERO_MALLOC="system")
    assert info == "as the process started it (XDEZERO_MALLOC=system)"
    assert faults > 10_000
    _, info = _run("call", GLIBC_TUNABLES="glibc.malloc.trim_threshold=1048576")
    assert info == "left to GLIBC_TUNABLES, which sets malloc parameters"
    _, info = _run("call", MALLOC_MMAP_THRESHOLD_="65536")
    assert info == "left to the MALLOC_*_ environment variables, which set malloc parameters"


def test_the_command_tunes_its_own_process():
    out = subprocess.run([sys.executable, "-m", "xdezero", "info"], capture_output=True, text=True, check=True).stdout
    assert "mmap threshold 32 MiB, trim threshold 64 MiB" in out


def test_unknown_setting_warns():
    out = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", "import xdezero"],
        env={**os.environ, "XDEZERO_MALLOC": "jemalloc"},  # warnings made errors: the import fails
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "XDEZERO_MALLOC='jemalloc' is not understood" in out.stderr
    assert "'tuned'" in out.stderr and "'system'" in out.stderr
