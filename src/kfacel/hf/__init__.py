"""KFC for stock Hugging Face models: consolidate through a collator, train with a Trainer.

Needs the ``hf`` extra (``transformers`` with ``accelerate``; ``peft`` for LoRA). Importing
``kfacel`` does not import this package; ``import kfacel.hf`` imports ``transformers``.
The whole path is in docs/hf.md.

- :func:`consolidate` (``kfacel.hf.states``) turns a finished task's Trainer dataset
  and collator into a ``TaskState`` of the trainable parameters;
- :class:`KFCCallback` (``kfacel.hf.callback``) adds the penalty of every state once per
  optimizer step to any ``transformers.Trainer`` or subclass, with the strength
  (:class:`Strength`) and damping (:class:`Damping`) of every other entry point;
  :class:`KFCTrainer` is a Trainer with that callback;
- :func:`save_states` / :func:`load_states` keep the states beside ``save_pretrained``;
- :func:`minilm_path` is the directory of the shipped MiniLM encoder;
- :class:`OLoRACallback` (``kfacel.hf.olora``, O-LoRA) and :class:`ILoRATrainer`
  (``kfacel.hf.ilora``, I-LoRA: replays old rows) are LoRA baselines beside KFC.
"""

from kfacel.hf.callback import KFCCallback
from kfacel.hf.encoder import minilm_path
from kfacel.hf.ilora import ILoRATrainer
from kfacel.hf.olora import OLoRACallback, lora_subspaces, stack_subspaces
from kfacel.hf.states import (
    FACTOR_RANK,
    LOSS_TERMS,
    consolidate,
    load_states,
    save_states,
)
from kfacel.hf.trainer import KFCTrainer
from kfacel.penalties.strength import Damping, Strength

__all__ = [
    "FACTOR_RANK",
    "LOSS_TERMS",
    "Damping",
    "ILoRATrainer",
    "KFCCallback",
    "KFCTrainer",
    "OLoRACallback",
    "Strength",
    "consolidate",
    "load_states",
    "lora_subspaces",
    "minilm_path",
    "save_states",
    "stack_subspaces",
]
