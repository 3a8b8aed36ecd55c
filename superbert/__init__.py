"""AutoTinyBERT: one-shot NAS over BERT architecture hyper-parameters.

Every top-level script is a thin command line over this package.
"""
from .errors import UserError

__all__ = ["UserError"]
