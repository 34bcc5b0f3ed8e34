"""Signatures and workflows: chain, group, chord."""

from celeriac.canvas.signature import Signature, chain, chord, group, maybe_signature, signature

__all__ = ["Signature", "chain", "chord", "group", "maybe_signature", "signature"]
