"""Mutation check: does the NumPy test suite notice small, plausible bugs in xdezero?

Each mutant below is one exact source-text replacement `old -> new` in one file of the package. For each mutant the
script copies a snapshot of the working tree (`git ls-files --cached --others --exclude-standard`, so uncommitted
and new untracked files count) into a fresh temporary directory, applies the replacement there, and runs pytest on
that copy with XDEZERO_BACKENDS=numpy:

1. the test files most likely to kill the mutant, with `-x`;
2. only if the mutant survived them, the rest of the suite (every other file), with `-x`, to confirm that it
   really survives.

A mutant whose `old` text does not occur exactly once in its file (the code changed under the list), or whose
mutated file does not compile, is reported as an error, with a message naming the mutant and the file: the list
must be kept honest, not skipped silently.

Before any mutant runs, the script checks that the copy's `xdezero` is the one imported (the repository is
installed editable into the environment, which must not win over the copy), and runs the unmutated snapshot on
the union of the targeted files: if that baseline fails, every mutant would look killed for the wrong reason, so
the script aborts.

Run it from anywhere, with the project's environment:

    python tests/mutation_check.py              # every mutant, 2 at a time
    python tests/mutation_check.py --jobs 1 --only sub_grad_sign adam_bias_correction
    python tests/mutation_check.py --list       # the mutants and whether their `old` text is still found

It prints a Markdown table (mutant, file, bug, result, first failing test, seconds). The exit status is 0 when
every mutant was killed, 1 when any survived, timed out or could not be applied, 2 when the setup failed (not a
git checkout, wrong `xdezero` imported, failing baseline). The Hypothesis profile is the suite's default unless
XDEZERO_HYPOTHESIS_PROFILE is set in the environment. This file is not collected by pytest (no `test_` prefix).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT = 300  # seconds per pytest run (the whole NumPy suite takes about 105 s on two cores)
PYTEST = ("-m", "pytest", "-x", "-q", "-ra", "-p", "no:cacheprovider")  # -ra: the FAILED lines read below


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    what: str  # the bug, in one phrase
    targets: tuple[str, ...]  # test files most likely to kill it, run first


GRADIENTS = ("tests/test_core_functions.py", "tests/test_functions.py", "tests/test_torch_oracle.py")
CAPTURE = (
    "tests/test_capture.py",
    "tests/test_capture_edges.py",
    "tests/test_capture_graphs.py",
    "tests/test_capture_cases.py",
)
OPTIMIZERS = ("tests/test_optimizers.py", "tests/test_optimizers_torch_oracle.py")

MUTANTS = (
    # --- signs in backward ---------------------------------------------------------------------------------
    Mutant(
        "sub_grad_sign",
        "xdezero/functions/arithmetic.py",
        "_unbroadcast(-gy, self.shapes[1]) if n1 else None)",
        "_unbroadcast(gy, self.shapes[1]) if n1 else None)",
        "Sub: gradient of x1 is +gy instead of -gy",
        GRADIENTS,
    ),
    Mutant(
        "div_grad_sign",
        "xdezero/functions/arithmetic.py",
        "_unbroadcast(-gx0 * x0 / x1, self.shapes[1])",
        "_unbroadcast(gx0 * x0 / x1, self.shapes[1])",
        "Div: divisor gradient +x0/x1² instead of -x0/x1²",
        GRADIENTS,
    ),
    Mutant(
        "neg_grad_sign",
        "xdezero/functions/arithmetic.py",
        'return -x\n\n    def backward(self, gy: Variable) -> Variable:\n        """gx = -gy."""\n        return -gy\n',
        'return -x\n\n    def backward(self, gy: Variable) -> Variable:\n        """gx = -gy."""\n        return gy\n',
        "Neg: gradient +gy instead of -gy",
        GRADIENTS,
    ),
    Mutant(
        "cos_grad_sign",
        "xdezero/functions/math.py",
        "return gy * -sin(x)",
        "return gy * sin(x)",
        "Cos: gradient +sin x instead of -sin x",
        GRADIENTS,
    ),
    Mutant(
        "tanh_grad_sign",
        "xdezero/functions/math.py",
        "return gy * (1 - y * y)",
        "return gy * (y * y - 1)",
        "Tanh: gradient y² - 1 instead of 1 - y²",
        GRADIENTS,
    ),
    # --- broadcasting: sum_to dropped ----------------------------------------------------------------------
    Mutant(
        "add_sum_to_dropped",
        "xdezero/functions/arithmetic.py",
        "_unbroadcast(gy, self.shapes[1]) if n1 else None)",
        "gy if n1 else None)",
        "Add: x1's gradient not summed back to its broadcast shape",
        ("tests/test_core_functions.py", "tests/test_core.py", "tests/test_properties.py"),
    ),
    Mutant(
        "matmul_sum_to_dropped",
        "xdezero/functions/shape.py",
        "gW = sum_to(matmul(_swap_last(x), gy), self.shapes[1])",
        "gW = matmul(_swap_last(x), gy)",
        "MatMul: W's gradient not summed over broadcast batch axes",
        ("tests/test_core_functions.py", "tests/test_functions.py", "tests/test_properties.py"),
    ),
    # --- generations in Function.__call__ ------------------------------------------------------------------
    Mutant(
        "generation_two_inputs_min",
        "xdezero/core.py",
        "generation = x0.generation if x0.generation > x1.generation else x1.generation",
        "generation = x0.generation if x0.generation < x1.generation else x1.generation",
        "two-input op takes the min generation of its inputs",
        ("tests/test_core.py", "tests/test_properties_graphs.py", "tests/test_edges_core.py"),
    ),
    Mutant(
        "generation_many_inputs_min",
        "xdezero/core.py",
        "generation = max([x.generation for x in inputs])",
        "generation = min([x.generation for x in inputs])",
        "op with 3+ inputs takes the min generation of its inputs",
        ("tests/test_core.py", "tests/test_properties_graphs.py", "tests/test_edges_core.py"),
    ),
    Mutant(
        "output_generation_not_incremented",
        "xdezero/core.py",
        "y.generation = generation + 1\n                self.outputs = [weakref.ref(y)]",
        "y.generation = generation\n                self.outputs = [weakref.ref(y)]",
        "single output gets its creator's generation, not one more",
        ("tests/test_core.py", "tests/test_properties_graphs.py", "tests/test_edges_core.py"),
    ),
    # --- backward() and the config flags -------------------------------------------------------------------
    Mutant(
        "backward_always_records_graph",
        "xdezero/core.py",
        'with using_config("enable_backprop", create_graph):',
        'with using_config("enable_backprop", True):',
        "backward() records the graph even without create_graph",
        ("tests/test_core.py", "tests/test_edges_core.py", "tests/test_engine_needs.py"),
    ),
    Mutant(
        "config_not_restored",
        "xdezero/_config.py",
        "                self._var.reset(entered[i][1])\n",
        "",
        "using_config/no_grad never restores the previous value on exit",
        ("tests/test_config.py", "tests/test_core.py"),
    ),
    # --- convolution padding -------------------------------------------------------------------------------
    Mutant(
        "im2col_pad_one_side",
        "xdezero/backends/_im2col.py",
        "out[:, :, ph : ph + h, pw : pw + w] = x",
        "out[:, :, :h, :w] = x",
        "pad_images puts all the padding after the image (bottom/right only)",
        ("tests/test_conv.py", "tests/test_torch_oracle_conv.py"),
    ),
    # --- label and id range checks -------------------------------------------------------------------------
    Mutant(
        "label_range_off_by_one",
        "xdezero/functions/loss.py",
        'return check_ids(ids, 0, n_classes, where, "label")',
        'return check_ids(ids, 0, n_classes + 1, where, "label")',
        "class id C accepted by softmax_cross_entropy / accuracy",
        ("tests/test_edges_labels.py", "tests/test_functions_errors.py"),
    ),
    Mutant(
        "id_range_check_off_by_one",
        "xdezero/backends/_checks.py",
        "if not low <= value < high:",
        "if not low <= value <= high:",
        "range check of ids accepts id == high (labels, embed_id rows)",
        ("tests/test_edges_labels.py", "tests/test_edges_indexing.py", "tests/test_functions_errors.py"),
    ),
    # --- the libraries' own kernels ---------------------------------------------------------------------------
    Mutant(
        "linear_grad_second_order_sign",
        "xdezero/functions/linear.py",
        "dgy = matmul(x, ggW) if dgy is None else dgy + matmul(x, ggW)",
        "dgy = matmul(x, ggW) if dgy is None else dgy - matmul(x, ggW)",
        "the backward of a hidden linear layer's gradient node drops the sign of one term",
        ("tests/test_torch_oracle.py",),
    ),
    Mutant(
        "torch_max_pool_grad_overwrites",
        "xdezero/backends/_torch.py",
        "return gx.scatter_add_(2, argmax[0].flatten(2), gy.flatten(2)).view(x_shape)",
        "return gx.scatter_(2, argmax[0].flatten(2), gy.flatten(2)).view(x_shape)",
        "torch max pooling's gradient overwrites where overlapping windows share their maximum",
        ("tests/test_native_kernels.py",),
    ),
    Mutant(
        "torch_deconv_drops_output_padding",
        "xdezero/backends/_torch.py",
        "return tf.conv_transpose2d(x, W, b, stride, pad, output_padding=extra)",
        "return tf.conv_transpose2d(x, W, b, stride, pad)",
        "torch's transposed convolution ignores the requested output size",
        ("tests/test_native_kernels.py", "tests/test_conv.py"),
    ),
    # --- optimizers and hooks ------------------------------------------------------------------------------
    Mutant(
        "adam_bias_correction",
        "xdezero/optimizers.py",
        "/ (1.0 - self.beta1**self.t)",
        "/ (1.0 - self.beta1)",
        "Adam: bias correction uses 1 - β₁ instead of 1 - β₁ᵗ",
        OPTIMIZERS,
    ),
    Mutant(
        "momentum_sign",
        "xdezero/optimizers.py",
        "v = momentum * v - lr * g",
        "v = -momentum * v - lr * g",
        "MomentumSGD: momentum term subtracted instead of added",
        OPTIMIZERS,
    ),
    Mutant(
        "clipgrad_no_cap",
        "xdezero/optimizers.py",
        "scale = xp.clip(self.max_norm / (norm + 1e-6), max=1.0)",
        "scale = self.max_norm / (norm + 1e-6)",
        "ClipGrad: factor not capped at 1 (small gradients are scaled up)",
        OPTIMIZERS,
    ),
    # --- the NumPy buffer pool -----------------------------------------------------------------------------
    Mutant(
        "pool_free_off_by_one",
        "xdezero/backends/_scratch.py",
        "if _refcount(buffers[i]) == _FREE:",
        "if _refcount(buffers[i]) <= _FREE + 1:",
        "buffer pool reuses a buffer that one other reference still holds",
        ("tests/test_scratch.py", "tests/test_buffer_pool.py"),
    ),
    # --- second and higher orders, statistics, models ----------------------------------------------------------
    Mutant(
        "sigmoid_second_order",
        "xdezero/functions/activation.py",
        "return gg * gy * (1 - 2 * y), gg * y * (1 - y)",
        "return gg * gy * (1 - y), gg * y * (1 - y)",
        "SigmoidGrad: d/dy of gy·y(1-y) taken as gy(1-y)",
        ("tests/test_functions.py", "tests/test_core_functions.py"),
    ),
    Mutant(
        "conv_grad_w_double_backward",
        "xdezero/functions/conv.py",
        "ggy = conv2d(x, ggW, stride=self.stride, pad=self.pad) if need_gy else None",
        "ggy = conv2d(x, ggW, stride=self.stride, pad=self.pad) * 0 if need_gy else None",
        "Conv2DGradW's backward drops the term of gy (third order of a convolution)",
        ("tests/test_conv.py",),
    ),
    Mutant(
        "batch_norm_biased_running_var",
        "xdezero/functions/normalization.py",
        "var_scale = (1 - decay) * (m / max(m - 1.0, 1.0))",
        "var_scale = 1 - decay",
        "BatchNorm's running variance averages the biased batch variance",
        ("tests/test_functions.py", "tests/test_layers.py", "tests/test_models.py"),
    ),
    Mutant(
        "resnet_stride_on_3x3",
        "xdezero/models.py",
        "stride_1x1, stride_3x3 = (1, stride) if downsample_fb else (stride, 1)",
        "stride_1x1, stride_3x3 = (1, stride)",
        "ResNet's strided bottleneck strides its 3×3 convolution, not DeZero's first 1×1",
        ("tests/test_models.py",),
    ),
    Mutant(
        "dataloader_drops_last_batch",
        "xdezero/dataloaders.py",
        "if self.iteration >= self.max_iter:",
        "if self.iteration >= self.max_iter - 1:",
        "DataLoader ends each epoch one batch early",
        ("tests/test_data.py",),
    ),
    # --- capture: comparison of the two recordings ---------------------------------------------------------
    Mutant(
        "capture_first_op_constants",
        "xdezero/tapes/replay.py",
        'if a.kind == "forward" and a.signature[2] != b.signature[2]:',
        'if a.kind == "forward" and k > 0 and a.signature[2] != b.signature[2]:',
        "same_tapes skips the constants of the step's first op",
        CAPTURE,
    ),
    Mutant(
        "capture_data_identity",
        "xdezero/tapes/replay.py",
        ' or (sa[0] == "data" and sa[1] is not sb[1]):',
        ":",
        "same_tapes does not check that a Variable's data is the recorded one",
        CAPTURE,
    ),
    Mutant(
        "capture_const_fingerprint",
        "xdezero/tapes/replay.py",
        "fingerprint([sa[1]]) != fingerprint([sb[1]])",
        "fingerprint([sa[1]]) != fingerprint([sa[1]])",
        "same_tapes compares a const input's fingerprint with itself",
        CAPTURE,
    ),
    Mutant(
        "capture_arguments_unchecked",
        "xdezero/tapes/record.py",
        "        self.check_arguments()\n",
        "",
        "an argument changed in place during the step goes unnoticed",
        CAPTURE,
    ),
    Mutant(
        "capture_sign_frozen",
        "xdezero/functions/math.py",
        "return gy * Sign()(x)",
        "return gy * self.xp.sign(x.data)",
        "abs's backward takes its sign outside any op, frozen in a captured step",
        CAPTURE,
    ),
)


class SetupError(Exception):
    """The check cannot be trusted here (wrong package imported, failing baseline, ...): abort."""


@dataclass
class Result:
    mutant: Mutant
    outcome: str  # killed, SURVIVED, timeout, error: ...
    node: str = ""  # first failing test, when killed
    seconds: float = 0.0


# --- the working tree ------------------------------------------------------------------------------------


def working_tree_files(root: Path) -> list[str]:
    """The files of the working tree as git sees them: tracked ones and untracked ones that are not ignored."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    names = sorted({name for name in out.decode().split("\0") if name})
    return [name for name in names if (root / name).is_file()]  # a tracked file deleted in the tree is left out


