"""The ``unroll`` command line. User mistakes are one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np

EXAMPLES = {
    "demo": "unroll demo                  # airline passengers: baselines vs RNNs, writes out/",
    "render": "unroll render lstm -o out/lstm.svg\n"
              "  unroll render gru --steps 4 -o out/gru_unrolled.png\n"
              "  unroll render elman --steps 40 --grad -o out/elman_grad.svg",
    "trace": "unroll trace elman --steps 3 --hidden-size 2",
    "gradcheck": "unroll gradcheck my_cell.cell --steps 5",
    "train": "unroll train adding --cell lstm --steps 30 --epochs 20\n"
             "  unroll train chars --cell gru          # a character-level language model",
    "bench": "unroll bench --quick",
    "compile": "unroll compile lstm --show --layers 2",
    "derive": "unroll derive lstm                   # why the cell state's gradient survives",
}


# float64 central differences perturb entries one by one: 1M parameter entries check in
# about 6 s; a 10,000-wide state (100M) ran past two minutes and 8 GB
GRADCHECK_MAX_PARAMS = 2_000_000


class UserError(Exception):
    """A mistake in what the user asked for: reported in one line, no traceback."""


# ------------------------------------------------------------------ resolving CELL
def load_cell(spec: str, input_size: int, hidden_size: int, inputs=None, states=None):
    """CELL: a built-in name, a .cell file of equations, or module:attr."""
    import rnn
    from engine.errors import UnrollError

    if spec in rnn.cells.BUILTINS:
        return rnn.cells.BUILTINS[spec](input_size, hidden_size)
    if spec.endswith(".cell") or os.path.isfile(spec):
        path = Path(spec)
        if path.is_dir():
            raise UserError(f"cell file '{spec}' is a folder, not a file of equations")
        if not path.is_file():
            raise UserError(f"cell file '{spec}' does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            line = e.object[:e.start].count(b"\n") + 1
            raise UserError(f"cell file '{spec}' is not UTF-8 text: byte {e.object[e.start]:#04x}"
                            f" on line {line}; save it as UTF-8") from None
        except OSError as e:
            raise UserError(f"cannot read cell file '{spec}': {e.strerror or e}") from None
        head = {k: v for k, v in re.findall(r"^#\s*(inputs|states|sizes|outputs):\s*(.+)$",
                                              text, re.M)}
        ins = inputs or _sizes(head.get("inputs")) or {"x": input_size}
        # no sizes given: every variable read with a delay is a state of hidden_size, as
        # the built-ins get (the sizes header, --states or --hidden-size say otherwise)
        sts = states or _sizes(head.get("states")) or {
            v: hidden_size for v in re.findall(r"\b([A-Za-z_]\w*)\s*\[\s*t\s*-", _code(text))
            if v not in ins}
        sizes = _sizes(head.get("sizes"))
        outs = [o.strip() for o in head["outputs"].split(",")] if "outputs" in head else None
        return rnn.Cell.from_equations(text, inputs=ins, states=sts, sizes=sizes, outputs=outs)
    if ":" in spec:
        mod, _, attr = spec.partition(":")
        sys.path.insert(0, os.getcwd())
        try:
            obj = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise UserError(f"cannot load '{spec}': {e}") from None
        except SyntaxError as e:  # the user's module: where, not our traceback
            raise UserError(f"cannot load '{spec}': {e.filename}, line {e.lineno}: "
                            f"{e.msg}") from None
        except Exception as e:  # noqa: BLE001 - whatever their module raises on import
            raise UserError(f"cannot load '{spec}': importing '{mod}' raised "
                            f"{_where(e)}") from None
        if callable(obj) and not isinstance(obj, (rnn.Cell, rnn.Model)):
            try:
                obj = obj(input_size, hidden_size)
            except UnrollError:
                raise
            except Exception as e:  # noqa: BLE001 - their function: say where it failed
                raise UserError(f"cannot load '{spec}': {attr}({input_size}, {hidden_size}) "
                                f"raised {_where(e)}") from None
        if isinstance(obj, (rnn.Cell, rnn.Model)):
            return obj
        raise UserError(f"'{spec}' is a {type(obj).__name__}, expected a rnn.Cell or rnn.Model")
    raise UserError(f"unknown cell '{spec}': expected a built-in "
                    f"({', '.join(sorted(rnn.cells.BUILTINS))}), a .cell file, or module:attr")


def _code(text: str) -> str:
    """The equations of a .cell file without their comments."""
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def _where(e: BaseException) -> str:
    """``ZeroDivisionError: division by zero (m.py, line 3)``: the innermost frame."""
    tb = traceback.extract_tb(e.__traceback__)
    at = f" ({tb[-1].filename}, line {tb[-1].lineno})" if tb else ""
    return f"{type(e).__name__}: {e}{at}"


def _sizes(text: str | None) -> dict[str, int]:
    out = {}
    for part in (text or "").replace(",", " ").split():
        name, eq, n = part.partition("=")
        if not eq or not n.isdigit():
            raise UserError(f"sizes are written name=int, got '{part}'")
        out[name] = int(n)
    return out


def _cell(args):
    """The CELL argument with the size flags: a Cell (or a Model from module:attr)."""
    return load_cell(args.cell, args.input_size, args.hidden_size,
                     _sizes(args.inputs) or None, _sizes(args.states) or None)


def _writable(path: str | None, flag: str) -> None:
    """UserError now if ``flag``'s file could not be written later."""
    from .render import why_not_writable

    why = path and why_not_writable(path)
    if why:
        raise UserError(f"{flag} {path}: cannot write it: {why}")


