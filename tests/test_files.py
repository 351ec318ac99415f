"""rnn/io/files.py: model files (safetensors) and Model.load_params."""

import json
import os
import struct

import numpy as np
import pytest

import rnn
from rnn import Model, ModelFileError, cells
from rnn.io import files

XS = np.random.default_rng(0).standard_normal((2, 5, 3))


def _model(**kw):
    return Model(cells.lstm(3, 4), seed=1, **kw)


def _header(meta=None, tensors=None):
    """A hand-written safetensors file: 8-byte length, JSON header, data."""
    head = dict(tensors or {})
    if meta is not None:
        head["__metadata__"] = meta
    return json.dumps(head).encode()


@pytest.mark.parametrize("kw", [{}, {"layers": 2, "head": 2}, {"dtype": "float32"},
                                {"learn_initial": ("h",)}])
def test_round_trip_gives_the_same_model(tmp_path, kw):
    m = _model(**kw)
    path = m.save(tmp_path / "m.unroll")
    m2 = Model.load(path)
    assert (m2.layers, m2.head, m2.dtype, m2.learn_initial) == \
        (m.layers, m.head, m.dtype, m.learn_initial)
    assert m2.params.keys() == m.params.keys()
    for k in m.params:
        np.testing.assert_array_equal(m2.params[k], m.params[k])
    xs = XS.astype(m.dtype)
    np.testing.assert_array_equal(m2.forward(xs)[0], m.forward(xs)[0])


def test_a_custom_cell_travels_as_equations(tmp_path):
    cell = rnn.Cell.from_equations("a = W @ x + U @ h[t-1]\nh = tanh(a + b)",
                                   inputs={"x": 3}, states={"h": 5})
    m = Model(cell, seed=2)
    m2 = Model.load(m.save(tmp_path / "c.unroll"))
    assert m2.cell.text == cell.text
    np.testing.assert_array_equal(m2.forward(XS)[0], m.forward(XS)[0])


def test_the_file_is_plain_safetensors(tmp_path):
    from safetensors.numpy import load_file

    m = _model()
    got = load_file(str(m.save(tmp_path / "m.unroll")))
    assert got.keys() == m.params.keys()  # PyTorch's names: weight_ih_l0, ...


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.unroll"
    _model().save(path)
    before = path.read_bytes()

    def crash(*a):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        Model(cells.gru(3, 4), seed=5).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.unroll"]  # no temporary left


def test_nan_weights_are_not_saved(tmp_path):
    m = _model()
    m._params["bias_hh_l0"][0] = np.nan  # as a blown-up training run leaves them
    with pytest.raises(ValueError, match="bias_hh_l0"):
        m.save(tmp_path / "m.unroll")
    assert not (tmp_path / "m.unroll").exists()


def _bad(tmp_path, data: bytes, match: str):
    path = tmp_path / "bad.unroll"
    path.write_bytes(data)
    with pytest.raises(ModelFileError, match=match):
        Model.load(path)


