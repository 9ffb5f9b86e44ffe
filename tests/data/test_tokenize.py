"""Tokenizer: mention markers by id, truncation keeps the mention, names get CLS/SEP."""

import io
import json

import pytest

from kfacel.data.tokenize import WordPieceTokenizer


@pytest.fixture(scope="module")
def tok():
    return WordPieceTokenizer()


def test_mention_is_marked_and_long_context_is_cut_from_the_far_ends(tok):
    left = " ".join(["alpha"] * 30) + " near"
    [ids] = tok.encode_mentions([left], ["heart attack"], ["beta " * 30], max_length=16)
    assert len(ids) == 16
    assert ids[0] == tok.cls_id
    assert ids[-1] == tok.sep_id
    s, e = ids.index(tok.start_id), ids.index(tok.end_id)
    assert tok.encode_names(["heart attack"], max_length=8)[0][1:-1] == ids[s + 1 : e]
    assert ids[s - 1] == tok.encode_names(["near"], max_length=8)[0][1]


def test_marker_text_in_the_context_is_not_a_marker(tok):
    [ids] = tok.encode_mentions(["[unused0]"], ["x"], [""], max_length=16)
    assert ids.count(tok.start_id) == 1


def test_names_are_cut_and_too_short_budgets_refused(tok):
    [ids] = tok.encode_names(["a very long concept name indeed"], max_length=4)
    assert len(ids) == 4
    with pytest.raises(ValueError, match="max_length"):
        tok.encode_mentions(["a"], ["b"], ["c"], max_length=4)


# --- a model directory's tokenizer: never its code; missing or damaged files named ---


@pytest.fixture
def encoder_dir(tmp_path):
    from tests._synth import write_tiny_encoder

    return write_tiny_encoder(tmp_path / "enc", ["alpha", "beta"])


@pytest.mark.parametrize("config", ["tokenizer_config.json", "config.json"])
def test_a_directory_that_names_its_own_code_is_refused_and_none_runs(
    encoder_dir, tmp_path, monkeypatch, config
):
    """``auto_map`` to a .py that writes a sentinel: refused, unasked, even told "y"."""
    sentinel = tmp_path / "SENTINEL"
    (encoder_dir / "tokenizer.json").unlink()
    (encoder_dir / "config.json").unlink()  # so transformers would ask to run it
    (encoder_dir / "evil.py").write_text(
        f"open({str(sentinel)!r}, 'w').write('ran')\n"
        "from transformers import BertTokenizerFast as EvilTokenizer\n",
        encoding="utf-8",
    )
    auto_map = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (encoder_dir / config).write_text(json.dumps({"auto_map": auto_map}))
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n" * 3))
    with pytest.raises(ValueError, match=rf"{config}: names custom code \(auto_map"):
        WordPieceTokenizer(encoder_dir)
    assert not sentinel.exists()


def test_a_directory_without_tokenizer_files_is_named(encoder_dir):
    (encoder_dir / "tokenizer.json").unlink()
    (encoder_dir / "vocab.txt").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"enc: no tokenizer\.json or vocab\.txt"
    ):
        WordPieceTokenizer(encoder_dir)


@pytest.mark.parametrize(
    ("name", "cut", "message"),
    [
        ("tokenizer.json", 0.5, r"tokenizer\.json: damaged tokenizer file \(EOF"),
        ("vocab.txt", 0.05, r"enc: vocabulary has no \[UNK\] token"),
        ("vocab.txt", None, r"vocab\.txt: damaged tokenizer files"),
    ],
)
def test_damaged_tokenizer_files_are_named_in_one_line(encoder_dir, name, cut, message):
    """Cut short (a part of its bytes) or not UTF-8 (``cut`` None)."""
    if name == "vocab.txt":
        (encoder_dir / "tokenizer.json").unlink()
    file = encoder_dir / name
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * cut)] if cut else b"\xff\xfe" + data)
    with pytest.raises(ValueError, match=message):
        WordPieceTokenizer(encoder_dir)
