"""Consolidation penalties: L2, diagonal EWC and KFC (K-FAC EWC), eq. (P1)."""

from kfacel.penalties._terms import snapshot
from kfacel.penalties.base import NoPenalty, Penalty
from kfacel.penalties.ewc_diag import DiagonalEWCPenalty
from kfacel.penalties.ewc_kfac import KFACPenalty
from kfacel.penalties.l2 import L2Penalty

__all__ = [
    "DiagonalEWCPenalty",
    "KFACPenalty",
    "L2Penalty",
    "NoPenalty",
    "Penalty",
    "snapshot",
]
