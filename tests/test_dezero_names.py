"""Every public name of DeZero's modules exists in the same xdezero module, with the same kind of meaning.

The list is DeZero 0.0.13's: every attribute of each module that is not private and not a module (names it
imports count, since programs use them: `dezero.functions.Variable`, `dezero.cuda.Variable`).
"""

from __future__ import annotations

import importlib
import types

import numpy as np
import pytest

import xdezero
from tests.dezero_oracle import dezero_module

DEZERO_NAMES = {
    "dezero": """
        Config DataLoader Dataset Function Layer Model Parameter SeqDataLoader Variable as_array as_variable
        is_simple_core no_grad setup_variable test_mode using_config
    """,
    "dezero.core": """
        Add Config Div Function Mul Neg Parameter Pow Sub Variable add array_types as_array as_variable div
        mul neg no_grad pow rdiv rsub setup_variable sub test_mode using_config
    """,
    "dezero.core_simple": """
        Add Config Div Function Mul Neg Pow Sub Variable add as_array as_variable div mul neg no_grad pow rdiv
        rsub setup_variable sub using_config
    """,
    "dezero.functions": """
        BatchNorm BroadcastTo Clip Cos Exp Function GetItem GetItemGrad LeakyReLU Linear Log LogSoftmax
        MatMul Max MeanSquaredError Min ReLU Reshape Sigmoid Sin Softmax SoftmaxCrossEntropy Sum SumTo Tanh
        Transpose Variable accuracy add as_array as_variable average_pooling batch_nrom binary_cross_entropy
        broadcast_to clip col2im conv2d conv2d_simple cos deconv2d div dropout embed_id exp expand_dims
        flatten get_item im2col leaky_relu linear linear_simple log log_softmax matmul max
        mean_squared_error mean_squared_error_simple min mul neg pooling pooling_simple pow relu reshape
        rsub sigmoid sigmoid_cross_entropy sigmoid_simple sin softmax softmax_cross_entropy
        softmax_cross_entropy_simple softmax_simple sub sum sum_to tanh transpose
    """,
    "dezero.functions_conv": """
        AveragePooling Col2im Conv2DGradW Conv2d Deconv2d Function Im2col Pooling Pooling2DGrad
        Pooling2DWithIndexes as_variable average_pooling broadcast_to col2im col2im_array conv2d
        conv2d_simple deconv2d get_conv_outsize get_deconv_outsize im2col im2col_array linear pair pooling
        pooling_simple
    """,
    "dezero.layers": "BatchNorm Conv2d Deconv2d EmbedID LSTM Layer Linear Parameter RNN pair",
    "dezero.models": """
        BottleneckA BottleneckB BuildingBlock Layer MLP Model ResNet ResNet101 ResNet152 ResNet50 Sequential
        SqueezeNet VGG16
    """,
    "dezero.optimizers": "AdaDelta AdaGrad Adam ClipGrad FreezeParam MomentumSGD Optimizer Parameter SGD WeightDecay",
    "dezero.utils": """
        Variable array_allclose array_equal as_variable cache_dir get_conv_outsize get_deconv_outsize
        get_dot_graph get_file gradient_check logsumexp max_backward_shape numerical_grad pair
        plot_dot_graph reshape_sum_backward show_progress sum_to
    """,
    "dezero.cuda": "Variable as_cupy as_numpy get_array_module gpu_enable",
    "dezero.datasets": """
        CIFAR10 CIFAR100 Compose Dataset Flatten ImageNet MNIST Normalize Shakespear SinCurve Spiral ToFloat
        cache_dir get_file get_spiral load_cache_npz save_cache_npz
    """,
    "dezero.dataloaders": "DataLoader SeqDataLoader pil_available",
    "dezero.transforms": """
        AsType CenterCrop Compose Convert Flatten Normalize RandomHorizontalFlip Resize ToArray ToFloat
        ToInt ToPIL pair
    """,
}


def _pairs():
    return [(module, name) for module, names in DEZERO_NAMES.items() for name in names.split()]


def _ours(module: str):
    return importlib.import_module("x" + module)


@pytest.mark.parametrize("module", sorted(DEZERO_NAMES))
def test_every_dezero_name_exists(module):
    ours = _ours(module)
    missing = [name for name in DEZERO_NAMES[module].split() if not hasattr(ours, name)]
    assert not missing, f"x{module} lacks DeZero's {missing}"


def test_import_xdezero_gives_functions_conv():
    assert xdezero.functions_conv is importlib.import_module("xdezero.functions_conv")


def _kind(obj) -> str:
    return "callable" if callable(obj) else type(obj).__name__


# Same use, another shape: Config is an object whose attributes read the current context's flags (DeZero's is
# a class with class attributes); array_types is a tuple (DeZero's is np.ndarray, or a tuple with CuPy's).
SAME_USE = {"dezero.Config", "dezero.core.Config", "dezero.core_simple.Config", "dezero.core.array_types"}


