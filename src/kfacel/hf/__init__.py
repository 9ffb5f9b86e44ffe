"""KFC for stock Hugging Face models: consolidate through a collator, train with a Trainer.

Needs the ``hf`` extra (``transformers`` with ``accelerate``; ``peft`` for LoRA). Importing
``kfacel`` does not import this package; ``import kfacel.hf`` imports ``transformers``.

- :func:`consolidate` (``kfacel.hf.states``) turns a finished task's Trainer dataset
  and collator into a ``TaskState`` of the trainable parameters;
- :class:`KFCTrainer` (``kfacel.hf.trainer``) trains the next task with the penalty of
  every state added once per optimizer step;
- :func:`save_states` / :func:`load_states` keep the states beside ``save_pretrained``.
"""

from kfacel.hf.states import (
    FACTOR_RANK,
    LOSS_TERMS,
    consolidate,
    load_states,
    save_states,
)
from kfacel.hf.trainer import KFCTrainer

__all__ = [
    "FACTOR_RANK",
    "LOSS_TERMS",
    "KFCTrainer",
    "consolidate",
    "load_states",
    "save_states",
]
