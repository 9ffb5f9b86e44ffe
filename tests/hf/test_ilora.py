"""I-LoRA: the slow learner's moving average and the loss terms against hand computation."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")
ilora = pytest.importorskip("kfacel.hf.ilora")

from tests.hf._tiny import (  # noqa: E402
    classifier,
    pad_collator,
    sequence_rows,
    training_args,
)

pytestmark = pytest.mark.hf


def _collate(rows):
    """``pad_collator``, for rows with or without labels."""
    if "labels" in rows[0]:
        return pad_collator(rows)
    batch = pad_collator([{**r, "labels": 0} for r in rows])
    del batch["labels"]
    return batch


def _trainer(tmp_path, *, steps=1, memory=None, **kw):
    model = classifier()
    model.bert.embeddings.requires_grad_(
        False
    )  # a frozen part, shared by both learners
    return ilora.ILoRATrainer(
        model=model,
        args=training_args(tmp_path, 4, 1, steps=steps),
        train_dataset=sequence_rows(8, seed=1),
        data_collator=_collate,
        memory=memory if memory is not None else sequence_rows(6, seed=2, offset=19),
        **kw,
    )


class _Record(transformers.TrainerCallback):
    """The fast learner's weights after the step (the moving average has run)."""

    def on_step_end(self, args, state, control, model=None, **kw):
        self.fast = {n: p.detach().clone() for n, p in model.named_parameters()}


def test_the_kept_model_is_the_moving_average_of_the_fast_learner(tmp_path) -> None:
    trainer = _trainer(tmp_path, ema=0.25)
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    record = _Record()
    trainer.add_callback(record)
    trainer.train()
    moved = 0
    for n, p in trainer.model.named_parameters():
        expected = 0.25 * start[n] + 0.75 * record.fast[n]
        torch.testing.assert_close(p.detach(), expected)
        moved += not torch.equal(start[n], record.fast[n])
        if "embeddings" in n:
            assert torch.equal(p, start[n])
    assert moved > 0


def test_the_loss_adds_the_memory_loss_and_the_hidden_state_consistency(tmp_path):
    trainer = _trainer(tmp_path, consistency=3.0, memory_batch=6, seed=0)
    model = trainer.model
    new = pad_collator(sequence_rows(4, seed=5))
    memory = pad_collator(trainer.memory)  # all six rows, in order: the sample's order
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.weight.mul_(1.5)  # fast != slow
    trainer._rng.sample = lambda rows, k: list(rows)
    loss = trainer.compute_loss(model, dict(new))
    plain = model(**new).loss + model(**memory).loss
    labels = memory.pop("labels")
    fast = model(**memory, output_hidden_states=True).hidden_states[-1]
    slow = trainer.slow(**memory, output_hidden_states=True).hidden_states[-1]
    mask = memory["attention_mask"].float()
    mse = ((fast - slow).pow(2).mean(-1) * mask).sum() / mask.sum()
    assert float(mse) > 0
    assert labels.shape == (6,)
    torch.testing.assert_close(loss, plain + 3.0 * mse)


def test_memory_rows_without_labels_add_the_consistency_only(tmp_path) -> None:
    rows = [
        {k: v for k, v in r.items() if k != "labels"} for r in sequence_rows(4, seed=2)
    ]
    trainer = _trainer(tmp_path, memory=rows, memory_batch=4)
    new = pad_collator(sequence_rows(4, seed=5))
    loss = trainer.compute_loss(trainer.model, dict(new))
    torch.testing.assert_close(loss, trainer.model(**new).loss)  # fast == slow: 0


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"memory": []}, "give at least one"),
        ({"ema": 1.0}, r"ema must be in \[0, 1\)"),
        ({"consistency": -1.0}, "consistency must be >= 0"),
    ],
)
def test_bad_settings_are_refused(tmp_path, kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        _trainer(tmp_path, **kw)
