"""Graph drawing: the DOT text, and rendering through Graphviz's `dot` (faked where it is not installed)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

import xdezero.functions as F
from xdezero import Variable
from xdezero.visualize import get_dot_graph, plot_dot_graph


def nodes_and_edges(dot: str):
    nodes = dict(re.findall(r'^(\w+) \[label="([^"]*)"', dot, flags=re.M))
    edges = re.findall(r"^(\w+) -> (\w+)$", dot, flags=re.M)
    return nodes, edges


def example_graph():
    x = Variable(np.ones((2, 3), dtype=np.float32), name="x")
    w = Variable(np.ones((3,), dtype=np.float32), name="w")
    h = F.tanh(x)
    y = h * w + x
    y.name = "y"
    return x, w, h, y


def test_dot_graph_nodes_edges_and_labels():
    *_, y = example_graph()
    dot = get_dot_graph(y, verbose=True)
    assert dot.startswith("digraph g {\n") and dot.rstrip().endswith("}")
    nodes, edges = nodes_and_edges(dot)
    by_label = {label: name for name, label in nodes.items()}
    assert "x: (2, 3) float32" in by_label and "w: (3,) float32" in by_label and "y: (2, 3) float32" in by_label
    assert "(2, 3) float32" in by_label  # h: alive, unnamed
    assert sorted(label for label in nodes.values() if label in ("Tanh", "Mul", "Add")) == ["Add", "Mul", "Tanh"]
    assert "color=orange" in dot and "color=lightblue" in dot and "shape=box" in dot
    vx, vw, vh, vy = (
        by_label[k] for k in ("x: (2, 3) float32", "w: (3,) float32", "(2, 3) float32", "y: (2, 3) float32")
    )
    ftanh, fmul, fadd = by_label["Tanh"], by_label["Mul"], by_label["Add"]
    assert (vx, ftanh) in edges and (ftanh, vh) in edges
    assert (vh, fmul) in edges and (vw, fmul) in edges
    assert (fadd, vy) in edges and (vx, fadd) in edges
    # x feeds two functions but is one node; every node appears once.
    assert len(nodes) == len(set(nodes)) == 8  # x, w, h, h*w, y + Tanh, Mul, Add
    assert all(a in nodes and b in nodes for a, b in edges)


def test_dot_graph_not_verbose_and_freed_intermediates():
    x = Variable(np.ones(2), name="x")
    y = F.exp(F.sin(x) * 2.0)  # the intermediates are not held by anyone
    dot = get_dot_graph(y, verbose=False)
    nodes, edges = nodes_and_edges(dot)
    assert "x" in nodes.values() and "(2,)" not in dot
    assert {"Sin", "MulConstant", "Exp"} <= set(nodes.values())
    assert len(edges) == 6  # a chain x -> Sin -> . -> MulConstant -> . -> Exp -> y


def test_dot_graph_leaf_and_type_error():
    x = Variable(np.zeros(3), name="alone")
    nodes, edges = nodes_and_edges(get_dot_graph(x))
    assert list(nodes.values()) == ["alone: (3,) float64"] and edges == []
    with pytest.raises(TypeError, match="Variable"):
        get_dot_graph(np.zeros(3))


def test_dot_graph_escapes_names():
    x = Variable(np.zeros(1), name='say "hi"')
    assert r"say \"hi\"" in get_dot_graph(F.sin(x))


def test_dot_graph_of_a_deep_chain_does_not_recurse():
    x = Variable(np.zeros(1))
    y = x
    for _ in range(5000):
        y = F.sin(y)
    nodes, edges = nodes_and_edges(get_dot_graph(y, verbose=False))
    assert len(nodes) == 10001 and len(edges) == 10000


def test_plot_dot_graph_without_dot(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    _, _, _, y = example_graph()
    with pytest.raises(RuntimeError, match="Graphviz program `dot`"):
        plot_dot_graph(y, to_file=tmp_path / "g.png")
    assert (tmp_path / "g.dot").read_text().startswith("digraph g {")
    assert not (tmp_path / "g.png").exists()


def test_plot_dot_graph_runs_dot_without_a_shell(tmp_path, monkeypatch):
    calls = []

    def fake_run(args, **kwargs):
        calls.append((args, kwargs))
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(shutil, "which", lambda name: "/opt/graphviz/bin/" + name)
    monkeypatch.setattr(subprocess, "run", fake_run)
    _, _, _, y = example_graph()
    target = tmp_path / "my graph.svg"
    assert plot_dot_graph(y, to_file=str(target)) is None
    [(args, kwargs)] = calls
    assert isinstance(args, list) and not kwargs.get("shell", False)
    assert args == ["/opt/graphviz/bin/dot", "-T", "svg", "-o", str(target), str(tmp_path / "my graph.dot")]


def test_plot_dot_graph_reports_dot_failures(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/dot")
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: subprocess.CompletedProcess(args, 1, "", "bad format"))
    _, _, _, y = example_graph()
    with pytest.raises(RuntimeError, match="bad format"):
        plot_dot_graph(y, to_file=tmp_path / "g.xyz")


def test_plot_dot_graph_dot_only_and_bad_name(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    _, _, _, y = example_graph()
    assert plot_dot_graph(y, verbose=False, to_file=tmp_path / "g.dot") is None
    assert "x: " not in (tmp_path / "g.dot").read_text()
    with pytest.raises(ValueError, match="extension"):
        plot_dot_graph(y, to_file=tmp_path / "graph")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_plot_dot_graph_with_real_dot(tmp_path):
    _, _, _, y = example_graph()
    plot_dot_graph(y, to_file=tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
