"""N-body data of EGNN, SEGNN and "Improving Equivariant Model Training via Constraint
Relaxation": charged particles (Coulomb) and gravity.

- :mod:`.simulation`: the simulators and initial conditions (pure torch; the equations, the
  frame conventions and the equivariance of the data are in its docstring);
- :mod:`.params`: one frozen record of generation parameters per kind (:class:`ChargedParams`,
  :class:`GravityParams`), taken or built by everything below;
- :mod:`.cache`: generation, the ``.npz`` + ``.json`` cache and its checked reading;
- :mod:`.datasets`: :class:`NBody` and :class:`GravityNBody`, PyG data sets of one split.
"""

from .cache import (
    CACHE_FORMAT,
    NBodyCacheError,
    generate,
    generate_charged,
    generate_gravity,
    load,
    load_charged,
    load_gravity,
    split_seed,
)
from .datasets import GravityNBody, NBody
from .params import SPLITS, ChargedParams, GravityParams, NBodyParams
from .simulation import (
    charged_initial_conditions,
    gravity_initial_conditions,
    simulate_charged,
    simulate_gravity,
)

CHARGED_DEFAULTS = ChargedParams().asdict()
"""The default generation parameters of the charged data set, by name."""
GRAVITY_DEFAULTS = GravityParams().asdict()
"""The default generation parameters of the gravity data set, by name."""

__all__ = [
    "CACHE_FORMAT",
    "CHARGED_DEFAULTS",
    "GRAVITY_DEFAULTS",
    "SPLITS",
    "ChargedParams",
    "GravityNBody",
    "GravityParams",
    "NBody",
    "NBodyCacheError",
    "NBodyParams",
    "charged_initial_conditions",
    "generate",
    "generate_charged",
    "generate_gravity",
    "gravity_initial_conditions",
    "load",
    "load_charged",
    "load_gravity",
    "simulate_charged",
    "simulate_gravity",
    "split_seed",
]