def snapshot(root: Path, dest: Path) -> int:
    """Copy the working tree's files into `dest` (once, so that every mutant sees the same tree); returns a count."""
    files = working_tree_files(root)
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    return len(files)


def fresh_copy(source: Path, parent: Path, name: str) -> Path:
    tree = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))
    shutil.copytree(source, tree, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def mutation_error(mutant: Mutant, text: str) -> str | None:
    """Why `mutant` cannot be applied to `text` (its file's content), or None."""
    count = text.count(mutant.old)
    if count != 1:
        where = "not found" if count == 0 else f"found {count} times"
        return f"old text {where} in {mutant.path}"
    try:
        compile(text.replace(mutant.old, mutant.new), mutant.path, "exec")
    except SyntaxError as e:
        return f"mutated {mutant.path} does not compile: {e}"
    return None


def check_mutants(tree: Path, mutants: list[Mutant]) -> dict[str, str]:
    """{name: error} for the mutants that cannot be applied in `tree`; each error is also printed to stderr."""
    errors = {}
    for m in mutants:
        path = tree / m.path
        error = mutation_error(m, path.read_text()) if path.is_file() else f"{m.path} does not exist"
        if error:
            errors[m.name] = error
            print(f"MUTANT {m.name}: {error} (expected exactly one occurrence of {m.old!r})", file=sys.stderr)
    return errors


def apply(mutant: Mutant, tree: Path) -> None:
    path = tree / mutant.path
    text = path.read_text()
    error = mutation_error(mutant, text)
    if error:
        raise RuntimeError(f"mutant {mutant.name}: {error}")
    path.write_text(text.replace(mutant.old, mutant.new))


# --- running Python and pytest in a copy -----------------------------------------------------------------


def environment(tree: Path) -> dict[str, str]:
    """The copy first on the path (before the editable install of the repository) and the NumPy backend only."""
    env = dict(os.environ, XDEZERO_BACKENDS="numpy")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    env.pop("PYTHONSAFEPATH", None)
    return env


def run(tree: Path, args: list[str], timeout: float) -> tuple[int | None, str]:
    """(exit status, output) of `python *args` in `tree`; the status is None when it ran past `timeout` (then
    its whole process group is killed: the suite starts subprocesses of its own)."""
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=tree,
        env=environment(tree),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return None, output
    return process.returncode, output


def first_failure(output: str) -> str:
    """The node id of the first FAILED or ERROR line of pytest's short summary (`-ra`)."""
    for line in output.splitlines():
        match = re.match(r"(?:FAILED|ERROR) (.+?)(?: - .*)?$", line)
        if match:
            return match.group(1)
    return "?"


def verify_import(tree: Path) -> None:
    """Raise SetupError unless `import xdezero` in the copy, with the mutants' environment, imports the copy's."""
    rc, output = run(tree, ["-c", "import xdezero; print(xdezero.__file__)"], timeout=120)
    lines = output.strip().splitlines()
    imported = Path(lines[-1]).resolve() if rc == 0 and lines else None
    if imported is None or not imported.is_relative_to(tree.resolve()):
        raise SetupError(
            f"in the copy {tree}, `import xdezero` does not import the copy's package (exit status {rc}):\n{output}"
        )
    print(f"import check: the copy's xdezero is imported ({imported})", file=sys.stderr)


def baseline(source: Path, work: Path, files: list[str], jobs: int, timeout: float) -> None:
    """Raise SetupError unless the unmutated tree passes `files` (split over `jobs` pytest runs in parallel)."""
    chunks = [files[i::jobs] for i in range(jobs) if files[i::jobs]]
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        runs = [pool.submit(run, fresh_copy(source, work, "baseline"), [*PYTEST, *chunk], timeout) for chunk in chunks]
        outcomes = [r.result() for r in runs]
    for chunk, (rc, output) in zip(chunks, outcomes):
        if rc != 0:
            why = "timed out" if rc is None else f"exit status {rc}, first failure {first_failure(output)}"
            raise SetupError(
                f"the unmutated tree fails its targeted files {' '.join(chunk)} ({why}): every mutant would look "
                f"killed.\n{output[-4000:]}"
            )
    print(f"baseline: {len(files)} targeted files pass unmutated ({time.monotonic() - start:.0f} s)", file=sys.stderr)


def run_mutant(mutant: Mutant, source: Path, work: Path, timeout: float) -> Result:
    """Targeted files first; if the mutant survives them, every other test file."""
    start = time.monotonic()
    tree = fresh_copy(source, work, mutant.name)
    try:
        apply(mutant, tree)
        stages = [list(mutant.targets), [f"--ignore={t}" for t in mutant.targets]]
        for args in stages:
            rc, output = run(tree, [*PYTEST, *args], timeout)
            if rc is None:
                return Result(mutant, "timeout", seconds=time.monotonic() - start)
            if rc in (1, 2):  # tests failed, or collection failed / interrupted (-x)
                return Result(mutant, "killed", first_failure(output), time.monotonic() - start)
            if rc != 0:
                tail = output.strip().splitlines()[-1:] or [""]
                return Result(mutant, f"error: pytest exit status {rc} ({tail[0]})", seconds=time.monotonic() - start)
        return Result(mutant, "SURVIVED", seconds=time.monotonic() - start)
    finally:
        shutil.rmtree(tree, ignore_errors=True)


# --- report ----------------------------------------------------------------------------------------------


def table(results: list[Result]) -> str:
    rows = ["| mutant | file | bug | result | first failing test | s |", "|---|---|---|---|---|---:|"]
    for r in results:
        m = r.mutant
        node = f"`{r.node}`" if r.node else ""
        cells = [m.name, m.path, m.what, r.outcome, node, f"{r.seconds:.0f}"]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="mutants run in parallel (default 2)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants, check their old text, and exit")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help=f"seconds per pytest run (default {DEFAULT_TIMEOUT})"
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    names = {m.name for m in MUTANTS}
    unknown = sorted(set(args.only or ()) - names)
    if unknown:
        parser.error(f"unknown mutants {', '.join(unknown)}; known: {', '.join(m.name for m in MUTANTS)}")
    return args


