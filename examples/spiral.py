"""Train a two-layer MLP on the spiral data set, the way the DeZero book does (with xdezero in place of dezero)."""

import math

import numpy as np

import xdezero.functions as F
from xdezero import optimizers
from xdezero.datasets import get_spiral
from xdezero.models import MLP

# Hyperparameters
max_epoch = 300
batch_size = 30
hidden_size = 10
lr = 1.0

np.random.seed(0)
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
