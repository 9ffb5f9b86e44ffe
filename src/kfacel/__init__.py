"""kfacel: keep a medical entity linker up to date with Kronecker-factored EWC (KFC)."""

from kfacel.types import Batch, FisherKind, ParamDict

__version__ = "0.1.0"

__all__ = ["Batch", "FisherKind", "ParamDict", "__version__"]
