"""Synced many-to-many: a label for every step (at="all").

At each step, is the running sum so far positive? The label depends on the whole past,
so the state must carry it.  Run: python examples/many_to_many.py
"""

import numpy as np

import rnn

rng = np.random.default_rng(0)
xs = rng.standard_normal((512, 20, 1))
labels = (np.cumsum(xs[..., 0], axis=1) > 0).astype(np.int64)  # (B, T)

model = rnn.Model(rnn.cells.gru(1, 16), head=2, seed=0)
rnn.fit(model, xs[:400], labels[:400], loss="cross_entropy", at="all", epochs=30,
        batch_size=32, clip_norm=1.0)
ys, _ = model.forward(xs[400:])
print(f"per-step test accuracy {np.mean(ys.argmax(-1) == labels[400:]):.1%}")
