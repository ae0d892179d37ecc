"""The MiniLM text encoder loads from the installed package, offline, and gives sensible vectors."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest

from aimass.zoo import text


@pytest.fixture(scope="module")
def encoder():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip(text.PACKAGE)
    enc = text.TextEncoder()

    def no_network(*args, **kwargs):
        raise AssertionError(f"the text encoder tried to open a connection: {args}")

    with pytest.MonkeyPatch.context() as mp:  # loading (the first use) must not touch the network
        mp.setattr(socket.socket, "connect", no_network)
        mp.setattr(socket, "create_connection", no_network)
        enc.encode(["warm up"])
    return enc


def test_weights_ship_inside_the_package():
    pytest.importorskip(text.PACKAGE)
    path = text.model_path()
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()


def test_encodes_offline_normalised_and_meaningful(encoder):
    vecs = encoder.encode(["rock guitar band", "heavy metal guitar", "baroque harpsichord sonata"])
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    rock, metal, baroque = vecs
    assert rock @ metal > rock @ baroque + 0.1


def test_deterministic_and_cached(encoder):
    texts = ["a quiet jazz trio", "space opera with robots", "a quiet jazz trio"]
    a = encoder.encode(texts)
    b = text.TextEncoder().encode(texts, batch_size=2)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_array_equal(a, encoder.encode(texts))
    assert text.TextEncoder().model is encoder.model  # loaded once per process
    assert encoder.encode([]).shape == (0, 384)


def test_item_text_features_rows_follow_dense_ids(encoder):
    feats = text.item_text_features(["first item", "second item"], encoder=encoder)
    assert feats.shape == (3, 384) and feats.dtype == np.float32
    assert not feats[0].any()  # padding
    np.testing.assert_array_equal(feats[1:], encoder.encode(["first item", "second item"]))


def test_the_query_encoder_is_the_same_model_through_onnxruntime(encoder, tmp_path, monkeypatch):
    """One query at a time through onnxruntime: the torch encoder's vectors, from any number of threads; if the
    export fails (a full disk: simulated), the torch path answers instead."""
    from concurrent.futures import ThreadPoolExecutor

    texts = ["rock", "female vocalists", "80s synth pop dance", "Ελληνικά τραγούδια", "日本のロック", "a " * 400]
    ref = encoder.encode(texts, bf16=False)
    q = text.query_encoder().warm()
    assert q._session is not None and q._fallback is None  # really onnxruntime
    with ThreadPoolExecutor(4) as pool:
        got = np.stack(list(pool.map(q.encode, texts * 4)))
    assert np.allclose(np.einsum("ij,ij->i", got, np.tile(ref, (4, 1))), 1.0, atol=1e-4)

    # the same weights installed elsewhere (another environment, a fresh clone's) find the same export
    other = tmp_path / "elsewhere"
    other.mkdir()
    for f in text.model_path().iterdir():
        (other / f.name).symlink_to(f)
    assert text._exported(other) == text._exported(text.model_path())

    def full_disk(path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(text, "_exported", full_disk)
    fallback = text.QueryEncoder().warm()
    assert fallback._session is None and fallback._fallback is not None
    assert float(fallback.encode("rock") @ ref[0]) > 0.999


def test_the_onnx_cache_is_a_folder_of_this_users_alone(tmp_path, monkeypatch):
    """A model found in the cache is run: another local user must not be able to have made the folder first
    (world-writable, a model planted in it) or to point its name elsewhere with a link."""
    import stat
    import tempfile

    from aimass.errors import BackendError

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folder = text._cache_dir()
    st = folder.lstat()
    assert folder.parent == tmp_path and str(os.getuid()) in folder.name
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()

    folder.chmod(0o777)  # an older aimass's, or loosened: made private again
    assert stat.S_IMODE(text._cache_dir().lstat().st_mode) == 0o700

    folder.rmdir()
    (tmp_path / "elsewhere").mkdir()
    folder.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BackendError):
        text._cache_dir()
