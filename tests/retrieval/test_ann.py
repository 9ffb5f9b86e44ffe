"""The size rule, HNSW search against exact search, and the cached index's checks."""

import numpy as np
import pytest

from kfacel.retrieval.ann import (
    HnswIndex,
    IndexKind,
    IndexSettings,
    choose_kind,
    index_file,
)

SMALL = IndexSettings(hnsw_m=16, ef_construction=40, ef_search=64, depth=10)


def _unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_size_rule_picks_exact_below_the_threshold_and_hnsw_from_it() -> None:
    rule = IndexSettings(exact_below=1000)
    assert choose_kind(999, rule) is IndexKind.EXACT
    assert choose_kind(1000, rule) is IndexKind.HNSW
    forced = IndexSettings(kind=IndexKind.EXACT, exact_below=1000)
    assert choose_kind(10**7, forced) is IndexKind.EXACT
    assert choose_kind(5, IndexSettings(kind=IndexKind.HNSW)) is IndexKind.HNSW


def test_the_environment_forces_a_kind_and_a_bad_one_is_named(monkeypatch) -> None:
    monkeypatch.setenv("KFACEL_DENSE_INDEX", "Exact")
    assert IndexSettings.from_env().kind is IndexKind.EXACT
    monkeypatch.setenv("KFACEL_DENSE_INDEX", "flat")
    with pytest.raises(
        ValueError, match=r"^\$KFACEL_DENSE_INDEX='flat': choose one of"
    ):
        IndexSettings.from_env()
    monkeypatch.delenv("KFACEL_DENSE_INDEX")
    assert IndexSettings.from_env() == IndexSettings()


def test_hnsw_returns_the_exact_top_k_of_well_separated_names() -> None:
    """50 clusters of 10 names, the j-th at about cosine 1/√(1+(j/20)²) to its centre.

    Queried at the centres, HNSW's top 10 is the cluster in order, as exact search's.
    """
    centres = _unit_rows(50, 32, seed=0)
    steps = 0.05 * np.arange(1, 11, dtype=np.float32)[None, :, None]  # [1, 10, 1]
    names = centres[:, None, :] + steps * _unit_rows(500, 32, seed=1).reshape(
        50, 10, 32
    )
    names = (names / np.linalg.norm(names, axis=2, keepdims=True)).reshape(500, 32)
    index = HnswIndex.build(names, SMALL)
    found_scores, found = index.search(centres)
    exact = centres @ names.T
    np.testing.assert_array_equal(found, np.argsort(-exact, axis=1)[:, :10])
    np.testing.assert_array_equal(found[:, 0], 10 * np.arange(50))
    np.testing.assert_allclose(
        found_scores, np.take_along_axis(exact, found, 1), rtol=1e-5
    )
    scores = index.scores(centres)  # [b, names]: the nearest ten, zeros elsewhere
    assert (np.count_nonzero(scores, axis=1) == 10).all()
    np.testing.assert_allclose(
        np.take_along_axis(scores, found, 1), found_scores, rtol=1e-6
    )


def test_a_saved_index_is_read_back_and_a_damaged_one_refused(tmp_path, caplog) -> None:
    names = _unit_rows(200, 16, seed=2)
    file = index_file(tmp_path, "k" * 64, SMALL)
    HnswIndex.build(names, SMALL).save(file, "k" * 64)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".faiss", ".json"]
    again = HnswIndex.load(file, "k" * 64, 200, SMALL)
    assert again is not None
    np.testing.assert_array_equal(
        again.search(names[:5])[1], HnswIndex.build(names, SMALL).search(names[:5])[1]
    )
    assert HnswIndex.load(file, "k" * 64, 201, SMALL) is None  # other names
    assert HnswIndex.load(file, "j" * 64, 200, SMALL) is None  # another key
    blob = bytearray(file.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    file.write_bytes(bytes(blob))
    caplog.clear()
    with caplog.at_level("WARNING", logger="kfacel.retrieval.ann"):
        assert HnswIndex.load(file, "k" * 64, 200, SMALL) is None
    (line,) = [r.getMessage() for r in caplog.records]
    assert (
        line == f"dense index {file} does not match its digest (damaged); rebuilding it"
    )