def test_the_list_is_dezeros():
    dezero_module()
    for module, names in DEZERO_NAMES.items():
        theirs = importlib.import_module(module)
        public = {
            n for n in dir(theirs) if not n.startswith("_") and not isinstance(getattr(theirs, n), types.ModuleType)
        }
        assert public == set(names.split()), f"{module}: {sorted(public ^ set(names.split()))}"


def test_each_name_is_the_same_kind_of_thing_as_dezeros():
    dezero_module()
    different = []
    for module, name in _pairs():
        theirs, ours = getattr(importlib.import_module(module), name), getattr(_ours(module), name)
        kind = _kind(theirs)
        if f"{module}.{name}" not in SAME_USE and _kind(ours) != kind:
            different.append(f"{module}.{name}: DeZero's is a {kind}, ours a {_kind(ours)}")
    assert not different, "\n".join(different)


def test_same_meaning_for_the_names_that_are_easy_to_get_wrong():
    import xdezero.core as core
    import xdezero.cuda as cuda
    import xdezero.functions as F
    import xdezero.functions_conv as FC
    import xdezero.layers as L
    import xdezero.transforms as T

    # Function classes, not layers or wrappers.
    for name in ("Sin", "Exp", "Linear", "MatMul", "Sum", "GetItem", "Softmax", "MeanSquaredError"):
        assert issubclass(getattr(F, name), xdezero.Function), name
    for name in ("Conv2d", "Deconv2d", "Pooling", "AveragePooling", "Im2col", "Col2im"):
        assert issubclass(getattr(FC, name), xdezero.Function), name
    assert issubclass(core.Add, xdezero.Function) and issubclass(core.Pow, xdezero.Function)
    assert F.Variable is cuda.Variable is core.Variable is xdezero.Variable
    assert L.pair(3) == T.pair(3) == FC.pair(3) == (3, 3)
    assert core.Config.train is True and xdezero.is_simple_core is False
    assert core.setup_variable() is None
    assert xdezero.seed is xdezero.backends.seed  # seeds NumPy's global generator and those of the other libraries
    with core.no_grad():
        assert core.Config.enable_backprop is False
    with core.test_mode():
        assert core.Config.train is False
    assert isinstance(xdezero.utils.cache_dir, str) and isinstance(xdezero.datasets.cache_dir, str)
    assert isinstance(xdezero.dataloaders.pil_available, bool)


