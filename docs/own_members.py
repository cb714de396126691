"""A griffe extension for the API reference: each public name is documented once, on the page of the module a
user imports it from, not again on every page of a module that re-exports it (DeZero's layout re-exports
`Parameter` from `layers`, `Variable` from `functions`, ...)."""

from __future__ import annotations

from typing import Any

import griffe

# The reference's pages, in order: a name is documented on the first of them that exports it.
PAGES = (
    "xdezero.core",
    "xdezero.functions",
    "xdezero.layers",
    "xdezero.models",
    "xdezero.optimizers",
    "xdezero.checkpoint",
    "xdezero.tapes",
    "xdezero.tapes.graphs",
    "xdezero.datasets",
    "xdezero.dataloaders",
    "xdezero.transforms",
    "xdezero.utils",
    "xdezero.cuda",
    "xdezero.core_simple",
    "xdezero.functions_conv",
    "xdezero.backends",
    "xdezero.distributed",
    "xdezero.testing",
)


class OwnMembersOnly(griffe.Extension):
    """Drop from each page the names that an earlier page documents (by the object they stand for)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[str] = set()
        for path in PAGES:
            module = pkg if path == pkg.path else pkg.get_member(path.removeprefix(pkg.path + "."))
            for name, member in list(module.members.items()):
                if name.startswith("_") or (module.exports is not None and name not in module.exports):
                    continue
                target = member.target_path if member.is_alias else member.path
                if target in seen:
                    del module.members[name]
                else:
                    seen.add(target)
