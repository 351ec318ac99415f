"""One-to-many: from one seed value, generate a whole wave by feeding the output back.

A Jordan cell reads its own previous output y[t-1]. The seed (sin p, cos p) arrives at
step 0 only; after that the input is zero and the network runs on its own output,
rotating the point around the circle.  Run: python examples/one_to_many.py
"""

import numpy as np

import rnn

T, OMEGA = 30, 0.3
rng = np.random.default_rng(0)


def data(n):
    p = rng.uniform(0, 2 * np.pi, (n, 1))
    xs = np.zeros((n, T, 2))
    xs[:, 0] = np.concatenate([np.sin(p), np.cos(p)], 1)  # one input: the seed
    a = p + OMEGA * np.arange(1, T + 1)
    return xs, np.stack([np.sin(a), np.cos(a)], -1)


cell = rnn.cells.jordan(2, 16, output_size=2)  # y = W_ho h + b; h reads y[t-1]
print(cell)
model = rnn.Model(cell, seed=0)
xs, ys = data(512)
hist = rnn.fit(model, xs, ys, epochs=40, batch_size=32, clip_norm=1.0,
               optimizer=rnn.optim.Adam(lr=1e-2))
tx, ty = data(4)
out, _ = model.forward(tx)
print(f"train mse {hist.losses[0]:.3f} -> {hist.losses[-1]:.4f}; generated sin for one seed:")
print(np.round(out[0, :10, 0], 2), "\ntrue:", np.round(ty[0, :10, 0], 2))
