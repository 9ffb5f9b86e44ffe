"""The streamed name matrix: the in-memory matrix's search, resumed when killed."""

import numpy as np
import pytest

from kfacel.retrieval import streamed
from kfacel.retrieval.ann import IndexKind, IndexSettings
from kfacel.retrieval.dense import NameIndex
from tests.retrieval._dictionaries import HashEncoder

NAMES = [f"name {i}" for i in range(40)]
STREAMED = IndexSettings(kind=IndexKind.EXACT, exact_below=10)


def test_a_streamed_matrix_gives_the_in_memory_search(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(streamed, "CHUNK", 16)
    encoder = HashEncoder()
    memory = NameIndex.build(encoder, NAMES, cache=tmp_path / "a")  # type: ignore[arg-type]
    on_disk = NameIndex.build(encoder, NAMES, cache=tmp_path / "b", settings=STREAMED)  # type: ignore[arg-type]
    assert isinstance(on_disk.matrix, np.memmap)
    assert not isinstance(memory.matrix, np.memmap)
    assert [len(c) for c in encoder.calls] == [40, 16, 16, 8]
    queries = HashEncoder().encode(["name 3", "something else"])
    np.testing.assert_array_equal(on_disk.scores(queries), memory.scores(queries))
    (file,) = (tmp_path / "b").glob("names-*.npy")  # the partial entry is gone
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        file.name.replace(".npy", ".json"),
        file.name,
    ]


def test_a_killed_embedding_resumes_where_it_stopped(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(streamed, "CHUNK", 16)
    encoder = HashEncoder()
    real = encoder.encode

    def killed_on_the_second_chunk(texts, **kwargs):
        if len(encoder.calls) == 1:
            raise KeyboardInterrupt
        return real(texts)

    monkeypatch.setattr(encoder, "encode", killed_on_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        NameIndex.build(encoder, NAMES, cache=tmp_path, settings=STREAMED)  # type: ignore[arg-type]
    monkeypatch.undo()
    monkeypatch.setattr(streamed, "CHUNK", 16)
    resumed = HashEncoder()
    index = NameIndex.build(resumed, NAMES, cache=tmp_path, settings=STREAMED)  # type: ignore[arg-type]
    assert resumed.calls == [NAMES[16:32], NAMES[32:]]  # the first chunk was kept
    np.testing.assert_array_equal(index.matrix, HashEncoder().encode(NAMES))
    assert not list(tmp_path.glob("*.partial.*"))


def test_a_damaged_streamed_matrix_is_embedded_again(tmp_path, caplog) -> None:
    NameIndex.build(HashEncoder(), NAMES, cache=tmp_path, settings=STREAMED)  # type: ignore[arg-type]
    (file,) = tmp_path.glob("names-*.npy")
    blob = bytearray(file.read_bytes())
    blob[-1] ^= 0x40  # the last name's last float: still a number
    file.write_bytes(bytes(blob))
    again = HashEncoder()
    with caplog.at_level("WARNING", logger="kfacel.retrieval.streamed"):
        index = NameIndex.build(again, NAMES, cache=tmp_path, settings=STREAMED)  # type: ignore[arg-type]
    assert again.calls  # embedded again, not read
    np.testing.assert_array_equal(index.matrix, HashEncoder().encode(NAMES))
    (line,) = [r.getMessage() for r in caplog.records]
    assert (
        line
        == f"dense cache entry {file} does not match its digest (damaged); rebuilding it"
    )


def test_a_second_process_embedding_the_same_names_is_refused(tmp_path) -> None:
    from kfacel._lock import write_lock

    partial = streamed.matrix_file(tmp_path, "k" * 64).with_name(
        f"names-{'k' * 32}.partial.npy"
    )
    with (
        write_lock(partial, "embed names"),
        pytest.raises(ValueError, match="is being written by kfacel embed names"),
    ):
        streamed.streamed_matrix(HashEncoder(), NAMES, "k" * 64, tmp_path)
