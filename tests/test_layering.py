"""The package's import graph flows one way: backends and config, core, functions, layers, models, optimizers,
data, command. A module may import modules of its own layer or below, never above; the lower layers import
nothing of xdezero inside a function (no import on a hot path), and no module imports a private name of another.

Run as a script (`python tests/test_layering.py`) it prints the graph, layer by layer.
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "xdezero"

# Lowest first. A module belongs to the first layer with a prefix that matches its dotted name.
LAYERS = [
    ("backends", ["xdezero._config", "xdezero._files", "xdezero._geometry", "xdezero.backends"]),
    ("core", ["xdezero.core", "xdezero.core_simple"]),
    ("functions", ["xdezero.functions", "xdezero.functions_conv", "xdezero.visualize", "xdezero.testing"]),
    ("layers", ["xdezero.layers"]),
    ("models", ["xdezero.models"]),
    ("optimizers", ["xdezero.optimizers"]),
    ("capture", ["xdezero.tapes"]),
    ("data", ["xdezero.transforms", "xdezero.datasets", "xdezero.dataloaders", "xdezero.utils", "xdezero.cuda"]),
    ("checkpoint", ["xdezero.checkpoint"]),
    ("command", ["xdezero.distributed", "xdezero.cli", "xdezero.__main__", "xdezero"]),
]
# Layers whose functions must not import xdezero modules (they run on every op or every step).
NO_INNER_IMPORTS = {"backends", "core", "functions", "layers", "optimizers", "capture"}


def layer_of(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {__file__}")


def modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: pathlib.Path, module: str) -> list[tuple[str, list[str], bool]]:
    """(imported module, names imported from it, whether the import sits inside a function or class)."""
    tree = ast.parse(path.read_text())
    top_level = set(map(id, tree.body))
    for node in tree.body:  # `if TYPE_CHECKING:` imports never run: they count as top level
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            top_level |= set(map(id, node.body))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{target}" if target else base
            if target == "xdezero":  # `from xdezero import functions` imports the submodule
                for alias in node.names:
                    found.append((f"xdezero.{alias.name}", [], id(node) not in top_level))
            elif target.startswith("xdezero"):
                found.append((target, [a.name for a in node.names], id(node) not in top_level))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("xdezero"):
                    found.append((alias.name, [], id(node) not in top_level))
    return found


def _known(target: str, known: dict) -> str:
    # `from xdezero import cuda` names a module; `from xdezero.core import Variable` names one inside it.
    while target not in known and "." in target:
        target = target.rpartition(".")[0]
    return target


def test_imports_flow_one_way():
    known = modules()
    back_edges = []
    for module, path in known.items():
        rank = layer_of(module)
        for target, _, _ in imports(path, module):
            target = _known(target, known)
            if layer_of(target) > rank and target != "xdezero":
                back_edges.append(f"{module} ({LAYERS[rank][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not back_edges, "imports against the layering:\n" + "\n".join(back_edges)


def test_no_xdezero_import_inside_functions_of_the_lower_layers():
    known = modules()
    inner = [
        f"{module} imports {target} inside a function"
        for module, path in known.items()
        if LAYERS[layer_of(module)][0] in NO_INNER_IMPORTS
        for target, _, nested in imports(path, module)
        if nested
    ]
    assert not inner, "\n".join(inner)


def test_no_private_name_is_imported_from_another_module():
    known = modules()
    private = [
        f"{module} imports {name} from {target}"
        for module, path in known.items()
        for target, names, _ in imports(path, module)
        for name in names
        if name.startswith("_") and not name.startswith("__") and _known(target, known) != module
    ]
    assert not private, "\n".join(private)


def test_private_modules_are_imported_only_inside_their_package():
    known = modules()
    outside = []
    for module, path in known.items():
        for target, _, _ in imports(path, module):
            parts = target.split(".")
            for i, part in enumerate(parts):
                package = ".".join(parts[:i])
                if part.startswith("_") and not part.startswith("__") and not module.startswith(package):
                    outside.append(f"{module} imports {target}, private to {package}")
    assert not outside, "\n".join(outside)


def test_backends_import_nothing_above_them():
    known = modules()
    for module, path in known.items():
        if layer_of(module) == 0:
            for target, _, _ in imports(path, module):
                assert layer_of(_known(target, known)) == 0, f"{module} imports {target}"


# Library knowledge lives in backends/ (and the registry there). These modules are the exceptions, by design:
# DeZero's `cuda` module is CuPy's by definition; the transports move bytes the way each library can; the image
# transforms work on NumPy arrays and PIL images.
MAY_NAME_LIBRARIES = ("xdezero.backends", "xdezero.cuda", "xdezero.distributed", "xdezero.transforms")
LIBRARIES = ("torch", "jax", "jaxlib", "cupy", "dask", "array_api_strict")


def library_branches(path: pathlib.Path) -> list[str]:
    """Places in `path` that ask which array library they run on: an `is_<library>_array` probe, an import of a
    library, `sys.modules["<library>"]`, or a comparison with a library's name."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute) and node.attr.startswith("is_") and node.attr.endswith("_array"):
            found.append(f"{where} probes {node.attr}")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{where} imports {n}" for n in names if n.partition(".")[0] in LIBRARIES]
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "sys.modules":
            found.append(f"{where} reads {ast.unparse(node)}")
        elif isinstance(node, ast.Compare):
            constants = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
            tuples = [
                e.value
                for c in node.comparators
                if isinstance(c, ast.Tuple)
                for e in c.elts
                if isinstance(e, ast.Constant)
            ]
            named = [v for v in constants + tuples if v in LIBRARIES]
            if named:
                found.append(f"{where} compares with {named[0]!r}")
    return found


