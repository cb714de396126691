"""Train a two-layer MLP on the spiral data set, the way the DeZero book does (with xdezero in place of dezero).

python examples/spiral.py [--epochs 300] [--hidden 10] [--lr 1.0] [--seed 0]
"""

import math

import numpy as np

import xdezero.functions as F
from xdezero import optimizers
from xdezero.cli import ArgumentParser, non_negative_int, positive_float, positive_int
from xdezero.datasets import get_spiral
from xdezero.models import MLP

# Hyperparameters, checked as the xdezero command checks them: a bad one is a one-line error, exit status 2
parser = ArgumentParser(description="An MLP on the spiral data set (DeZero's step 48).")
parser.add_argument("--epochs", type=positive_int, default=300)
parser.add_argument("--hidden", type=positive_int, default=10)
parser.add_argument("--lr", type=positive_float, default=1.0)
parser.add_argument("--seed", type=non_negative_int, default=0)
args = parser.parse_args()
max_epoch = args.epochs
batch_size = 30
hidden_size = args.hidden
lr = args.lr

np.random.seed(args.seed)
x, t = get_spiral(train=True)
model = MLP((hidden_size, 3))
optimizer = optimizers.SGD(lr).setup(model)

data_size = len(x)
max_iter = math.ceil(data_size / batch_size)

for epoch in range(max_epoch):
    # Shuffle the data at the start of every epoch
    index = np.random.permutation(data_size)
    sum_loss = 0.0

    for i in range(max_iter):
        batch_index = index[i * batch_size : (i + 1) * batch_size]
        batch_x = x[batch_index]
        batch_t = t[batch_index]

        y = model(batch_x)
        loss = F.softmax_cross_entropy(y, batch_t)
        model.cleargrads()
        loss.backward()
        optimizer.update()

        sum_loss += float(loss.data) * len(batch_t)

    avg_loss = sum_loss / data_size
    if (epoch + 1) % 10 == 0:
        print(f"epoch {epoch + 1}, loss {avg_loss:.2f}")

accuracy = F.accuracy(model(x), t)
print(f"training accuracy {float(accuracy.data):.3f}")
