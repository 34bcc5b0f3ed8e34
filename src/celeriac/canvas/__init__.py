"""Signatures and workflows."""

from celeriac.canvas.signature import Signature, chain, signature

__all__ = ["Signature", "chain", "signature"]
