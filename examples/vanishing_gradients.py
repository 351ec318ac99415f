"""Vanishing gradients, measured: the adding problem with a lag of up to T steps.

At initialization, ||dL/dh_t|| (the gradient reaching step t from a loss at the last
step) shrinks geometrically going back in an Elman network and in a GRU, much less in
an LSTM whose forget-gate bias starts at 1 (the usual practice). Then each cell trains
on the same task: Elman stays at the "predict the mean" loss (1/6); LSTM and GRU learn
to carry the two marked numbers across the sequence (their gates can open, so the
gradient stops vanishing once they do). The reason, not only the symptom: the largest
singular value of each step's Jacobian dS_t/dS_(t-1) along one sequence, at
initialization and after training (tools/jacobian.py). Writes
out/vanishing_gradients.png and gradient-flow SVGs.
Run: python examples/vanishing_gradients.py [T]
"""

import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import rnn  # noqa: E402
from tools import render  # noqa: E402
from tools.jacobian import spectral_norms  # noqa: E402

T = int(sys.argv[1]) if len(sys.argv) > 1 else 50
out = Path("out")
out.mkdir(exist_ok=True)
xs, ys = rnn.tasks.adding(1024, T, seed=0)
vx, vy = rnn.tasks.adding(256, T, seed=1)
fig, (ax1, ax3, ax2) = plt.subplots(1, 3, figsize=(16, 4))
for name, color in [("elman", "tab:red"), ("lstm", "tab:blue"), ("gru", "tab:green")]:
    model = rnn.Model(rnn.cells.BUILTINS[name](2, 16), head=1, seed=0)
    if name == "lstm":  # forget gate open at the start (Jozefowicz et al. 2015): f ~ 0.73
        bias = model.params["bias_ih_l0"].copy()
        bias[16:32] = 1.0
        model.load_params({"bias_ih_l0": bias}, strict=False)
    res = rnn.bptt(model, xs[:64], ys[:64], at="last")
    norms = res.step_norms["h"]
    ax1.semilogy(np.arange(T), norms / norms[-1], color=color, label=name)
    render.save(render.gradients(model, xs[:8], ys[:8], at="last",
                                 title=f"{name} at initialization: ||dL/dh_t|| on the adding "
                                       f"problem, T={T}"), out / f"gradient_flow_{name}.svg")
    sigma0 = spectral_norms(model, vx[:1])
    t0 = time.perf_counter()
    hist = rnn.fit(model, xs, ys, at="last", epochs=30, batch_size=32, clip_norm=1.0,
                   optimizer=rnn.optim.Adam(lr=1e-2), validation=(vx, vy), progress=False)
    ax2.plot(hist.val_losses, color=color, label=f"{name} (val {hist.val_losses[-1]:.3f})")
    sigma = spectral_norms(model, vx[:1])
    ax3.semilogy(sigma0, color=color, ls="--", lw=1, label=f"{name}, initialization")
    ax3.semilogy(sigma, color=color, label=f"{name}, trained")
    print(f"{name:6s} ||dL/dh_0|| / ||dL/dh_T-1|| = {norms[0] / norms[-1]:.1e}   "
          f"validation mse {hist.val_losses[-1]:.4f}   ({time.perf_counter() - t0:.1f}s)   "
          f"step Jacobian's largest singular value, median: {np.median(sigma0):.2f} at "
          f"initialization, {np.median(sigma):.2f} trained")
ax1.set(title="gradient reaching step t at initialization", xlabel="step t",
        ylabel="||dL/dh_t|| / ||dL/dh_T-1||")
ax3.axhline(1, color="gray", ls=":", lw=1)
ax3.set(title="largest singular value of dS_t/dS_t-1", xlabel="step t (one sequence)")
ax2.axhline(1 / 6, color="gray", ls="--", lw=1, label="predict the mean (1/6)")
ax2.set(title=f"adding problem, T={T}: validation mse", xlabel="epoch", ylim=(0, 0.3))
for ax in (ax1, ax2):
    ax.legend(fontsize=9)
ax3.legend(fontsize=7, ncol=3, loc="lower center")
ax3.set_ylim(0.1, 10)
fig.tight_layout()
fig.savefig(out / "vanishing_gradients.png", dpi=110)
print(f"wrote {out}/vanishing_gradients.png and {out}/gradient_flow_*.svg")
