"""Consolidation penalties: L2, diagonal EWC and KFC (K-FAC EWC), eq. (P1).

One module per penalty kind (``l2``, ``ewc_diag``, ``ewc_kfac``, and ``budget``, the
forgetting budget's Lagrangian term); ``strength`` decides how strong a penalty is;
``make`` builds one from consolidation states.
"""

from kfacel.penalties.base import NoPenalty, Penalty
from kfacel.penalties.budget import BudgetPenalty
from kfacel.penalties.ewc_diag import DiagonalEWCPenalty
from kfacel.penalties.ewc_kfac import KFACPenalty
from kfacel.penalties.l2 import L2Penalty
from kfacel.penalties.make import build_penalty, make_penalty

__all__ = [
    "BudgetPenalty",
    "DiagonalEWCPenalty",
    "KFACPenalty",
    "L2Penalty",
    "NoPenalty",
    "Penalty",
    "build_penalty",
    "make_penalty",
]
