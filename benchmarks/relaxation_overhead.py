"""Training-step time and the cost of relaxation: a relaxed model's training step (penalties
included) against the plain model's, and the projected model's forward pass against the plain
model's, on a batch of 100 five-particle N-body graphs (fully connected).

Models as in the N-body configs: SEGNN (4 layers, 64 hidden features weight-balanced with
lmax 1 = 32x0e+32x1o; inputs velocity and charge, per-graph centred positions, velocity
harmonics in the node attributes) or EGNN (4 layers, 64 hidden, velocity term, charge products
on the edges).

For SEGNN a reference arm runs the same model with every steerable layer computed the unfused
way, by e3nn's ``FullyConnectedTensorProduct`` and ``Gate`` (as the released SEGNN code and
relaxgnn before its fused tensor product did), sharing the weights; its output is checked to
equal the fused model's, and its step time is the baseline of the speed-up. For EGNN the
reference arm is the EGNN authors' ``EGNN_vel`` in plain torch (:class:`ReferenceEGNNVel`),
with the same weights and output. ``--compile`` adds ``torch.compile``'d arms.

    .venv/bin/python benchmarks/relaxation_overhead.py [--model segnn|egnn] [--threads 2] \
        [--compile] [--fused-adam]

Prints a table; the numbers measured on this project's machine are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from datetime import date

import torch
from e3nn import o3
from e3nn.nn import Gate
from machine import cpu_name
from torch import nn
from torch_geometric.data import Batch, Data

from relaxgnn.data import FullyConnected
from relaxgnn.models import EGNN, SEGNN
from relaxgnn.nn import O3TensorProduct, O3TensorProductGate
from relaxgnn.relax import Constant, Relaxation, project


def nbody_batch(graphs: int = 100, particles: int = 5, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    data = [Data(pos=torch.randn(particles, 3, generator=gen),
                 vel=torch.randn(particles, 3, generator=gen),
                 charges=(torch.randint(0, 2, (particles, 1), generator=gen) * 2 - 1).float())
            for _ in range(graphs)]
    return FullyConnected()(Batch.from_data_list(data))


def build(model: str, relax):
    torch.manual_seed(0)
    if model == "egnn":
        return EGNN(hidden_channels=64, num_layers=4, velocity_field="vel",
                    pair_fields=["charges"], output="position", relax=relax)
    return SEGNN({"vel": "1x1o"}, hidden_features=64, lmax=1, num_layers=4,
                 velocity_field="vel", pair_fields=["charges"], position_input="centred",
                 output="position", relax=relax)


class UnfusedTensorProduct(nn.Module):
    """An ``O3TensorProduct`` (optionally gated) computed by e3nn's ``FullyConnectedTensorProduct``
    plus the scalar bias (and e3nn's ``Gate``), with the fused layer's parameters."""

    def __init__(self, layer: O3TensorProduct | O3TensorProductGate) -> None:
        super().__init__()
        fused = layer.tp if isinstance(layer, O3TensorProductGate) else layer
        self.constant_in2 = fused.constant_in2
        self.tp = o3.FullyConnectedTensorProduct(fused.irreps_in1, fused.irreps_in2,
                                                 fused.irreps_out, internal_weights=False,
                                                 shared_weights=True)
        self.fused = fused  # its weight, in e3nn's parameterisation: fused.e3nn_weight()
        self.bias = fused.bias
        out = fused.irreps_out
        index = [i for (_, ir), sl in zip(out, out.slices(), strict=True) if ir == o3.Irrep("0e")
                 for i in range(sl.start, sl.stop)]
        self.register_buffer("bias_index", torch.tensor(index, dtype=torch.long))
        self.gate = None
        if isinstance(layer, O3TensorProductGate):
            scalars = o3.Irreps([(m, ir) for m, ir in layer.irreps_out if ir == o3.Irrep("0e")])
            gated = o3.Irreps([(m, ir) for m, ir in layer.irreps_out if ir != o3.Irrep("0e")])
            gates = f"{gated.num_irreps}x0e" if gated.num_irreps else ""
            self.gate = Gate(scalars, [nn.functional.silu] if scalars else [], gates,
                             [torch.sigmoid] if gates else [], gated)

    def forward(self, x1, x2=None, index=None):
        if not isinstance(x1, torch.Tensor):  # parts gathered per edge, as SEGNNConv passes them
            index = index or [None] * len(x1)
            x1 = torch.cat([p if i is None else p[i] for p, i in zip(x1, index, strict=True)], -1)
        if self.constant_in2:
            x2 = x1.new_ones(x1.shape[0], 1)
        out = self.tp(x1, x2, self.fused.e3nn_weight())
        if self.bias is not None:
            out = out + out.new_zeros(out.shape[-1]).index_copy(0, self.bias_index, self.bias)
        return out if self.gate is None else self.gate(out)


def unfused(model: nn.Module) -> nn.Module:
    """A copy of a SEGNN whose steerable layers run through e3nn's unfused modules."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, (O3TensorProduct, O3TensorProductGate)):
                setattr(module, name, UnfusedTensorProduct(child))
    return model


class ReferenceEGNNVel(nn.Module):
    """The EGNN authors' N-body model (``EGNN_vel`` of Satorras et al., E_GCL_vel layers), in
    plain torch as they compute it, with the weights of a relaxgnn ``EGNN``: edge MLP on the
    gathered ``[h_i, h_j, |x_i - x_j|², q_i q_j]``, coordinate update ``mean_j (x_i - x_j)
    φ_x(m_ij)`` (each entry clamped to ±100) plus ``φ_v(h_i) v_i``, node update ``h_i +
    φ_h(h_i, Σ_j m_ij)`` in every layer (the last one's is computed and unused, as theirs), sums
    by ``scatter_add_`` over an expanded index and the mean by a count of ones."""

    def __init__(self, model: EGNN) -> None:
        super().__init__()
        model = copy.deepcopy(model)
        self.embedding, self.layers = model.embedding, model.layers
        if self.layers[-1].node_mlp is None:  # relaxgnn skips the last node update, they do not
            self.layers[-1].node_mlp = copy.deepcopy(self.layers[0].node_mlp)

    @staticmethod
    def segment_sum(data, index, size):
        out = data.new_zeros(size, data.shape[1])
        return out.scatter_add_(0, index.unsqueeze(-1).expand(-1, data.shape[1]), data)

    def forward(self, data):
        col, row = data.edge_index  # sender j, receiver i
        vel, x = data.vel, data.pos
        speed = vel.norm(dim=-1, keepdim=True)  # with relaxgnn's constant input column
        h = self.embedding(torch.cat([torch.ones_like(speed), speed], 1))
        edge_attr = data.charges[row] * data.charges[col]
        N = x.shape[0]
        for layer in self.layers:
            diff = x[row] - x[col]
            radial = diff.pow(2).sum(1, keepdim=True)
            m = layer.edge_mlp(torch.cat([h[row], h[col], radial, edge_attr], 1))
            trans = (diff * layer.coord_mlp(m)).clamp(-100, 100)
            count = self.segment_sum(torch.ones_like(trans), row, N).clamp(min=1)
            x = x + self.segment_sum(trans, row, N) / count + layer.vel_mlp(h) * vel
            h = h + layer.node_mlp(torch.cat([h, self.segment_sum(m, row, N)], 1))
        return x


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["segnn", "egnn"], default="segnn")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true",
                        help="add torch.compile'd arms of the plain, relaxed and projected models")
    parser.add_argument("--fused-adam", action="store_true",
                        help="every arm's Adam with fused=True (as the N-body SEGNN configs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = nbody_batch().to(device)
    target = torch.randn(batch.num_nodes, 3, device=device)

    plain = build(args.model, None).to(device)
    relaxed = build(args.model, "linear").to(device)
    relax = Relaxation(relaxed, Constant(0.5, 10**6), lie_weight=0.01, norm_weight=0.01)

    def step_fn(model, controller=None):
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-12,
                                     fused=args.fused_adam or None)

        def step():
            if controller is None:
                loss = (model(batch) - target).pow(2).mean()
            else:
                with controller.record():
                    loss = (model(batch) - target).pow(2).mean()
                loss = loss + controller.penalty()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
        return step

    def forward_fn(model):
        def forward():
            with torch.no_grad():
                model(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
        return forward

    projected = project(relaxed).eval()
    plain.eval()
    arms = {}
    if args.model == "segnn":
        reference = unfused(plain)
        with torch.no_grad():
            torch.testing.assert_close(reference(batch), plain(batch), rtol=1e-4, atol=1e-4)
        reference.train()
        arms["train step: plain, unfused e3nn layers"] = step_fn(reference)
    else:
        reference = ReferenceEGNNVel(plain)
        with torch.no_grad():
            torch.testing.assert_close(reference(batch), plain(batch), rtol=1e-4, atol=1e-4)
        reference.train()
        arms["train step: EGNN authors' EGNN_vel"] = step_fn(reference)
    reference_arm = next(iter(arms))
    arms |= {
        "train step: plain": step_fn(plain),
        "train step: relaxed (θ=0.5, penalties)": step_fn(relaxed, relax),
        "forward: plain": forward_fn(plain),
        "forward: projected": forward_fn(projected),
    }
    if args.compile:  # the models' forward compiled; the penalty stays eager, as in training
        arms |= {
            "train step: plain, compiled": step_fn(torch.compile(plain)),
            "train step: relaxed, compiled": step_fn(torch.compile(relaxed), relax),
            "forward: plain, compiled": forward_fn(torch.compile(copy.deepcopy(plain))),
            "forward: projected, compiled": forward_fn(torch.compile(projected)),
        }
    plain.train()
    for name, fn in arms.items():
        start = time.perf_counter()
        timed(fn, args.warmup)
        if "compiled" in name:
            print(f"{name}: warm-up (compilation) {time.perf_counter() - start:.0f} s",
                  flush=True)
    samples: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.repeats):  # interleaved, so drift hits every arm alike
        for name, fn in arms.items():
            samples[name] += timed(fn, 1)
    median = {name: statistics.median(t) * 1e3 for name, t in samples.items()}

    name = "SEGNN 4×(32x0e+32x1o)" if args.model == "segnn" else "EGNN 4×64"
    print(f"training step and relaxation overhead — {name}, batch 100×5 particles, {device}, "
          f"{args.threads} threads, median of {args.repeats}"
          + (", fused Adam" if args.fused_adam else ""))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"machine: {where}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{date.today()}")
    print(f"{'arm':<42}{'median ms':>10}{'/ reference':>13}")
    for name, ms in median.items():
        ratio = f"{ms / median[reference_arm]:>13.3f}" if name.startswith("train") else ""
        print(f"{name:<42}{ms:>10.1f}{ratio}")
    for suffix in ("", ", compiled"):
        if f"train step: plain{suffix}" not in median:
            continue
        step = median[f"train step: relaxed{suffix or ' (θ=0.5, penalties)'}"] \
            / median[f"train step: plain{suffix}"]
        fwd = median[f"forward: projected{suffix}"] / median[f"forward: plain{suffix}"]
        print(f"relaxed/plain training step{suffix}: {step:.3f} (target <= 1.10); "
              f"projected/plain forward: {fwd:.3f} (target 1.00)")

if __name__ == "__main__":
    main()
