"""The main job: next-month airline passengers, feed-forward vs recurrent, side by side.

The usual split: the first 67% of the months train, the last 33% test; every model
predicts month t from months before t. RMSE is in thousands of passengers. Choices for
the best recurrent model are made on a validation year carved from the *training*
months only; the test months are touched once, at the end.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

import rnn
from engine import Tensor

from . import render

SEASON = 12


def rmse(pred, true) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred) - np.asarray(true)) ** 2)))


def say(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ baselines
def persistence(y, months):
    return y[months - 1]


def seasonal_naive(y, months):
    return y[months - SEASON]


def seasonal_growth(y, months):
    """Last year's month, scaled by the growth of the last twelve months."""
    return y[months - SEASON] * y[months - 1] / y[months - 1 - SEASON]


# ------------------------------------------------------------------ feed-forward window
def window_mlp(y, train_months, test_months, window=3, hidden=8, epochs=600, seed=0):
    """The classic feed-forward treatment: the last ``window`` months in, one out
    (min-max scaled on the training months), trained with the engine's Tensor."""
    lo, hi = y[:train_months[-1] + 1].min(), y[:train_months[-1] + 1].max()
    s = (y - lo) / (hi - lo)

    def feats(months):
        return np.stack([s[months - k] for k in range(window, 0, -1)], 1)

    rng = np.random.default_rng(seed)
    W1 = Tensor(rng.uniform(-1, 1, (window, hidden)) / np.sqrt(window), requires_grad=True)
    b1 = Tensor(np.zeros(hidden), requires_grad=True)
    W2 = Tensor(rng.uniform(-1, 1, (hidden, 1)) / np.sqrt(hidden), requires_grad=True)
    b2 = Tensor(np.zeros(1), requires_grad=True)
    params = {"W1": W1, "b1": b1, "W2": W2, "b2": b2}
    opt = rnn.optim.Adam(lr=1e-2)
    X, Y = Tensor(feats(train_months)), Tensor(s[train_months][:, None])

    def net(x):
        return ((x @ W1 + b1).relu() @ W2 + b2)

    for _ in range(epochs):
        for p in params.values():
            p.grad = None
        ((net(X) - Y) ** 2).mean().backward()
        opt.step({k: p.data for k, p in params.items()}, {k: p.grad for k, p in params.items()})

    def predict(months):
        return net(Tensor(feats(months))).data[:, 0] * (hi - lo) + lo

    return predict(train_months), predict(test_months)


# ------------------------------------------------------------------ recurrent models
def lstm_one_month(y, train_months, test_months, hidden=4, epochs=100, seed=0,
                   progress=True):
    """The widely used tutorial setup: an LSTM fed one past month (sequences of length
    1), min-max scaled on the training months."""
    lo, hi = y[:train_months[-1] + 1].min(), y[:train_months[-1] + 1].max()
    s = (y - lo) / (hi - lo)
    m = rnn.Model(rnn.cells.lstm(1, hidden), head=1, seed=seed)
    xs = s[train_months - 1][:, None, None]
    rnn.fit(m, xs, s[train_months][:, None], at="last", epochs=epochs, batch_size=4,
            optimizer=rnn.optim.Adam(lr=5e-3), seed=seed, progress=progress)

    def predict(months):
        ys, _ = m.forward(s[months - 1][:, None, None])
        return ys[:, -1, 0] * (hi - lo) + lo

    return predict(train_months), predict(test_months), m


class GrowthRNN:
    """A recurrent model of year-over-year log growth d_t = log y_t - log y_{t-12}.

    It reads the last ``window`` growths (d_{t-window} .. d_{t-1}) and predicts the next
    one at every step (many-to-many training); month t is then y_{t-12} * exp(d_t).
    """

    def __init__(self, y, kind="gru", hidden=8, window=12, epochs=150, lr=1e-2, seed=0,
                 cell=None):
        self.y, self.window, self.epochs, self.lr, self.seed = y, window, epochs, lr, seed
        self.d = np.full(len(y), np.nan)
        self.d[SEASON:] = np.log(y[SEASON:]) - np.log(y[:-SEASON])
        cell = cell or rnn.cells.BUILTINS[kind](1, hidden)  # any cell of one input feature
        self.model = rnn.Model(cell, head=1, seed=seed)
        self.kind, self.hidden = kind, hidden

    def months_ok(self, months):
        return months[months >= SEASON + self.window]

    def windows(self, months):
        """Inputs d_{t-w..t-1} and targets d_{t-w+1..t} for each month t."""
        idx = months[:, None] + np.arange(-self.window, 0)[None]
        return self.d[idx][..., None], self.d[idx + 1][..., None]

    def fit(self, months, progress=False):
        months = self.months_ok(months)
        dtrain = self.d[SEASON:months[-1] + 1]
        self.mu, self.sd = dtrain.mean(), dtrain.std()
        xs, ys = self.windows(months)
        self.history = rnn.fit(self.model, (xs - self.mu) / self.sd, (ys - self.mu) / self.sd,
                               epochs=self.epochs, batch_size=16, clip_norm=1.0,
                               optimizer=rnn.optim.Adam(lr=self.lr), seed=self.seed,
                               progress=progress)
        return self

    def predict(self, months):
        xs, _ = self.windows(months)
        out, _ = self.model.forward((xs - self.mu) / self.sd)
        d_hat = out[:, -1, 0] * self.sd + self.mu
        return self.y[months - SEASON] * np.exp(d_hat)


