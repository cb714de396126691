"""Run one of the book's step scripts on DeZero, or on xdezero through a `dezero` -> `xdezero` alias.

    PYTHONPATH=. python tests/_book_runner.py dezero|xdezero SCRIPT [NAME=VALUE ...]

Each NAME=VALUE replaces the script's top-level assignment `NAME = ...` (e.g. `max_epoch=3` for a short run);
the assignment must occur exactly once, or the runner stops with exit status 3 naming it. NumPy's global
generator is seeded with 0 first, so that scripts drawing without a seed (step 54's dropout masks, step 59's
SinCurve noise) print the same numbers on both libraries. Used by tests/test_book_steps.py.
"""

from __future__ import annotations

import importlib
import re
import sys

import numpy as np

from tests.dezero_oracle import SUBMODULES


def alias_dezero_to_xdezero() -> None:
    """`import dezero[.sub]` gives `xdezero[.sub]` from now on in this process."""
    import xdezero

    sys.modules["dezero"] = xdezero
    for name in SUBMODULES:
        sys.modules[f"dezero.{name}"] = importlib.import_module(f"xdezero.{name}")


def with_overrides(source: str, overrides: list[str]) -> str:
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            sys.exit(f"_book_runner: override {item!r} is not NAME=VALUE")
        source, count = re.subn(rf"^{name} = .*$", f"{name} = {value}", source, flags=re.MULTILINE)
        if count != 1:
            print(f"_book_runner: expected one top-level `{name} = ...` in the script, found {count}", file=sys.stderr)
            sys.exit(3)
    return source


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in ("dezero", "xdezero"):
        sys.exit("usage: python tests/_book_runner.py dezero|xdezero SCRIPT [NAME=VALUE ...]")
    library, script, overrides = argv[0], argv[1], argv[2:]
    if library == "dezero":
        np.int = int  # DeZero 0.0.13 names np.int, which NumPy 2 removed
    else:
        alias_dezero_to_xdezero()
    with open(script, encoding="utf-8") as f:
        source = with_overrides(f.read(), overrides)
    np.random.seed(0)
    code = compile(source, script, "exec")
    exec(code, {"__name__": "__main__", "__file__": script, "__builtins__": __builtins__})


if __name__ == "__main__":
    main(sys.argv[1:])