def test_load_rejects_what_is_not_a_model_file(tmp_path):
    import pickle
    import zipfile

    good = _model().save(tmp_path / "m.unroll").read_bytes()
    _bad(tmp_path, b"", "shorter than")
    _bad(tmp_path, b"\x01\x02", "shorter than")
    _bad(tmp_path, np.random.default_rng(1).bytes(5000), "not a model file")
    _bad(tmp_path, pickle.dumps({"weight": np.ones(3)}), "not a model file")
    zpath = tmp_path / "z.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("bomb", b"\0" * 10_000_000)
    _bad(tmp_path, zpath.read_bytes(), "not a model file")
    for cut in (7, 8, 20, len(good) // 2, len(good) - 1):  # truncated anywhere
        _bad(tmp_path, good[:cut], "model file|truncated|shorter")
    with pytest.raises(ModelFileError, match="cannot read"):
        Model.load(tmp_path / "missing.unroll")


def test_load_rejects_a_header_length_past_the_file_or_the_cap(tmp_path):
    _bad(tmp_path, struct.pack("<Q", 2**62) + b"{}", "claims")
    big = files.MAX_HEADER + 1
    _bad(tmp_path, struct.pack("<Q", big) + b" " * big, "cap")


def test_every_flipped_bit_is_caught_or_harmless(tmp_path):
    m = _model()
    good = bytearray(m.save(tmp_path / "m.unroll").read_bytes())
    rng = np.random.default_rng(3)
    for pos in rng.choice(len(good) * 8, size=60, replace=False):
        data = bytearray(good)
        data[pos // 8] ^= 1 << (pos % 8)
        path = tmp_path / "flip.unroll"
        path.write_bytes(bytes(data))
        try:
            m2 = Model.load(path)
        except ModelFileError:
            continue
        # a flip the checks cannot see (JSON whitespace, a letter's case in a name
        # nobody reads) must leave the same model
        for k in m.params:
            np.testing.assert_array_equal(m2.params[k], m.params[k])


def test_load_rejects_hostile_headers(tmp_path):
    meta = {"format": "unroll.model", "version": "1"}

    def file(head: dict, data=b""):
        h = json.dumps(head).encode()
        return struct.pack("<Q", len(h)) + h + data

    # shapes whose product overflows, or disagrees with the bytes
    _bad(tmp_path, file({"__metadata__": meta, "w": {"dtype": "F64", "shape": [2**40, 2**40],
                                                     "data_offsets": [0, 8]}}, b"\0" * 8),
         "not a valid model file")
    _bad(tmp_path, file({"__metadata__": meta, "w": {"dtype": "F64", "shape": [3],
                                                     "data_offsets": [0, 8]}}, b"\0" * 8),
         "not a valid model file")
    _bad(tmp_path, file({"__metadata__": meta, "w": {"dtype": "Q99", "shape": [1],
                                                     "data_offsets": [0, 8]}}, b"\0" * 8),
         "not a valid model file")
    dup = b'{"w": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}, ' \
          b'"w": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}}'
    _bad(tmp_path, struct.pack("<Q", len(dup)) + dup + b"\0" * 8, "twice")
    _bad(tmp_path, file({"__metadata__": {"format": "other"}}), "not an unroll.model")
    _bad(tmp_path, file({"__metadata__": {**meta, "version": "9"}}), "version")


def test_a_hostile_cell_text_is_parsed_never_run(tmp_path, monkeypatch):
    m = _model()
    path = m.save(tmp_path / "m.unroll")
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(path), framework="np") as f:
        meta = f.metadata()
    marker = tmp_path / "ran"
    meta["cell"] = f"h = __import__('os').system('touch {marker}')"
    save_file(load_file(str(path)), str(path), metadata=meta)
    with pytest.raises(ModelFileError, match="does not build a model"):
        Model.load(path)
    assert not marker.exists()


def test_other_dtypes_and_shapes_are_refused_by_name(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "m.unroll"
    _model().save(path)
    m = _model()
    with pytest.raises(ShapeErrorOrValue, match="weight_hh_l0"):
        m.load_params({**m.params, "weight_hh_l0": np.zeros((2, 2))})
    with pytest.raises(TypeError, match="weight_hh_l0"):
        m.load_params({**m.params, "weight_hh_l0": m.params["weight_hh_l0"].astype("f4")})
    with pytest.raises(ValueError, match="'nope'"):
        m.load_params({**m.params, "nope": np.zeros(1)})
    with pytest.raises(ValueError, match="missing"):
        m.load_params({"weight_hh_l0": m.params["weight_hh_l0"]})
    with pytest.raises(ValueError, match="NaN"):
        m.load_params({**m.params, "bias_ih_l0": np.full(16, np.nan)})
    save_file({k: v.astype("f4") for k, v in m.params.items()}, str(path),
              metadata={"format": "unroll.model", "version": "1"})
    with pytest.raises(ModelFileError):
        Model.load(path)


def test_load_params_sets_nothing_unless_all_is_right():
    m = _model()
    before = {k: v.copy() for k, v in m.params.items()}
    new = {k: v + 1 for k, v in m.params.items()}
    new["weight_hh_l0"] = np.zeros((1, 1))
    with pytest.raises(ValueError):
        m.load_params(new)
    for k in before:
        np.testing.assert_array_equal(m.params[k], before[k])
    m.load_params({"bias_ih_l0": np.ones(16)}, strict=False)
    np.testing.assert_array_equal(m.params["bias_ih_l0"], np.ones(16))


ShapeErrorOrValue = ValueError  # ShapeError is a ValueError
