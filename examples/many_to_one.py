"""Many-to-one: read a whole sequence, answer once at the end (at="last").

Is the sum of the sequence positive? A feed-forward net would need a fixed window; the
LSTM reads sequences of any length.  Run: python examples/many_to_one.py
"""

import numpy as np

import rnn

rng = np.random.default_rng(0)
xs = rng.standard_normal((512, 15, 1))
labels = (xs.sum(axis=(1, 2)) > 0).astype(np.int64)

model = rnn.Model(rnn.cells.lstm(1, 16), head=2, seed=0)
rnn.fit(model, xs[:400], labels[:400], loss="cross_entropy", at="last", epochs=30,
        batch_size=32, clip_norm=1.0)
ys, _ = model.forward(xs[400:])
print(f"test accuracy {np.mean(ys[:, -1].argmax(-1) == labels[400:]):.1%}")
