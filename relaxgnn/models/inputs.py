"""What every model does before its first layer: validate the ``Data``, build edges if they are
missing, and assemble node inputs from named fields and atomic numbers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from e3nn import o3
from torch import Tensor, nn
from torch_geometric.data import Data

from ..geometry.neighbours import fully_connected_edges, knn_edges, radius_edges
from ..nn.checks import check_batch, check_edge_index, check_features, check_positions
from ..symmetry.irreps import as_irreps


class GraphInputs(nn.Module):
    """Reads a ``Data``/``Batch`` for a model.

    Args:
        fields: node fields concatenated into the input features, with their irreps, e.g.
            ``{"vel": "1x1o", "charges": "1x0e"}`` (order kept).
        atomic_numbers: elements the model knows; when given, ``data.z`` is one-hot encoded
            over this list and appended as scalars (an unknown element is an error).
        cutoff: radius for the graph built when ``data`` has no ``edge_index``; ``None`` builds
            a fully connected graph per molecule.
        knn: build the ``knn``-nearest-neighbour graph of each cloud instead (exact,
            batch-aware: :func:`~relaxgnn.geometry.knn_edges`), e.g. for point clouds.
    """

    def __init__(
        self,
        fields: Mapping[str, str] | None = None,
        atomic_numbers: Sequence[int] | None = None,
        cutoff: float | None = None,
        knn: int | None = None,
    ) -> None:
        super().__init__()
        # plain strings and ints (not e3nn Irreps objects) so that torch.compile can guard on them
        self.fields = {name: str(as_irreps(ir)) for name, ir in (fields or {}).items()}
        self.field_dims = {name: as_irreps(ir).dim for name, ir in self.fields.items()}
        if "pos" in self.fields:
            raise ValueError("`pos` is read as positions; do not list it among the input fields")
        self.atomic_numbers = list(atomic_numbers) if atomic_numbers is not None else None
        if self.atomic_numbers is not None:
            if len(set(self.atomic_numbers)) != len(self.atomic_numbers) or not self.atomic_numbers:
                raise ValueError(f"atomic_numbers must be distinct, got {self.atomic_numbers}")
            table = torch.full((max(self.atomic_numbers) + 1,), -1, dtype=torch.long)
            table[torch.tensor(self.atomic_numbers)] = torch.arange(len(self.atomic_numbers))
            self.register_buffer("species_index", table, persistent=False)
        if cutoff is not None and cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        self.cutoff = cutoff
        if knn is not None and (isinstance(knn, bool) or not isinstance(knn, int) or knn < 1):
            raise ValueError(f"knn must be a positive integer or None, got {knn!r}")
        self.knn = knn
        # follows the model's dtype through .double()/.float(): what the inputs must be in
        self.register_buffer("dtype_probe", torch.zeros(0), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype the model computes in."""
        return self.dtype_probe.dtype

    @property
    def irreps(self) -> o3.Irreps:
        """Irreps of the assembled node input (fields in order, then the element one-hot)."""
        out = o3.Irreps("")
        for ir in self.fields.values():
            out = out + o3.Irreps(ir)
        if self.atomic_numbers is not None:
            out = out + o3.Irreps(f"{len(self.atomic_numbers)}x0e")
        return out if out.dim else o3.Irreps("1x0e")  # a constant 1 when nothing is read

    def graph(self, data: Data) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Validate ``data`` and return ``(edge_index, edge_shift or None, batch or None)``."""
        pos = check_positions(getattr(data, "pos", None))
        if self.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"relaxgnn models compute in float32 or float64; this one is "
                            f"{self.dtype} (use .float() or .double())")
        if pos.dtype != self.dtype:
            raise TypeError(f"`pos` is {pos.dtype} but the model computes in {self.dtype}: "
                            f"convert the data (e.g. `data.to({self.dtype})` for its floating "
                            "fields) or the model")
        N = pos.shape[0]
        batch = check_batch(getattr(data, "batch", None), N)
        edge_index = getattr(data, "edge_index", None)
        shift = getattr(data, "edge_shift", None)
        if edge_index is None:
            edge_index, shift = self._build_edges(data, pos, batch)
        check_edge_index(edge_index, N)
        return edge_index, shift, batch

    @torch.compiler.disable
    def _build_edges(self, data: Data, pos: Tensor, batch: Tensor | None
                     ) -> tuple[Tensor, Tensor | None]:
        """The graph of ``data`` (k nearest, radius or fully connected), always eager: its size
        depends on the data, so a compiled model runs it outside its graph (one break at the
        top of ``forward`` instead of several inside)."""
        N = pos.shape[0]
        if self.knn is not None:
            return knn_edges(pos, self.knn, batch), None
        if self.cutoff is None:
            return fully_connected_edges(N, batch, device=pos.device), None
        edge_index, shift = radius_edges(pos, self.cutoff, batch, cell=getattr(data, "cell", None),
                                         pbc=_pbc(getattr(data, "pbc", None)))
        return edge_index, shift if bool(shift.any()) else None

    def vector(self, data: Data, name: str) -> Tensor:
        """The finite ``(N, 3)`` vector field ``name`` (e.g. velocities) in the positions' dtype."""
        value = getattr(data, name, None)
        if value is None:
            raise ValueError(f"the model reads the vector field `{name}` but the data has none")
        value = check_positions(value, name)
        if value.dtype != data.pos.dtype:
            raise TypeError(f"`{name}` is {value.dtype} but the model computes in "
                            f"{data.pos.dtype}: convert the data")
        return value

    def node_features(self, data: Data) -> Tensor:
        """``(N, irreps.dim)``: the declared fields, then the one-hot of ``data.z``."""
        N = data.pos.shape[0]
        parts = []
        for name, dim in self.field_dims.items():
            value = getattr(data, name, None)
            if value is None:
                raise ValueError(
                    f"the model reads field `{name}` ({self.fields[name]}) but the data has none"
                )
            parts.append(check_features(value, name, N, dim, dtype=data.pos.dtype)
                         .to(data.pos.dtype))  # integer fields (e.g. charges ±1) become floats
        if self.atomic_numbers is not None:
            parts.append(self.one_hot(getattr(data, "z", None), N).to(data.pos.dtype))
        if not parts:
            return data.pos.new_ones(N, 1)
        return torch.cat(parts, -1)

    def pair_features(self, data: Data, edge_index: Tensor, names: Sequence[str]) -> Tensor:
        r"""``(E, len(names))``: :math:`q_i q_j` of every scalar node field ``q`` in ``names`` on
        each edge :math:`j \to i` (invariant edge features, e.g. the charge products of the
        N-body models of EGNN and SEGNN)."""
        N = data.pos.shape[0]
        j, i = edge_index
        columns = []
        for name in names:
            value = getattr(data, name, None)
            if value is None:
                raise ValueError(f"the model reads the pair field `{name}` but the data has none")
            q = check_features(value, name, N, 1, dtype=data.pos.dtype).to(data.pos.dtype)
            columns.append(q[i] * q[j])
        return torch.cat(columns, -1) if columns else data.pos.new_zeros(edge_index.shape[1], 0)

    def one_hot(self, z: Tensor | None, num_nodes: int) -> Tensor:
        if z is None:
            raise ValueError("the model reads atomic numbers `z` but the data has none")
        if z.shape != (num_nodes,):
            raise ValueError(f"`z` must have shape ({num_nodes},), got {tuple(z.shape)}")
        known = self.atomic_numbers
        index = self.species_index[z.clamp(0, len(self.species_index) - 1)]
        bad = (index < 0) | (z >= len(self.species_index)) | (z < 0)
        if not torch.compiler.is_compiling() and bool(bad.any()):  # a value check: eager only
            unknown = sorted(set(z[bad].tolist()))
            raise ValueError(f"element(s) {unknown} not known to the model (trained on {known})")
        return torch.nn.functional.one_hot(index, len(known))


def _pbc(value) -> Tensor | bool:
    """``data.pbc`` as vesin wants it: ``False`` when absent, else a boolean tensor."""
    return False if value is None else torch.as_tensor(value, dtype=torch.bool)