def test_function_classes_compute_what_numpy_does():
    import xdezero.functions as F

    x = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])
    np.testing.assert_allclose(F.Sin()(x).data, np.sin(x))
    np.testing.assert_allclose(F.Exp()(x).data, np.exp(x))
    np.testing.assert_allclose(F.Tanh()(x).data, np.tanh(x))
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(F.Softmax()(x).data, e / e.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(F.LogSoftmax()(x).data, np.log(e / e.sum(axis=1, keepdims=True)))
    np.testing.assert_allclose(F.Max()(x).data, 2.0)
    np.testing.assert_allclose(F.Min(axis=1)(x).data, [-1.0, -0.75])
    np.testing.assert_allclose(F.Transpose()(x).data, x.T)
    np.testing.assert_allclose(F.Sum(0, False)(x).data, x.sum(axis=0))
    np.testing.assert_allclose(F.SumTo((1, 3))(x).data, x.sum(axis=0, keepdims=True))
    np.testing.assert_allclose(F.Clip(0.0, 1.0)(x).data, np.clip(x, 0.0, 1.0))
    W = np.arange(6.0).reshape(3, 2)
    np.testing.assert_allclose(F.Linear()(x, W, np.ones(2)).data, x @ W + 1)
    np.testing.assert_allclose(F.MatMul()(x, W).data, x @ W)
    np.testing.assert_allclose(F.MeanSquaredError()(x, np.zeros_like(x)).data, (x**2).sum() / 2)
    mean, var = np.zeros(3), np.ones(3)
    y = F.BatchNorm(mean, var, 0.9, 2e-5)(x, np.ones(3), np.zeros(3))
    np.testing.assert_allclose(y.data, (x - x.mean(0)) / np.sqrt(x.var(0) + 2e-5), rtol=1e-6)
    np.testing.assert_allclose(mean, 0.1 * x.mean(0))  # the running mean updated in place, as in DeZero


# --- the meanings behind some of the added names, against DeZero or NumPy --------------------------------


@pytest.mark.parametrize("to_matrix", [True, False])
def test_im2col_array_and_col2im_array_match_dezero(to_matrix):
    import xdezero.functions_conv as FC

    theirs = dezero_module("functions_conv")
    x = np.random.default_rng(0).normal(size=(2, 3, 7, 6))
    ours_col = FC.im2col_array(x, (3, 2), (2, 1), (1, 0), to_matrix=to_matrix)
    their_col = theirs.im2col_array(x, (3, 2), (2, 1), (1, 0), to_matrix=to_matrix)
    np.testing.assert_array_equal(ours_col, their_col)
    np.testing.assert_allclose(
        FC.col2im_array(their_col, x.shape, (3, 2), (2, 1), (1, 0), to_matrix=to_matrix),
        theirs.col2im_array(their_col, x.shape, (3, 2), (2, 1), (1, 0), to_matrix=to_matrix),
    )
    assert FC.get_conv_outsize(7, 3, 2, 1) == theirs.get_conv_outsize(7, 3, 2, 1)
    assert FC.get_deconv_outsize(4, 3, 2, 1) == theirs.get_deconv_outsize(4, 3, 2, 1)


def test_functions_conv_classes_take_dezeros_arguments():
    import xdezero.functions_conv as FC

    theirs = dezero_module("functions_conv")
    rng = np.random.default_rng(1)
    x, W, b = rng.normal(size=(2, 3, 6, 5)), rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
    y = FC.Conv2d(stride=2, pad=1)(xdezero.Variable(x), W, b)
    np.testing.assert_allclose(y.data, theirs.Conv2d(stride=2, pad=1)(x, W, b).data, rtol=1e-12)
    gy = rng.normal(size=y.shape)
    np.testing.assert_allclose(
        FC.Conv2DGradW(y.creator)(x, gy).data,
        theirs.Conv2DGradW(theirs.Conv2d(2, 1)(dezero_module().Variable(x), W, b).creator)(x, gy).data,
        rtol=1e-12,
    )
    Wd = rng.normal(size=(3, 4, 3, 3))
    for outsize in (None, (12, 10)):
        np.testing.assert_allclose(
            FC.Deconv2d(2, 1, outsize)(x, Wd, b).data, theirs.Deconv2d(2, 1, outsize)(x, Wd, b).data, rtol=1e-12
        )
    np.testing.assert_allclose(FC.Pooling(2, 2)(x).data, theirs.Pooling(2, 2)(x).data)
    np.testing.assert_allclose(FC.AveragePooling(3, 1, 1)(x).data, theirs.AveragePooling(3, 1, 1)(x).data)
    col = FC.Im2col(3, 1, 1, True)(x)
    np.testing.assert_allclose(col.data, theirs.Im2col(3, 1, 1, True)(x).data)
    np.testing.assert_allclose(
        FC.Col2im(x.shape, 3, 1, 1, True)(col.data).data, theirs.Col2im(x.shape, 3, 1, 1, True)(col.data).data
    )


@pytest.mark.parametrize(
    "s0, s1",
    [((1, 1), (1,)), ((4, 3), (3,)), ((4, 3), (1, 3)), ((4, 1), (4, 1)), ((5,), ())],
)
def test_mean_squared_error_broadcasts_as_dezero(s0, s1):
    import xdezero.functions as F

    theirs = dezero_module("functions")
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=s0), rng.normal(size=s1)
    ours = F.mean_squared_error(F.Variable(a), F.Variable(b))
    ref = theirs.mean_squared_error(a, b)
    np.testing.assert_allclose(ours.data, ref.data, rtol=1e-12)
    ours.backward()
    diff = np.broadcast_to(a - b, np.broadcast_shapes(s0, s1))
    ga = 2 * diff / diff.shape[0]
    np.testing.assert_allclose(
        F.Variable(ga).data.sum(axis=tuple(range(ga.ndim - a.ndim))), ours.creator.inputs[0].grad.data
    )


@pytest.mark.parametrize("s0, s1", [((4, 1), (4,)), ((4,), (4, 1)), ((3, 2), (2, 3))])
def test_mean_squared_error_refuses_the_all_pairs_trap(s0, s1):
    import xdezero.functions as F

    with pytest.raises(ValueError, match="mean_squared_error: the prediction has shape"):
        F.mean_squared_error(np.ones(s0), np.ones(s1))


def test_batchnorm_statistics_are_parameters_like_dezeros():
    import xdezero.layers as L

    theirs = dezero_module("layers")
    ours, ref = L.BatchNorm(), theirs.BatchNorm()
    assert ours.avg_mean.data is None and ref.avg_mean.data is None
    x = np.random.default_rng(3).normal(size=(8, 3)) * 2 + 1
    for _ in range(2):
        np.testing.assert_allclose(ours(x).data, ref(x).data, rtol=1e-6)
    assert isinstance(ours.avg_mean, xdezero.Parameter) and isinstance(ours.avg_var, xdezero.Parameter)
    np.testing.assert_allclose(ours.avg_mean.data, ref.avg_mean.data, rtol=1e-6)
    np.testing.assert_allclose(ours.avg_var.data, ref.avg_var.data, rtol=1e-6)
    with xdezero.test_mode(), dezero_module().test_mode():
        np.testing.assert_allclose(ours(x).data, ref(x).data, rtol=1e-6)


def test_to_gpu_and_gpu_enable_as_in_step_52():
    import xdezero.cuda as cuda

    theirs = dezero_module("cuda")
    assert isinstance(cuda.gpu_enable, bool)
    if not theirs.gpu_enable:
        assert cuda.gpu_enable is False
    loader = xdezero.DataLoader(xdezero.datasets.Spiral(), 10)
    loader.to_gpu()
    assert loader.gpu is True
    loader.to_cpu()
    assert callable(xdezero.Model.to_gpu) and callable(xdezero.Model.to_cpu)
