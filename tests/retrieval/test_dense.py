"""The dense channel: synonyms without shared 3-grams, and the name-matrix cache."""

import numpy as np

from kfacel.retrieval.candidates import make_candidates
from kfacel.retrieval.methods import build_generator
from tests.retrieval._dictionaries import SYNONYMS as CONCEPTS


def test_dense_channel_finds_synonyms_that_share_no_trigram(dense) -> None:
    tfidf = build_generator("tfidf", CONCEPTS)
    mentions = ["sleep problems", "high temperature", "heart attack"]
    golds = ["C5", "C3", "C1"]
    _, dense_found, _ = make_candidates(
        dense, mentions, golds, num_candidates=2, seed=0
    )
    _, tfidf_found, _ = make_candidates(
        tfidf, mentions, golds, num_candidates=2, seed=0
    )
    assert dense_found == [True, True, True]
    assert not tfidf_found[1]  # "high temperature" shares no trigram with C3
    best = dense.search(["heart attack"], 1)[0][0][0]
    assert best.id == "C1"
    assert best.synonym == "Heart attack"


def test_name_index_is_cached_and_a_damaged_entry_rebuilt(
    dense, monkeypatch, tmp_path
) -> None:
    from kfacel.retrieval.dense import NameIndex

    monkeypatch.setenv("KFACEL_CACHE_DIR", str(tmp_path))  # this test's entries alone
    encoder = dense.index.encoder
    names = ["alpha", "beta gamma"]
    first = NameIndex.build(encoder, names)

    def refuse(*args, **kwargs):
        raise AssertionError("encoded again instead of reading the cache")

    with monkeypatch.context() as m:
        m.setattr(encoder, "encode", refuse)
        again = NameIndex.build(encoder, names)
    np.testing.assert_array_equal(first.matrix, again.matrix)
    (entry,) = [
        p for p in NameIndex.cache_files() if p.stat().st_size < 4096
    ]  # the two-name entry
    entry.write_bytes(b"not safetensors")
    rebuilt = NameIndex.build(encoder, names)
    np.testing.assert_allclose(rebuilt.matrix, first.matrix, atol=1e-6)
    norms = np.linalg.norm(rebuilt.matrix, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_a_cache_entry_with_one_flipped_byte_is_rebuilt_saying_so(
    dense, caplog, tmp_path
) -> None:
    """One byte of the cached embeddings flipped: not read back, rebuilt, one line."""
    from kfacel.retrieval.dense import NameIndex

    encoder = dense.index.encoder
    names = ["delta", "epsilon zeta"]
    first = NameIndex.build(encoder, names, cache=tmp_path)
    (entry,) = tmp_path.glob("names-*.safetensors")
    blob = bytearray(entry.read_bytes())
    blob[-1] ^= 0x40  # the last embedding's last float: still a finite number
    entry.write_bytes(bytes(blob))
    with caplog.at_level("WARNING", logger="kfacel.retrieval.dense"):
        rebuilt = NameIndex.build(encoder, names, cache=tmp_path)
    np.testing.assert_allclose(rebuilt.matrix, first.matrix, atol=1e-6)
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"{entry} does not match its digest (damaged); rebuilding it" in line
    again = NameIndex.build(
        encoder, names, cache=tmp_path
    )  # the rebuilt entry is trusted again
    np.testing.assert_array_equal(again.matrix, rebuilt.matrix)


def test_a_mention_the_encoder_finds_nothing_like_has_no_candidate(dense) -> None:
    """Other scripts and symbols: no candidate from dense or fused, not the least unlike.

    The encoder ranks every name for any string; what has no letter or digit of the
    dictionary's is refused before ranking.
    """
    fused = build_generator("fused", CONCEPTS, encoder=dense.index.encoder)
    foreign = ["血友病", "患者は血友病です", "гемофилией", "∑∆∂"]
    for generator in (dense, fused):
        assert generator.search(foreign, 5) == [[] for _ in foreign]
        assert generator.search(["heart attack"], 1)[0][0][0].id == "C1"


def test_above_the_threshold_the_hnsw_index_is_cached_and_a_damaged_one_rebuilt(
    tmp_path, monkeypatch, caplog
) -> None:
    """The index is built once, read back, and rebuilt when a byte of it flips."""
    from kfacel.retrieval import dense
    from kfacel.retrieval.ann import IndexSettings
    from tests.retrieval._dictionaries import HashEncoder

    names = [f"name {i}" for i in range(60)]
    settings = IndexSettings(exact_below=50, hnsw_m=8, ef_search=16, depth=8)
    first = dense.NameIndex.build(
        HashEncoder(), names, cache=tmp_path, settings=settings
    )  # type: ignore[arg-type]
    assert first.approximate is not None
    built: list[int] = []
    real_build = dense.HnswIndex.build

    def counted(matrix, s):
        built.append(len(matrix))
        return real_build(matrix, s)

    monkeypatch.setattr(dense.HnswIndex, "build", counted)
    queries = HashEncoder().encode(["name 7", "name 70"])
    again = dense.NameIndex.build(
        HashEncoder(), names, cache=tmp_path, settings=settings
    )  # type: ignore[arg-type]
    assert built == []
    np.testing.assert_array_equal(again.scores(queries), first.scores(queries))
    (file,) = tmp_path.glob("ann-*.faiss")
    blob = bytearray(file.read_bytes())
    blob[-9] ^= 0x01
    file.write_bytes(bytes(blob))
    with caplog.at_level("WARNING"):
        rebuilt = dense.NameIndex.build(
            HashEncoder(), names, cache=tmp_path, settings=settings
        )  # type: ignore[arg-type]
    assert built == [60]
    assert "does not match its digest (damaged); rebuilding it" in caplog.text
    np.testing.assert_array_equal(rebuilt.scores(queries), first.scores(queries))
    assert np.count_nonzero(first.scores(queries), axis=1).tolist() == [8, 8]