def _model(args, head: int | None = 1):
    import rnn

    obj = _cell(args)
    if isinstance(obj, rnn.Model):
        return obj
    return rnn.Model(obj, layers=args.layers, head=head, seed=args.seed)


def _data(model, steps: int, batch: int, seed: int):
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((batch, steps, model.input_size))
    ys = rng.standard_normal((batch, steps, model.output_size)) * 0.5
    return xs, ys


# ------------------------------------------------------------------ commands
def cmd_demo(args):
    from . import demo
    from .render import why_not_writable

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {args.out}: it is a file; give a folder for the results")
    why = why_not_writable(out / "results.json")
    if why:
        raise UserError(f"--out {args.out}: cannot write there: {why}")
    demo.run(args.out, quiet=args.quiet, epochs=args.epochs)


def cmd_render(args):
    from . import render

    out = Path(args.output or f"out/{Path(args.cell).stem.replace(':', '_')}"
               f"{'-grad' if args.grad else '-unrolled' if args.steps else ''}.svg")
    render.check_output(out)  # a bad -o is said before any work
    if args.grad:
        model = _model(args)
        steps = args.steps or 30
        xs, ys = _data(model, steps, 4, args.seed)
        g = render.gradients(model, xs, ys[:, -1], at="last", truncate=args.truncate,
                             compact=args.compact)
    elif args.steps:
        target = _model(args, head=None) if args.layers > 1 else _cell(args)
        g = render.unrolled(target, steps=args.steps, compact=args.compact)
    else:
        g = render.cell(_cell(args))
    print(render.save(g, out, progress=True))


def cmd_trace(args):
    import rnn

    from .trace import trace

    model = _model(args)
    if args.program:
        rnn.unroll(model, args.steps, truncate=args.truncate, print_after_all=True)
        print()
    xs, ys = _data(model, args.steps, args.batch, args.seed)
    print(trace(model, xs, ys, show_temps=args.temps))


def cmd_gradcheck(args):
    import rnn

    from .gradcheck import check_bptt

    model = _model(args, head=2)
    size = sum(np.size(p) for p in model.params.values())
    if size > GRADCHECK_MAX_PARAMS:
        raise UserError(f"gradcheck is for small sizes: {args.cell} has {size:,} parameter "
                        f"entries, more than {GRADCHECK_MAX_PARAMS:,}; a cell's derivatives "
                        f"do not depend on its sizes, check it with small ones "
                        f"(e.g. --hidden-size 8 or --states h=8)")
    xs, ys = _data(model, args.steps, 2, args.seed)
    with np.errstate(all="ignore"):
        loss = rnn.bptt(model, xs, ys, truncate=args.truncate).loss
    if not np.isfinite(loss):
        raise UserError(f"the loss of {args.cell} is {loss} at its initial weights (random "
                        f"inputs, T={args.steps}): finite differences need a finite loss; look "
                        f"for a value that overflows, e.g. a large constant or exp()")
    res = check_bptt(model, xs, ys, raise_on_fail=False, truncate=args.truncate)
    print(f"gradcheck {args.cell}: T={args.steps}, {len(model.params)} parameters + initial "
          f"states, float64, central differences eps 1e-6 and a VJP/JVP projection")
    k = args.truncate
    if k is not None and k < args.steps:
        cuts = ", ".join(map(str, range(k, args.steps, k)))
        print(f"truncate={k}: the truncated gradient is the gradient of a surrogate, the loss "
              f"with the state entering step{'s' if k * 2 < args.steps else ''} {cuts} held "
              f"fixed (run window by window from an unperturbed run's state); the finite "
              f"differences are taken of that objective")
    print(res)
    if res.truncation_gap is not None:
        print(f"what truncation changes: ||g_truncated - g_full|| / ||g_full|| = "
              f"{res.truncation_gap:.1%} (the gradient of the full loss, T={args.steps}, "
              f"for comparison)")
    return 0 if res.ok else 1


