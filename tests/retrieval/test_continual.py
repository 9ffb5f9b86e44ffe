"""The retriever's consolidation: K-FAC of eq. R2's pair classifier, its penalty."""

import json

import pytest
import torch

from kfacel.consolidation import save_state
from kfacel.data.records import Concept
from kfacel.retrieval.continual import (
    consolidate_retriever,
    retriever_start,
    retriever_states,
)
from kfacel.retrieval.dense import SentenceEncoder
from kfacel.retrieval.finetune import (
    PairScorer,
    RetrieverSettings,
    fine_tune,
    training_groups,
)
from tests._synth import CODES, WORDS, write_tiny_encoder

CONCEPTS = [Concept(f"C{i}", (WORDS[i], CODES[i])) for i in range(8)]
SETTINGS = RetrieverSettings(epochs=2, batch_concepts=4, lr=1e-3)


@pytest.fixture
def tuned(tmp_path):
    torch.manual_seed(0)
    encoder = SentenceEncoder(write_tiny_encoder(tmp_path / "enc", [*WORDS, *CODES]))
    fine_tune(encoder, CONCEPTS, SETTINGS)
    return encoder, tmp_path


def test_the_state_covers_every_linear_and_embedding_of_the_encoder(tuned) -> None:
    encoder, _ = tuned
    state = consolidate_retriever(
        encoder, training_groups(CONCEPTS, SETTINGS), SETTINGS, task="A"
    )
    scorer = PairScorer(encoder.model, SETTINGS.temperature)
    covered = {
        name
        for name, m in scorer.named_modules()
        if isinstance(m, torch.nn.Linear | torch.nn.Embedding)
    }
    assert set(state.curvature) == covered
    assert all("LayerNorm" in n for n in state.curvature.uncovered)
    assert state.meta["examples_used"] == 16  # 8 concepts x 2 names, one epoch
    assert set(state.anchor) == {n for n, _ in scorer.named_parameters()}


def test_the_penalty_is_zero_at_the_anchor_and_grows_away_from_it(tuned) -> None:
    encoder, root = tuned
    state = consolidate_retriever(
        encoder, training_groups(CONCEPTS, SETTINGS), SETTINGS, task="A"
    )
    encoder.save(root / "ret")
    save_state(root / "ret", state)
    assert [s.task for s in retriever_states(root / "ret")] == ["A"]
    start = retriever_start(root / "ret", lam=10.0)
    assert start.record["tasks"] == ["A"]
    assert json.dumps(start.record)  # task.json records it
    scorer = PairScorer(SentenceEncoder(root / "ret").model, 1.0)
    assert start.penalty is not None
    with torch.no_grad():
        assert float(start.penalty(scorer)) == pytest.approx(0.0, abs=1e-12)
        for p in scorer.parameters():
            p.add_(0.01 * torch.randn_like(p))
        assert float(start.penalty(scorer)) > 0


def test_a_start_without_states_or_checkpoint_is_refused(tuned) -> None:
    encoder, root = tuned
    encoder.save(root / "bare")
    with pytest.raises(ValueError, match="no consolidation state"):
        retriever_start(root / "bare", lam=10.0)
    assert retriever_start(root / "bare", lam=None).penalty is None
    with pytest.raises(FileNotFoundError, match="no retriever checkpoint"):
        retriever_start(root / "missing", lam=10.0)
