"""The old name of authsvc.verifier, kept so that services importing it keep working."""

from authsvc.verifier import ACCEPTED_ALGORITHMS, CLAIMS, KeySet, TokenVerifier

__all__ = ["ACCEPTED_ALGORITHMS", "CLAIMS", "KeySet", "TokenVerifier"]
