"""relaxgnn: E(3)-equivariant graph networks with scheduled constraint relaxation.

Subpackages (arrows point down only): ``train`` → ``models`` → ``nn`` → ``relax`` →
``symmetry``; ``data`` stands beside ``nn``. Importing :mod:`relaxgnn` needs neither
Lightning, ASE's calculators nor matplotlib.
"""

__version__ = "0.1.0"
