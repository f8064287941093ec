"""Group actions of E(3) × S_n on irreps and graphs, and equivariance measurement."""

from .equivariance import (
    CHECKS,
    apply_orthogonal,
    apply_permutation,
    apply_translation,
    assert_equivariant,
    equivariance_error,
)
from .group import random_permutation_within, random_reflection, random_rotation, random_translation
from .irreps import as_irreps, representation, so3_generators
from .signature import Signature

__all__ = [
    "CHECKS",
    "Signature",
    "apply_orthogonal",
    "apply_permutation",
    "apply_translation",
    "as_irreps",
    "assert_equivariant",
    "equivariance_error",
    "random_permutation_within",
    "random_reflection",
    "random_rotation",
    "random_translation",
    "representation",
    "so3_generators",
]