def choose_growth_rnn(y, train_months, quiet=False, epochs=150):
    """Pick cell and size on the last training year (validation); the test set is not
    used here."""
    val = train_months[-SEASON:]
    fit_months = train_months[:-SEASON]
    best = None
    for kind in ("gru", "lstm"):
        for hidden in (4, 8):
            g = GrowthRNN(y, kind, hidden, epochs=epochs).fit(fit_months)
            score = rmse(g.predict(val), y[val])
            say(f"  validation: {kind:4s} hidden={hidden:<2d} rmse {score:6.2f}", quiet)
            if best is None or score < best[0]:
                best = (score, kind, hidden)
    return best


# ------------------------------------------------------------------ the whole demo
def run(out: str = "out", quiet: bool = False, epochs: int = 150) -> dict:
    t0 = time.perf_counter()
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    dates, y = rnn.tasks.airline()
    n = len(y)
    split = int(n * 0.67)
    test = np.arange(split, n)
    train = np.arange(SEASON + 1, split)  # every model can predict these months
    say(f"airline passengers, {n} months ({dates[0]} .. {dates[-1]}); train {dates[0]} .. "
        f"{dates[split - 1]}, test {dates[split]} .. {dates[-1]}", quiet)
    rows = []

    def add(name, tr_pred, te_pred, tr_months=train, note=""):
        rows.append({"name": name, "train_rmse": rmse(tr_pred, y[tr_months]),
                     "test_rmse": rmse(te_pred, y[test]), "note": note})

    for name, f, note in [("persistence (same as last month)", persistence, "baseline"),
                          ("seasonal naive (same month last year)", seasonal_naive, "baseline"),
                          ("seasonal naive x last year's growth", seasonal_growth, "baseline")]:
        add(name, f(y, train), f(y, test), note=note)
    say("training a windowed MLP (window 3) ...", quiet)
    tr, te = window_mlp(y, train, test)
    add("feed-forward MLP, window of 3 months", tr, te, note="feed-forward")
    say("training an LSTM fed one past month ...", quiet)
    tr, te, _ = lstm_one_month(y, train, test, progress=not quiet)
    add("LSTM fed one past month", tr, te, note="recurrent")
    say("choosing the recurrent growth model on the last training year ...", quiet)
    _, kind, hidden = choose_growth_rnn(y, train, quiet, epochs)
    say(f"training the chosen {kind.upper()} (hidden {hidden}) on all training months ...",
        quiet)
    best = GrowthRNN(y, kind, hidden, epochs=epochs).fit(train, progress=not quiet)
    tr_months = best.months_ok(train)
    add(f"{kind.upper()}({hidden}) on 12 months of yearly log growth", best.predict(tr_months),
        best.predict(test), tr_months, note="recurrent, chosen on validation")
    seconds = time.perf_counter() - t0

    print(format_table(rows))
    results = {"models": rows, "split": {"train_months": int(split), "test_months": int(len(test))},
               "units": "thousands of passengers", "training_seconds": round(seconds, 1),
               "best": {"cell": kind, "hidden": hidden}}
    (outdir / "results.json").write_text(json.dumps(results, indent=2))
    _pictures(outdir, best, y, dates, test, rows, quiet)
    _jacobians(outdir, best, y, train, test, epochs, quiet)
    say(f"wrote {outdir}/: results.json, predictions.png, jacobians.png, cell.svg, "
        f"unrolled.svg, unrolled_compact.svg, gradient_flow.svg, gradient_flow_elman.svg "
        f"({time.perf_counter() - t0:.0f}s in all)", quiet)
    return results


