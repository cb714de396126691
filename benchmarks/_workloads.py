"""The training-step workloads the benchmarks share: data, the xdezero and PyTorch models, one step of each.

A step is forward, softmax cross-entropy, backward and an SGD update (lr 0.1), in float32, with sigmoid
hidden layers for the MLPs (`sizes` = layer widths) and, for `sizes == CNN`, conv 3×3 1→16, relu,
conv 3×3 16→32, relu, max pooling 2×2, linear → 10 on 28×28 images.
"""

from __future__ import annotations

import itertools

CNN = ("cnn",)  # the `sizes` of the CNN workload


def data(sizes: tuple[int, ...], batch: int, spiral: bool = False):
    """(inputs, labels) as NumPy arrays: standard normal float32 inputs, uniform labels (or the spiral set)."""
    import numpy as np

    if sizes == CNN:
        rng = np.random.default_rng(0)
        return rng.standard_normal((batch, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, size=batch)
    if spiral:
        from xdezero.datasets import get_spiral

        x, t = get_spiral(train=True)
        return x[:batch], t[:batch]
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, sizes[0])).astype(np.float32), rng.integers(0, sizes[-1], size=batch)


def _xdezero_cnn():
    import xdezero.functions as F
    import xdezero.layers as L
    from xdezero import models

    class SmallCNN(models.Model):
        def __init__(self):
            super().__init__()
            self.conv1 = L.Conv2d(16, kernel_size=3, pad=1, in_channels=1)
            self.conv2 = L.Conv2d(32, kernel_size=3, pad=1, in_channels=16)
            self.fc = L.Linear(10, in_size=32 * 14 * 14)

        def forward(self, x):
            h = F.relu(self.conv2(F.relu(self.conv1(x))))
            h = F.pooling(h, 2, 2)
            return self.fc(F.reshape(h, (h.shape[0], -1)))

    return SmallCNN()


def xdezero_model(sizes: tuple[int, ...]):
    """The xdezero model of a workload, its weights drawn from NumPy's global generator seeded with 0."""
    import numpy as np

    import xdezero.functions as F
    from xdezero import models

    np.random.seed(0)
    return _xdezero_cnn() if sizes == CNN else models.MLP(sizes[1:], activation=F.sigmoid)


def xdezero_step(
    sizes: tuple[int, ...], x_np, t_np, move=None, optimizer=None, capture: bool = False, cuda_graphs: bool = True
):
    """A step function for xdezero; `move` (e.g. xdezero.backends.to_gpu) takes the NumPy data and the
    parameters created so far to another library or device; `optimizer` defaults to SGD(lr=0.1); with
    `capture`, the step runs through `xdezero.capture` (it records on its first two calls, then replays; on a
    GPU as a CUDA graph unless `cuda_graphs` is False), and the returned function's `step` is the CapturedStep."""
    import xdezero
    from xdezero import functions as F
    from xdezero import optimizers

    model = xdezero_model(sizes)
    optimizer = (optimizer or optimizers.SGD(lr=0.1)).setup(model)
    x, t = (move(x_np), move(t_np)) if move else (x_np, t_np)
    if move:
        for p in model.params():
            if p.data is not None:
                p.data = move(p.data)

    def step_of(x, t):
        loss = F.softmax_cross_entropy(model(x), t)
        model.cleargrads()
        loss.backward()
        optimizer.update()
        return loss

    run = xdezero.capture(step_of, cuda_graphs=cuda_graphs) if capture else step_of

    def call():
        return run(x, t)

    call.step = run
    return call


def _torch_cnn(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(32 * 14 * 14, 10),
    )


def torch_step(sizes: tuple[int, ...], x_np, t_np, device: str):
    """The same step in PyTorch eager mode on `device`."""
    import torch

    torch.manual_seed(0)
    layers = []
    if sizes == CNN:
        layers.append(_torch_cnn(torch))
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes) if sizes != CNN else ()):
        if i:
            layers.append(torch.nn.Sigmoid())
        layers.append(torch.nn.Linear(n_in, n_out))
    model = torch.nn.Sequential(*layers).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.from_numpy(x_np).to(device)
    t = torch.from_numpy(t_np).to(device=device, dtype=torch.int64)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        loss = loss_fn(model(x), t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    step.inputs = (x, t)
    return step


def torch_graph_step(sizes: tuple[int, ...], x_np, t_np):
    """The PyTorch step on CUDA captured once in a CUDA graph (`torch.cuda.CUDAGraph`); the returned function
    runs one step as a training loop does with a graph: the batch copied into the graph's input buffers, one
    replay, the loss copied out (as `xdezero.capture` does on every call)."""
    import torch

    step = torch_step(sizes, x_np, t_np, "cuda")
    static_x, static_t = step.inputs
    batch_x, batch_t = static_x.clone(), static_t.clone()  # the batch of each call, arriving on the device
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside the graph, as torch's documentation asks
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step()

    def replay():
        static_x.copy_(batch_x)
        static_t.copy_(batch_t)
        graph.replay()
        return static_loss.clone()

    return replay
