"""What a finished task leaves behind, and where it is kept: consolidation states.

- ``state``: the ``TaskState`` value (anchor ``θ*`` + curvature) and its flat tensor form;
- ``consolidate``: the one core that estimates a state from a model and batches
  (``ConsolidationSettings``);
- ``store``: states on disk, ``<model dir>/consolidation/NN-<task>.{safetensors,json}``;
- ``checks``: refusals of states that do not fit the model or are damaged.

Penalties are built from states one layer up (``kfacel.penalties.make``).
"""

from kfacel.consolidation.checks import check_state
from kfacel.consolidation.consolidate import (
    ConsolidationSettings,
    consolidate,
    estimate_curvature,
)
from kfacel.consolidation.state import (
    FACTOR_RANK,
    METHODS,
    TASK_EXAMPLES,
    TaskState,
    curvature_to,
    snapshot,
    states_nbytes,
)
from kfacel.consolidation.store import load_state, save_state, state_dir, state_tasks

__all__ = [
    "FACTOR_RANK",
    "METHODS",
    "TASK_EXAMPLES",
    "ConsolidationSettings",
    "TaskState",
    "check_state",
    "consolidate",
    "curvature_to",
    "estimate_curvature",
    "load_state",
    "save_state",
    "snapshot",
    "state_dir",
    "state_tasks",
    "states_nbytes",
]
