"""Drawing the computational graph behind a Variable with Graphviz (DeZero's `get_dot_graph`/`plot_dot_graph`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from xdezero.core import Function, Variable

__all__ = ["get_dot_graph", "plot_dot_graph"]


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _var_label(v: Variable | None, verbose: bool) -> str:
    if v is None:  # freed already: the graph only remembers that it existed
        return ""
    label = "" if v.name is None else str(v.name)
    if verbose and v.data is not None:
        if label:
            label += ": "
        label += f"{v.shape} {v.dtype}"
    return label


class _Graph:
    """Assigns stable DOT node names: a live Variable by identity, a freed one by (creator, output index)."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.lines: list[str] = []
        self.names: dict[Any, str] = {}

    def _name(self, key: Any, prefix: str) -> tuple[str, bool]:
        name = self.names.get(key)
        if name is not None:
            return name, False
        name = self.names[key] = f"{prefix}{len(self.names)}"
        return name, True

    def var(self, v: Variable | None, key: Any) -> str:
        name, new = self._name(key, "v")
        if new:
            self.lines.append(f"{name} [label={_quote(_var_label(v, self.verbose))}, color=orange, style=filled]")
        return name

    def func(self, f: Function) -> str:
        name, new = self._name(("f", id(f)), "f")
        if new:
            self.lines.append(f"{name} [label={_quote(type(f).__name__)}, color=lightblue, style=filled, shape=box]")
        return name


def _output_key(f: Function, index: int, y: Variable | None) -> Any:
    return ("v", id(y)) if y is not None else ("out", id(f), index)


def get_dot_graph(output: Variable, verbose: bool = True) -> str:
    """The DOT description of the graph that computed `output`: Variables (orange, labelled with their name,
    and with shape and dtype when `verbose`) and Functions (blue boxes) as nodes, data flow as edges.

    The walk is iterative, so graphs of any depth work.
    """
    if not isinstance(output, Variable):
        raise TypeError(f"get_dot_graph: expected a Variable, got {type(output).__name__}")
    graph = _Graph(verbose)
    graph.var(output, ("v", id(output)))
    stack = [output.creator] if output.creator is not None else []
    seen = {id(f) for f in stack}
    edges: list[str] = []
    while stack:
        f = stack.pop()
        fname = graph.func(f)
        for index, ref in enumerate(f.outputs):
            y = ref()
            edges.append(f"{fname} -> {graph.var(y, _output_key(f, index, y))}")
        for i, x in enumerate(f._current_inputs()):
            if x is not None:  # the live graph wins, as in backward: x may have been unchained
                creator = x.creator
                key = ("v", id(x))
            else:
                creator, index = f._recorded_source(i)
                key = ("out", id(creator), index) if creator is not None else ("in", id(f), i)
            edges.append(f"{graph.var(x, key)} -> {fname}")
            if creator is not None and id(creator) not in seen:
                seen.add(id(creator))
                stack.append(creator)
    body = "\n".join(graph.lines + edges)
    return "digraph g {\n" + body + "\n}\n"


def plot_dot_graph(output: Variable, verbose: bool = True, to_file: str | os.PathLike[str] = "graph.png") -> Any:
    """Write the graph of `output` as DOT text to `to_file` with a `.dot` suffix and render it to `to_file`
    with Graphviz's `dot` program, in the format named by its extension (png, svg, pdf, ...).

    A `to_file` ending in `.dot` only writes the DOT text. Returns an IPython Image when IPython is running.
    """
    to_file = Path(to_file)
    fmt = to_file.suffix[1:].lower()
    if not fmt:
        raise ValueError(
            f"plot_dot_graph: to_file needs an extension naming the format (e.g. graph.png), got {to_file}"
        )
    dot_path = to_file.with_suffix(".dot")
    dot_path.write_text(get_dot_graph(output, verbose), encoding="utf-8")
    if fmt == "dot":
        return None
    dot = shutil.which("dot")
    if dot is None:
        raise RuntimeError(
            f"plot_dot_graph needs the Graphviz program `dot`, which is not on PATH; install Graphviz "
            f"(e.g. apt install graphviz, brew install graphviz, conda install graphviz). The DOT text was "
            f"written to {dot_path}."
        )
    result = subprocess.run([dot, "-T", fmt, "-o", str(to_file), str(dot_path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"Graphviz `dot` failed to render {dot_path} as {fmt}: {result.stderr.strip()}")
    if "IPython" in sys.modules:  # in a notebook, show the picture inline as DeZero does
        try:
            from IPython import display

            return display.Image(filename=str(to_file))
        except Exception:
            return None
    return None