def test_only_the_backends_know_array_libraries():
    branches = [
        f"{module}: {branch}"
        for module, path in modules().items()
        if not module.startswith(MAY_NAME_LIBRARIES)
        for branch in library_branches(path)
    ]
    assert not branches, "library knowledge outside backends/ (move it into the library's backend):\n" + "\n".join(
        branches
    )


# Inside backends/, the modules that may name a library, each for its reason; every other module of backends/
# asks the array's backend (backends/_portable.py's `Backend`, overridden per library) and never branches itself.
LIBRARY_MODULES = {
    "xdezero.backends._numpy": "NumPy's backend (its GPU is CuPy's, its bfloat16 ml_dtypes')",
    "xdezero.backends._torch": "torch's backend",
    "xdezero.backends._jax": "JAX's backend",
    "xdezero.backends._cupy": "CuPy's backend",
    "xdezero.backends._dask": "Dask's backend",
    "xdezero.backends._registry": "one row per library: how to tell its arrays, import it, list its devices",
    "xdezero.backends._cublas": "cuBLAS through ctypes, for the products of CuPy's graph captures only",
}


def test_only_the_library_modules_of_the_backends_know_array_libraries():
    known = modules()
    assert set(LIBRARY_MODULES) <= set(known), f"no such module: {sorted(set(LIBRARY_MODULES) - set(known))}"
    branches = [
        f"{module}: {branch}"
        for module, path in known.items()
        if module.startswith("xdezero.backends") and module not in LIBRARY_MODULES
        for branch in library_branches(path)
    ]
    assert not branches, (
        "library knowledge in a shared module of backends/ (make it a `Backend` method, overridden in the "
        "library's module):\n" + "\n".join(branches)
    )


def test_the_library_checker_finds_a_branch(tmp_path):
    path = tmp_path / "op.py"
    path.write_text(
        "import sys\nimport array_api_compat\nif array_api_compat.is_torch_array(x): pass\n"
        "if name == 'jax': pass\ntorch = sys.modules['torch']\nimport cupy\n"
    )
    assert len(library_branches(path)) == 4


def test_the_checker_finds_a_back_edge(tmp_path):
    # The test above must be able to fail: core importing functions is exactly what it exists to catch.
    path = tmp_path / "core.py"
    path.write_text("from xdezero.functions import sin\n")
    ((target, _, nested),) = imports(path, "xdezero.core")
    assert layer_of(target) > layer_of("xdezero.core") and not nested


if __name__ == "__main__":
    known = modules()
    for rank, (layer, _) in enumerate(LAYERS):
        print(f"[{layer}]")
        for module, path in known.items():
            if layer_of(module) == rank:
                targets = sorted({_known(t, known) for t, _, _ in imports(path, module)} - {module})
                print(f"  {module} -> {', '.join(targets) or '-'}")