def cmd_train(args):
    import rnn

    task = args.task
    if task == "airline":
        from . import demo

        y = rnn.tasks.airline()[1]
        split = int(len(y) * 0.67)
        cell = load_cell(args.cell, 1, args.hidden_size or 16, _sizes(args.inputs) or None,
                         _sizes(args.states) or None)
        cell = cell.cell if isinstance(cell, rnn.Model) else cell
        if list(cell.inputs.values()) != [1]:
            raise UserError(f"the airline task feeds one number per step; '{args.cell}' takes "
                            f"inputs {cell.inputs}")
        g = demo.GrowthRNN(y, epochs=args.epochs or 20, cell=cell)
        g.fit(np.arange(demo.SEASON + 1, split), progress=True)
        test = np.arange(split, len(y))
        print(f"airline next-month test RMSE: {demo.rmse(g.predict(test), y[test]):.2f} "
              f"thousand passengers")
        return 0
    if task == "chars":
        return _train_chars(args)
    args.hidden_size = args.hidden_size or 16
    args.epochs = args.epochs or 20
    args.steps = args.steps or 20
    makers = {"adding": lambda n, s: rnn.tasks.adding(n, args.steps, seed=s),
              "copy": lambda n, s: rnn.tasks.copy_memory(n, args.steps, seed=s),
              "sine": lambda n, s: rnn.tasks.sine(n, args.steps, seed=s)}
    if task not in makers:
        raise UserError(f"unknown task '{task}': choose airline, adding, copy, sine or chars")
    xs, ys = makers[task](args.samples, args.seed)
    vx, vy = makers[task](max(args.samples // 4, 8), args.seed + 1)
    loss, at = {"adding": ("mse", "last"), "copy": ("cross_entropy", "all"),
                "sine": ("mse", "all")}[task]
    out_size = xs.shape[-1] if task == "copy" else 1
    args.input_size = xs.shape[-1]
    obj = load_cell(args.cell, args.input_size, args.hidden_size, _sizes(args.inputs) or None,
                    _sizes(args.states) or None)
    model = obj if isinstance(obj, rnn.Model) else rnn.Model(obj, layers=args.layers,
                                                             head=out_size, seed=args.seed)
    if args.resume and not args.checkpoint:
        raise UserError("--resume goes on from a --checkpoint FILE: give one")
    _writable(args.save, "--save")  # said now, not after the training
    _writable(args.checkpoint, "--checkpoint")
    print(f"training {model} on {task} (T={xs.shape[1]}, {len(xs)} sequences)")
    hist = rnn.fit(model, xs, ys, loss=loss, at=at, epochs=args.epochs,
                   batch_size=args.batch_size, clip_norm=1.0, truncate=args.truncate,
                   optimizer=rnn.optim.Adam(lr=args.lr), validation=(vx, vy), seed=args.seed,
                   checkpoint=args.checkpoint, checkpoint_every=10, resume=args.resume)
    if args.save:
        print(f"model written to {model.save(args.save)}")
    base = ""
    if task == "adding":
        base = "predicting the mean gives 0.167"
    elif task == "copy":
        guess = np.log(xs.shape[-1] - 2) * 5 / xs.shape[1]
        base = f"blanks right and symbols guessed gives {guess:.3f}"
    print(f"final loss: train {hist.losses[-1]:.4f}, validation {hist.val_losses[-1]:.4f}"
          f"{' (' + base + ')' if base else ''}; {hist.seconds:.1f}s")
    return 0


def _train_chars(args):
    """``unroll train chars``: the character-level language model (tools/chars.py)."""
    import rnn

    from . import chars

    V = len(chars.vocabulary())
    obj = load_cell(args.cell, V, args.hidden_size or 128, _sizes(args.inputs) or None,
                    _sizes(args.states) or None)
    cell = obj.cell if isinstance(obj, rnn.Model) else obj
    if list(cell.inputs.values()) != [V]:
        raise UserError(f"the chars task feeds one-hot characters ({V} symbols) to one input; "
                        f"'{args.cell}' takes inputs {cell.inputs}")
    _writable(args.save, "--save")
    r = chars.train(args.cell, epochs=args.epochs or 12, steps=args.steps or 64,
                    batch=args.batch_size, lr=args.lr, seed=args.seed, cell_obj=cell,
                    layers=args.layers, save=args.save)
    name = Path(args.cell).stem if args.cell.endswith(".cell") else args.cell
    print(f"bits/char: unigram {r['unigram']:.3f}, bigram {r['bigram']:.3f}, "
          f"{name} {r['bpc']:.3f} (validation; {r['seconds']:.0f} s)")
    return 0


def cmd_derive(args):
    import rnn

    from .derive import derive

    obj = _cell(args)
    print(derive(obj.full if isinstance(obj, rnn.Model) else obj).text(), end="")


def cmd_compile(args):
    import time

    model = _model(args, head=args.head)
    model = type(model)(model.cell, layers=model.layers, head=model.head, dtype=args.dtype)
    t0 = time.perf_counter()
    plan = model.plan(masked=args.masked)
    took = time.perf_counter() - t0
    if plan is None:
        raise UserError(f"the loop compiler does not handle {args.cell}; the reference "
                        f"interpreter runs it")
    loops = sum(hasattr(g, "nodes") for g in plan.groups)
    print(f"# {args.cell}: the cell (A -> A) unrolled over T steps (A -> B) is rolled back "
          f"into {loops} time loop(s) and {len(plan.groups) - loops} sweep(s) over all T;")
    print(f"# {args.dtype}, any T and batch; generated in {took:.2f} s (Numba compiles it at "
          f"its first call and keeps the machine code in the kernel cache)")
    print(plan.source() if args.show else plan.summary())


def cmd_bench(args):
    from . import bench

    return bench.main(quick=args.quick, only=args.only, dtype=args.dtype, busy=args.busy,
                      json_path=args.json)


# ------------------------------------------------------------------ parser
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}")
    return n


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0 < v < float("inf"):  # also NaN
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return v


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="unroll", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Recurrent cells as equations, unrolled into programs: see A -> A "
                    "become A -> B, and the gradient flow back through time.",
        epilog="CELL is a built-in (elman, jordan, lstm, gru, gru_classic, peephole_lstm), "
               "a .cell file of equations (with '# inputs: x=1' / '# states: h=8' lines), "
               "or module:attr.\nexamples:\n  " + "\n  ".join(EXAMPLES.values()))
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name, help_):
        sp = sub.add_parser(name, help=help_, description=help_,
                            epilog="example:\n  " + EXAMPLES[name],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        return sp

    def cell_args(sp, cell=True):
        if cell:
            sp.add_argument("cell", metavar="CELL")
        sp.add_argument("--input-size", type=positive, default=1)
        sp.add_argument("--hidden-size", type=positive, default=8)
        sp.add_argument("--inputs", help="input sizes for a .cell file, e.g. x=3")
        sp.add_argument("--states", help="state sizes for a .cell file, e.g. h=16,c=16")
        sp.add_argument("--layers", type=positive, default=1)
        sp.add_argument("--seed", type=int, default=0)

    sp = add("demo", "train on the embedded airline data, print a results table, write out/")
    sp.add_argument("--out", default="out")
    sp.add_argument("--epochs", type=positive, default=150)
    sp.add_argument("--quiet", action="store_true")
    sp.set_defaults(func=cmd_demo)

    sp = add("render", "draw the folded cell, the unrolled graph (--steps), or the gradient "
                       "flow after BPTT (--grad)")
    cell_args(sp)
    sp.add_argument("--steps", type=positive, default=None,
                    help="draw the graph unrolled over N steps (with --grad: 30 if not given)")
    sp.add_argument("--grad", action="store_true")
    sp.add_argument("--compact", action="store_true", default=None,
                    help="one node per step and layer (the default when steps > 12 or when the "
                         "full graph, cell nodes x steps, is too large to lay out quickly)")
    sp.add_argument("--truncate", type=positive, default=None)
    sp.add_argument("-o", "--output", help="FILE.svg, .png or .dot (.pdf with a system "
                    "Graphviz; default out/CELL.svg)")
    sp.set_defaults(func=cmd_render)

    sp = add("trace", "forward values and backward adjoints, step by step")
    cell_args(sp)
    sp.add_argument("--steps", type=positive, required=True)
    sp.add_argument("--batch", type=positive, default=1)
    sp.add_argument("--temps", action="store_true", help="show intermediate nodes too")
    sp.add_argument("--program", action="store_true",
                    help="first print the unrolled program, after each compiler pass")
    sp.add_argument("--truncate", type=positive, default=None,
                    help="with --program: the truncation pass that cuts every k steps")
    sp.set_defaults(func=cmd_trace)

    sp = add("gradcheck", "BPTT against finite differences in float64")
    cell_args(sp)
    sp.add_argument("--steps", type=positive, default=4)
    sp.add_argument("--truncate", type=positive, default=None)
    sp.set_defaults(func=cmd_gradcheck)

    sp = add("train", "train a cell on a task: airline, adding, copy, sine, chars")
    sp.add_argument("task", metavar="TASK")
    sp.add_argument("--cell", default="lstm")
    cell_args(sp, cell=False)
    sp.add_argument("--steps", type=positive, default=None,
                    help="sequence length, 20 (lag for copy; chars: the BPTT window, 64)")
    sp.add_argument("--samples", type=positive, default=1024)
    sp.add_argument("--epochs", type=positive, default=None, help="20 (chars: 12)")
    sp.add_argument("--batch-size", type=positive, default=32)
    sp.add_argument("--lr", type=positive_float, default=1e-2)
    sp.add_argument("--truncate", type=positive, default=None)
    sp.add_argument("--save", metavar="FILE", help="write the trained model (rnn.Model.load "
                    "reads it back)")
    sp.add_argument("--checkpoint", metavar="FILE", help="save the run after every epoch "
                    "(and every 10 updates) to FILE")
    sp.add_argument("--resume", action="store_true", help="go on from --checkpoint if it "
                    "exists")
    sp.set_defaults(func=cmd_train, hidden_size=None)

    sp = add("compile", "the compiled time loop generated for a cell: the unrolled program "
                        "rolled back into one loop")
    cell_args(sp)
    sp.add_argument("--show", action="store_true", help="print the generated loop source")
    sp.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    sp.add_argument("--masked", action="store_true", help="the step for ragged batches")
    sp.add_argument("--head", type=positive, default=None, help="a dense head of this size")
    sp.set_defaults(func=cmd_compile)

    sp = add("derive", "the backward recurrence of a cell as equations: reverse mode over one "
                       "step, written out (dh[t-1] = ...)")
    cell_args(sp)
    sp.set_defaults(func=cmd_derive)

    sp = add("bench", "time a BPTT training step against PyTorch and JAX, side by side "
                      "(peers that are not installed are skipped)")
    sp.add_argument("--quick", action="store_true",
                    help="three small workloads: tiny-lstm, small-lstm, custom-mgu")
    sp.add_argument("--only", default="", metavar="NAME[,NAME]",
                    help="these workloads: tiny-lstm, small-lstm, small-gru, medium-lstm, "
                         "long-elman, custom-mgu")
    sp.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    sp.add_argument("--busy", action="store_true",
                    help="run everything again beside one process spinning on one core, "
                         "and print each contender's slowdown busy / quiet")
    sp.add_argument("--json", metavar="FILE", help="write every number to FILE")
    sp.set_defaults(func=cmd_bench)
    return p


def _os_message(e: OSError) -> str:
    """``cannot use 'x/y.npz': Not a directory`` rather than ``[Errno 20] ...``."""
    if e.filename is None or not e.strerror:
        return str(e)
    return f"cannot use '{e.filename}': {e.strerror}"


def main(argv=None) -> int:
    from engine.errors import UnrollError

    p = parser()
    args = p.parse_args(argv)
    if not getattr(args, "command", None):
        p.print_help()
        return 2
    with warnings.catch_warnings():
        def one_line(message, category, *_args, **_kw):  # a note, not a source listing
            kind = "note" if issubclass(category, UserWarning) else category.__name__
            print(f"unroll {args.command}: {kind}: {message}", file=sys.stderr)

        warnings.showwarning = one_line
        try:
            return args.func(args) or 0
        except BrokenPipeError:  # `unroll trace ... | head`: the reader has gone, as with cat
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):
                pass  # no real stdout (tests capture it)
            return 141  # 128 + SIGPIPE, what the shell reports for cat
        except (UserError, UnrollError, ValueError, TypeError, OSError) as e:  # not our bug
            if os.environ.get("UNROLL_DEBUG"):
                raise
            msg = _os_message(e) if isinstance(e, OSError) else str(e)
            if "sizes={" in msg:  # the library's hint speaks Python: say the flags too
                msg += ("; on the command line: --states NAME=N (or --hidden-size N), "
                        "--inputs NAME=N, or a '# sizes: NAME=N' line in the .cell file")
            print(f"unroll {args.command}: error: {msg}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