def prepare(source: Path, work: Path, mutants: list[Mutant], args: argparse.Namespace) -> tuple[dict, list]:
    """Snapshot the tree into `source`, check the mutants' texts, the import and the baseline: (errors, runnable)."""
    try:
        count = snapshot(ROOT, source)
    except (OSError, subprocess.CalledProcessError) as e:
        raise SetupError(f"cannot copy the working tree of {ROOT}: {e}") from e
    print(f"snapshot: {count} files of {ROOT}", file=sys.stderr)
    errors = check_mutants(source, mutants)
    runnable = [m for m in mutants if m.name not in errors]
    verify_import(fresh_copy(source, work, "import-check"))
    targets = sorted({t for m in runnable for t in m.targets})
    missing = [t for t in targets if not (source / t).is_file()]
    if missing:
        raise SetupError(f"targeted test files not in the tree: {' '.join(missing)}")
    if targets:
        baseline(source, work, targets, args.jobs, args.timeout)
    return errors, runnable


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        errors = check_mutants(ROOT, mutants)
        for m in mutants:
            status = f"ERROR: {errors[m.name]}" if m.name in errors else "ok"
            print(f"{m.name:36} {m.path:32} {m.what}\n{'':36} targets: {' '.join(m.targets)}  [{status}]")
        return 1 if errors else 0

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="xdezero-mutants-") as tmp:
        work = Path(tmp)
        source = work / "snapshot"
        try:
            errors, runnable = prepare(source, work, mutants, args)
        except SetupError as e:
            print(f"mutation check aborted: {e}", file=sys.stderr)
            return 2

        results = {m.name: Result(m, "error: " + errors[m.name]) for m in mutants if m.name in errors}
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_mutant, m, source, work, args.timeout) for m in runnable]
            for done, future in enumerate(as_completed(futures), 1):
                r = results[future.result().mutant.name] = future.result()
                print(f"[{done}/{len(runnable)}] {r.mutant.name}: {r.outcome} ({r.seconds:.0f} s)", file=sys.stderr)

    ordered = [results[m.name] for m in mutants]
    print(table(ordered))
    bad = [r for r in ordered if r.outcome != "killed"]
    print(
        f"\n{len(ordered) - len(bad)} of {len(ordered)} mutants killed; "
        f"{sum(r.outcome == 'SURVIVED' for r in ordered)} survived; total {time.monotonic() - started:.0f} s"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