def _jacobians(outdir, best, y, train, test, epochs, quiet):
    """Why gradients vanish or survive: the largest singular value of each step's
    Jacobian dS_t/dS_(t-1) along a test window, for an Elman, a GRU and an LSTM of the
    chosen size, at initialization and trained like the chosen model (jacobians.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .jacobian import spectral_norms

    say("step Jacobians of Elman, GRU and LSTM, at initialization and trained ...", quiet)
    fig, ax = plt.subplots(figsize=(7, 4))
    for kind, color in (("elman", "tab:red"), ("gru", "tab:green"), ("lstm", "tab:blue")):
        g = best if kind == best.kind else GrowthRNN(y, kind, best.hidden, epochs=epochs)
        fresh = GrowthRNN(y, kind, best.hidden).model
        if g is not best:
            g.fit(train)
        xs, _ = g.windows(test[:1])
        xs = (xs - g.mu) / g.sd
        steps = np.arange(1, xs.shape[1] + 1)
        ax.plot(steps, spectral_norms(fresh, xs), color=color, ls="--", lw=1,
                label=f"{kind}, initialization")
        ax.plot(steps, spectral_norms(g.model, xs), color=color, lw=1.8,
                label=f"{kind}, trained")
    ax.axhline(1, color="gray", ls=":", lw=1)
    ax.set(xlabel="step t of a 12-month test window", yscale="log",
           ylabel="largest singular value of dS_t/dS_t-1",
           title="how much gradient one step can pass back (bounds ||dL/dS_t-1|| / ||dL/dS_t||)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(outdir / "jacobians.png", dpi=110)
    plt.close(fig)


def format_table(rows) -> str:
    w = max(len(r["name"]) for r in rows)
    lines = [f"{'model':<{w}}  {'train RMSE':>10}  {'test RMSE':>9}",
             f"{'-' * w}  {'-' * 10}  {'-' * 9}"]
    lines += [f"{r['name']:<{w}}  {r['train_rmse']:10.2f}  {r['test_rmse']:9.2f}" for r in rows]
    return "\n".join(lines)


def _pictures(outdir, best, y, dates, test, rows, quiet):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = best.model
    render.save(render.cell(model.cell, title=f"the folded {best.kind.upper()} cell: A -> A"),
                outdir / "cell.svg")
    render.save(render.unrolled(model, steps=3), outdir / "unrolled.svg")
    render.save(render.unrolled(model, steps=best.window, compact=True), outdir /
                "unrolled_compact.svg")
    xs, ys = best.windows(test[:8])
    xs, ys = (xs - best.mu) / best.sd, (ys - best.mu) / best.sd
    render.save(render.gradients(model, xs, ys[:, -1], at="last", compact=True,
                                 title=f"gradient flow through the trained {best.kind.upper()}"),
                outdir / "gradient_flow.svg")
    # the same picture for an Elman network over four years: the gradient fades
    elman = rnn.Model(rnn.cells.elman(1, 8), head=1, seed=0)
    s = (np.log(y) - np.log(y).mean()) / np.log(y).std()
    wx = np.stack([s[i:i + 48] for i in range(0, 48, 6)])[..., None]
    wy = s[[i + 48 for i in range(0, 48, 6)]][:, None]
    render.save(render.gradients(elman, wx, wy, at="last",
                                 title="Elman over 48 months: ||dL/dh_t|| fades going back"),
                outdir / "gradient_flow_elman.svg")
    fig, ax = plt.subplots(figsize=(10, 4.5))
    months = np.arange(len(y))
    ax.plot(months, y, color="black", lw=1.5, label="passengers (truth)")
    ax.plot(test, best.predict(test), color="crimson", lw=1.5,
            label=f"{rows[-1]['name']} (test RMSE {rows[-1]['test_rmse']:.1f})")
    base = min((r for r in rows if r["note"] == "baseline"), key=lambda r: r["test_rmse"])
    f = {rows[0]["name"]: persistence, rows[1]["name"]: seasonal_naive,
         rows[2]["name"]: seasonal_growth}[base["name"]]
    ax.plot(test, f(y, test), color="gray", ls="--", lw=1,
            label=f"{base['name']}, the strongest baseline (test RMSE "
                  f"{base['test_rmse']:.1f})")
    ax.axvline(test[0] - 0.5, color="#888", lw=0.8)
    ax.text(test[0] + 1, y.max() * 0.95, "test", color="#555")
    ticks = months[::12]
    ax.set_xticks(ticks, [dates[i][:4] for i in ticks])
    ax.set_ylabel("thousands of passengers")
    ax.set_title("Next-month airline passengers")
    ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    fig.savefig(outdir / "predictions.png", dpi=110)
    plt.close(fig)
