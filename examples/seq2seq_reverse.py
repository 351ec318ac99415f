"""Unsynced many-to-many (seq2seq): read a sequence of symbols, then write it reversed.

The encoder GRU reads the source; its final state is the decoder's initial state; the
decoder writes one symbol per step. Both are unrolled into one program and trained end
to end with cross-entropy.  Run: python examples/seq2seq_reverse.py
"""

import numpy as np

import rnn

SYMBOLS, LENGTH = 4, 4
rng = np.random.default_rng(0)


def batch(n):
    seq = rng.integers(0, SYMBOLS, (n, LENGTH))
    return np.eye(SYMBOLS)[seq], seq[:, ::-1].copy()


model = rnn.Seq2Seq(rnn.cells.gru(SYMBOLS, 32), rnn.cells.gru(1, 32), head=SYMBOLS,
                    out_steps=LENGTH)
xs, ys = batch(2048)
hist = rnn.fit(model, xs, ys, loss="cross_entropy", epochs=20, batch_size=32,
               optimizer=rnn.optim.Adam(lr=1e-2), clip_norm=1.0)
tx, ty = batch(256)
pred = model.forward(tx).argmax(-1)
print(f"loss {hist.losses[0]:.3f} -> {hist.losses[-1]:.3f}; "
      f"test: {np.mean(pred == ty):.1%} of symbols and {np.mean((pred == ty).all(1)):.1%} of "
      f"whole sequences reversed correctly")
print("source", tx[0].argmax(-1), "-> output", pred[0])
