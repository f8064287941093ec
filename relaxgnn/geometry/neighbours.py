"""Batch-aware neighbour lists without pyg-lib: fully connected graphs, exact
k-nearest-neighbour graphs and radius graphs (optionally periodic) on vesin, plus the edge
geometry every layer uses. Below both ``nn`` and ``data`` (no import of either).

Edge convention (PyG's ``source_to_target`` flow): ``edge_index[0]`` is the sender ``j``,
``edge_index[1]`` the receiver ``i``; the edge vector is ``r_ij = pos[j] - pos[i] + shift``.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor


def _graph_sizes(batch: Tensor | None, num_nodes: int, device) -> Tensor:
    if batch is None:
        return torch.tensor([num_nodes], device=device)
    return torch.bincount(batch)


def fully_connected_edges(num_nodes: int, batch: Tensor | None = None, device=None) -> Tensor:
    """All ordered pairs ``(j, i)``, ``j ≠ i``, inside each graph: ``(2, Σ_g n_g(n_g - 1))``.

    ``batch`` must be sorted (PyG batches are). Vectorised: no Python loop over graphs.
    """
    device = device if device is not None else (batch.device if batch is not None else None)
    sizes = _graph_sizes(batch, num_nodes, device)
    if int(sizes.sum()) != num_nodes:
        raise ValueError(f"batch vector covers {int(sizes.sum())} nodes, expected {num_nodes}")
    offsets = torch.cumsum(sizes, 0) - sizes
    pairs_per_graph = sizes * sizes
    graph_of_pair = torch.repeat_interleave(
        torch.arange(sizes.numel(), device=device), pairs_per_graph
    )
    start = torch.cumsum(pairs_per_graph, 0) - pairs_per_graph
    local = torch.arange(int(pairs_per_graph.sum()), device=device) - start[graph_of_pair]
    n = sizes[graph_of_pair]
    src = local // n
    dst = local % n
    keep = src != dst
    offset = offsets[graph_of_pair]
    return torch.stack([src[keep] + offset[keep], dst[keep] + offset[keep]])


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def knn_edges(pos: Tensor, k: int, batch: Tensor | None = None) -> Tensor:
    """Edges ``j → i`` from each node's ``k`` nearest other nodes ``j`` of the same graph:
    ``edge_index (2, Σ_g n_g · min(k, n_g - 1))`` (a graph of at most ``k`` nodes is fully
    connected).

    Exact: distances are computed pair by pair (``torch.cdist`` without its matrix-product
    shortcut) and the nearest taken by ``topk``; equal distances are broken arbitrarily. Edges
    are grouped by receiver ``i`` in ascending order, each group nearest first. Vectorised over
    graphs through a padded ``(G, n_max, n_max)`` distance tensor, so meant for many small
    graphs (N-body systems, molecules). ``batch`` must be sorted (PyG batches are). Indices
    carry no gradient.

    Args:
        pos: ``(N, D)`` positions.
        k: neighbours per node (≥ 1).
        batch: ``(N,)`` sorted graph index of each node, or ``None`` for one graph.
    """
    k = _check_k(k)
    if pos.dim() != 2:
        raise ValueError(f"pos must have shape (num_nodes, dim), got {tuple(pos.shape)}")
    num_nodes, device = pos.shape[0], pos.device
    if batch is not None:
        if batch.shape != (num_nodes,):
            raise ValueError(f"batch must have shape ({num_nodes},), got {tuple(batch.shape)}")
        if num_nodes > 1 and bool((batch.diff() < 0).any()):
            raise ValueError("batch must be sorted (as in a PyG Batch)")
    empty = torch.empty(2, 0, dtype=torch.long, device=device)
    if num_nodes == 0:
        return empty
    sizes = _graph_sizes(batch, num_nodes, device)
    graph = batch if batch is not None else torch.zeros(num_nodes, dtype=torch.long, device=device)
    offsets = torch.cumsum(sizes, 0) - sizes
    node = torch.arange(num_nodes, device=device)
    local = node - offsets[graph]
    n_max = int(sizes.max())
    kk = min(k, n_max - 1)
    if kk < 1:
        return empty
    dense = pos.new_zeros(sizes.numel(), n_max, pos.shape[1])
    dense[graph, local] = pos.detach()
    dist = torch.cdist(dense, dense, compute_mode="donot_use_mm_for_euclid_dist")
    slot = torch.arange(n_max, device=device)
    padding = slot[None, :] >= sizes[:, None]  # (G, n_max)
    dist.masked_fill_(padding[:, None, :] | torch.eye(n_max, dtype=torch.bool, device=device),
                      float("inf"))
    nearest = dist.topk(kk, dim=-1, largest=False).indices[graph, local]  # (N, kk), local j
    # graphs with fewer than kk + 1 nodes: drop the padding slots and the node itself
    keep = (nearest < sizes[graph, None]) & (nearest != local[:, None])
    src = (nearest + offsets[graph, None])[keep]
    dst = node[:, None].expand(-1, kk)[keep]
    return torch.stack([src, dst])


def radius_edges(
    pos: Tensor,
    cutoff: float,
    batch: Tensor | None = None,
    cell: Tensor | None = None,
    pbc: Tensor | bool = False,
) -> tuple[Tensor, Tensor]:
    """Pairs closer than ``cutoff`` inside each graph, computed with vesin.

    Args:
        pos: ``(N, 3)`` positions.
        cutoff: radius (in the positions' unit).
        batch: ``(N,)`` sorted graph index of each node, or ``None`` for one graph.
        cell: ``(3, 3)`` or ``(G, 3, 3)`` lattice vectors as rows, for periodic graphs.
        pbc: periodicity, a bool or ``(3,)``/``(G, 3)`` booleans.

    Returns:
        ``edge_index (2, E)`` and ``shift (E, 3)``, the Cartesian periodic image offset so that
        ``r_ij = pos[j] - pos[i] + shift`` (zero without periodicity). Indices carry no gradient;
        compute ``r_ij`` from ``pos`` (see :func:`edge_vectors`) to differentiate through it.
    """
    from vesin_torch import NeighborList

    if cutoff <= 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    if pos.dim() != 2 or pos.shape[1] != 3:
        raise ValueError(f"pos must have shape (num_nodes, 3), got {tuple(pos.shape)}")
    if pos.shape[0] == 0:  # no nodes, no pairs (vesin refuses empty point sets)
        return (torch.zeros(2, 0, dtype=torch.long, device=pos.device),
                pos.new_zeros(0, 3))
    sizes = _graph_sizes(batch, pos.shape[0], pos.device).tolist()
    num_graphs = len(sizes)
    pbc_t = (
        torch.as_tensor(pbc, dtype=torch.bool).reshape(-1, 3)
        if not isinstance(pbc, bool)
        else torch.full((1, 3), pbc)
    )
    periodic = bool(pbc_t.any())
    if periodic and cell is None:
        raise ValueError("pbc is set but no cell was given")
    cells = None
    if cell is not None:
        cells = (
            cell.reshape(-1, 3, 3).expand(num_graphs, 3, 3)
            if cell.numel() == 9
            else cell.reshape(num_graphs, 3, 3)
        )
    calculator = NeighborList(cutoff=float(cutoff), full_list=True)
    detached = pos.detach()
    edges, shifts, offset = [], [], 0
    for g, n in enumerate(sizes):
        points = detached[offset : offset + n]
        box = cells[g].detach().to(pos.dtype) if cells is not None else pos.new_zeros(3, 3)
        flags = pbc_t[g if pbc_t.shape[0] > 1 else 0]
        i, j, S = calculator.compute(
            points=points.cpu(),
            box=box.cpu(),
            periodic=flags if periodic else False,
            quantities="ijS",
        )
        edges.append(torch.stack([j, i]).to(pos.device) + offset)
        shift = S.to(pos.dtype).to(pos.device) @ box if periodic else pos.new_zeros(len(i), 3)
        shifts.append(shift)
        offset += n
    return torch.cat(edges, 1).long(), torch.cat(shifts, 0)


def edge_vectors(pos: Tensor, edge_index: Tensor, shift: Tensor | None = None) -> Tensor:
    """``r_ij = pos[j] - pos[i] (+ shift)`` for each edge ``(j → i)``; differentiable in ``pos``."""
    vec = pos[edge_index[0]] - pos[edge_index[1]]
    return vec if shift is None else vec + shift
