"""Alias features: a task strings cannot solve is learned; save/load keeps them."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from kfacel.data.collate import ALIAS_FEATURE_NAMES, FEATURE_NAMES
from kfacel.data.records import Candidate, LinkingExample
from kfacel.linking.evaluate import evaluate_split, predict
from kfacel.linking.linker import ALIASES_FILE, load_linker, new_linker, save_linker
from kfacel.tasks.directory import Task
from kfacel.training.fit import fit_task
from kfacel.training.trainer import TrainSettings
from tests._synth import CODE_WORDS
from tests._synth import WORDS as SYNTH_WORDS

WORDS = SYNTH_WORDS[:10]
CODES = CODE_WORDS[:10]


def code_queries(n: int, seed: int, docs: str) -> list[LinkingExample]:
    """Mention ``WORDS[w]`` links to the concept named ``CODES[w]``: no shared text."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        w = rng.randrange(len(WORDS))
        pool = [w, *rng.sample([x for x in range(len(WORDS)) if x != w], 4)]
        rng.shuffle(pool)
        cands = tuple(Candidate(f"C{x}", CODES[x]) for x in pool)
        out.append(
            LinkingExample(WORDS[w], "seen with", "", cands, f"C{w}", f"{docs}{i}")
        )
    return out


@pytest.fixture(scope="module")
def task() -> Task:
    return Task(
        "codes",
        Path("codes"),
        code_queries(200, 0, "tr"),
        code_queries(40, 1, "dv"),
        code_queries(60, 2, "te"),
        {},
    )


def test_alias_features_solve_a_task_without_string_evidence(task, tmp_path):
    torch.set_num_threads(1)
    linker = new_linker(
        "cnn",
        task.train,
        hidden=16,
        types=False,
        aliases=True,
        seed=0,
        freeze_embeddings=False,
        embed_dim=8,
        max_mention_length=8,
        max_name_length=4,
    )
    assert linker.collator.feature_names == FEATURE_NAMES + ALIAS_FEATURE_NAMES
    assert linker.model.config.num_features == len(linker.collator.feature_names)
    fit_task(linker, task, TrainSettings(epochs=3, lr=1e-2, batch_size=20, seed=0))
    assert evaluate_split(linker, task.test).accuracy > 0.9  # chance: 0.2

    save_linker(linker, tmp_path / "m")
    assert (tmp_path / "m" / ALIASES_FILE).is_file()
    loaded = load_linker(tmp_path / "m")
    assert loaded.collator.aliases == linker.collator.aliases
    batches = linker.batches(task.test, 32)
    linker.model.eval()
    for a, b in zip(
        predict(linker.model, batches), predict(loaded.model, batches), strict=True
    ):
        torch.testing.assert_close(a, b)

    (tmp_path / "m" / ALIASES_FILE).unlink()
    with pytest.raises(ValueError, match=r"aliases\.json is missing"):
        load_linker(tmp_path / "m")


def test_a_tokenizer_file_changed_after_the_save_is_refused(task, tmp_path):
    """A vocab.txt cut short (tokenizer.json gone) would load as a smaller vocabulary."""
    linker = new_linker("cnn", task.train, hidden=8, embed_dim=8, seed=0)
    save_linker(linker, tmp_path / "m")
    load_linker(tmp_path / "m")  # as saved: loads
    vocab = tmp_path / "m" / "vocab.txt"
    (tmp_path / "m" / "tokenizer.json").unlink(missing_ok=True)
    with pytest.raises(ValueError, match=r"tokenizer\.json is missing"):
        load_linker(tmp_path / "m")
    save_linker(linker, tmp_path / "m")
    lines = vocab.read_text(encoding="utf-8").splitlines(keepends=True)
    vocab.write_text("".join(lines[: len(lines) // 2]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab\.txt differs from the file saved"):
        load_linker(tmp_path / "m")


def test_a_checkpoint_named_in_the_model_settings_gives_the_tokenizer_too(
    task, tmp_path
) -> None:
    """`encoder_path` (the experiment config's key) gives tokenizer and weights.

    A second, different checkpoint given as `encoder` is refused.
    """
    from tests._synth import write_tiny_encoder

    tiny = write_tiny_encoder(tmp_path / "tiny", [*WORDS, *CODES])
    linker = new_linker(
        "transformer", task.train, encoder_path=str(tiny), layers=1, features=False
    )
    assert linker.collator.tokenizer.vocab_size == len(
        (tiny / "vocab.txt").read_text().splitlines()
    )
    with pytest.raises(ValueError, match=r"encoder_path .* and encoder .* differ"):
        new_linker("transformer", task.train, encoder=tmp_path, encoder_path=str(tiny))
