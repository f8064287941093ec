"""Does torch-scatter (the dropped ``scatter`` extra) make relaxgnn's aggregations faster?

Forward + backward of a sum / mean aggregation of float32 rows, at relaxgnn's sizes:

* ``nbody``: SEGNN messages of a batch of 100 fully connected 5-particle N-body graphs
  (E = 2,000 edges into N = 500 nodes, 128 = dim 32x0e+32x1o features). Edges in the order
  ``relaxgnn.data.fully_connected_edges`` makes them (grouped by sender, so the receiver index
  is *not* sorted), and again sorted by receiver.
* ``big``: E = 200,000 edges into N = 10,000 nodes (random receivers), 128 features; random
  order and sorted by receiver (``knn_edges`` makes them sorted).
* ``pool``: graph readout, N = 10,000 nodes into 100 graphs of 100, 64 features (a PyG batch
  vector is always sorted).

Arms (each is checked against a float64 reference, output and gradient):

* ``pyg``: ``torch_geometric.utils.scatter`` (what relaxgnn calls; for sum/mean it is
  ``scatter_add_`` whether or not torch-scatter is installed).
* ``index_add``: ``torch.Tensor.index_add_`` (mean: divided by the clamped count).
* ``scatter_reduce``: ``torch.Tensor.scatter_reduce_(..., include_self=False)``.
* ``ts.scatter``: ``torch_scatter.scatter``.
* sorted receivers only, CSR pointer ``ptr`` given: ``torch._segment_reduce`` (what PyG's
  ``segment`` / an ``Aggregation`` called with ``ptr`` uses *without* torch-scatter),
  ``ts.segment_csr`` (what it uses *with* torch-scatter) and ``ts.segment_coo``.

All arms of one row are timed interleaved (random order each repeat); each sample is the mean
of a block of calls sized to take about 2 ms; the table shows the median sample in µs.
torch-scatter is optional: without it its arms are skipped with a message.

A dispatch probe counts the calls PyG makes into torch_scatter (sum / mean, with and without
``ptr``), and with ``--segnn`` (relaxgnn importable) a relaxgnn SEGNN training step (the N-body
configuration) is timed stock and with its four layers' aggregations routed through PyG's
``ptr`` path (receiver-sorted edges), which reaches ``torch_scatter.segment_csr`` when
torch-scatter is installed and ``torch._segment_reduce`` when not.

    .venv/bin/python benchmarks/scatter_aggregation.py [--threads 2 1] [--repeats 41] [--segnn]
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from datetime import date

import torch
import torch_geometric
import torch_geometric.typing
from torch_geometric.utils import scatter as pyg_scatter

try:
    import torch_scatter
except ImportError:  # the optional extra is not installed: its arms are skipped
    torch_scatter = None

try:
    from machine import cpu_name  # benchmarks/machine.py when run from the repository
except ImportError:
    def cpu_name() -> str:
        try:
            with open("/proc/cpuinfo") as f:
                return next(line.split(":", 1)[1].strip() for line in f
                            if line.startswith("model name"))
        except (OSError, StopIteration):
            return platform.processor() or platform.machine()


# --------------------------------------------------------------------------- cases

def nbody_receivers(graphs: int = 100, particles: int = 5) -> torch.Tensor:
    """Receiver index in the order relaxgnn's ``fully_connected_edges`` makes (sender-major)."""
    n = particles
    local = torch.arange(n * n)
    src, dst = local // n, local % n
    keep = src != dst
    offset = torch.arange(graphs).repeat_interleave(keep.sum()) * n
    return (dst[keep].repeat(graphs) + offset)


def make_cases(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    cases = []
    idx = nbody_receivers()
    cases.append(("nbody E=2000→N=500 ×128", "relaxgnn order", idx, 500, 128))
    cases.append(("nbody E=2000→N=500 ×128", "sorted", idx.sort().values, 500, 128))
    idx = torch.randint(0, 10_000, (200_000,), generator=gen)
    cases.append(("big E=200k→N=10k ×128", "random", idx, 10_000, 128))
    cases.append(("big E=200k→N=10k ×128", "sorted", idx.sort().values, 10_000, 128))
    idx = torch.arange(100).repeat_interleave(100)
    cases.append(("pool N=10k→100 graphs ×64", "sorted", idx, 100, 64))
    return cases


# --------------------------------------------------------------------------- arms

def arm_pyg(src, index, N, reduce, ptr):
    return pyg_scatter(src, index, dim=0, dim_size=N, reduce=reduce)


def arm_index_add(src, index, N, reduce, ptr):
    out = src.new_zeros(N, src.shape[1]).index_add_(0, index, src)
    if reduce == "mean":
        count = torch.bincount(index, minlength=N).clamp_(min=1).to(src.dtype)
        out = out / count[:, None]
    return out


def arm_scatter_reduce(src, index, N, reduce, ptr):
    return src.new_zeros(N, src.shape[1]).scatter_reduce_(
        0, index[:, None].expand_as(src), src, reduce=reduce, include_self=False)


def arm_ts_scatter(src, index, N, reduce, ptr):
    return torch_scatter.scatter(src, index, dim=0, dim_size=N, reduce=reduce)


def arm_torch_segment(src, index, N, reduce, ptr):
    # as torch_geometric.utils._segment._torch_segment
    return torch._segment_reduce(src, reduce, offsets=ptr, initial=0 if reduce == "mean" else None)


def arm_ts_segment_csr(src, index, N, reduce, ptr):
    return torch_scatter.segment_csr(src, ptr, reduce=reduce)


def arm_ts_segment_coo(src, index, N, reduce, ptr):
    return torch_scatter.segment_coo(src, index, dim_size=N, reduce=reduce)


ARMS = {  # name: (function, needs torch_scatter, needs sorted index)
    "pyg": (arm_pyg, False, False),
    "index_add": (arm_index_add, False, False),
    "scatter_reduce": (arm_scatter_reduce, False, False),
    "ts.scatter": (arm_ts_scatter, True, False),
    "torch._segment_reduce": (arm_torch_segment, False, True),
    "ts.segment_csr": (arm_ts_segment_csr, True, True),
    "ts.segment_coo": (arm_ts_segment_coo, True, True),
}


def reference(src, index, N, reduce):
    out = torch.zeros(N, src.shape[1], dtype=torch.float64).index_add_(0, index, src.double())
    if reduce == "mean":
        out = out / torch.bincount(index, minlength=N).clamp(min=1).double()[:, None]
    return out


def check(fn, src, index, N, reduce, ptr, grad):
    """Max |difference| from the float64 reference of output and gradient, relative to max |ref|;
    raises if beyond float32 round-off."""
    x = src.detach().clone().requires_grad_(True)
    out = fn(x, index, N, reduce, ptr)
    out.backward(grad)
    xd = src.detach().double().requires_grad_(True)
    ref = reference(xd, index, N, reduce)
    ref.backward(grad.double())
    errs = []
    for got, want in ((out.detach(), ref.detach()), (x.grad, xd.grad)):
        torch.testing.assert_close(got.double(), want, rtol=1e-5,
                                   atol=1e-6 * float(want.abs().max()))
        errs.append(float((got.double() - want).abs().max() / want.abs().max()))
    return max(errs)


def step_fn(fn, src, index, N, reduce, ptr, grad):
    def step():
        src.grad = None
        fn(src, index, N, reduce, ptr).backward(grad)
    return step


def block_time(step, k):
    t0 = time.perf_counter()
    for _ in range(k):
        step()
    return (time.perf_counter() - t0) / k


def measure(steps: dict, repeats: int, target_s: float = 2e-3) -> dict:
    for step in steps.values():  # warm-up
        block_time(step, 5)
    single = min(block_time(s, 5) for s in steps.values())
    k = max(1, int(target_s / max(single, 1e-7)))
    samples = {name: [] for name in steps}
    names = list(steps)
    for _ in range(repeats):
        random.shuffle(names)  # interleaved, random order: drift hits every arm alike
        for name in names:
            samples[name].append(block_time(steps[name], k))
    return {name: statistics.median(s) for name, s in samples.items()}


# --------------------------------------------------------------------------- dispatch probe

def dispatch_probe() -> list[str]:
    """Count PyG's calls into torch_scatter for sum/mean (needs torch_scatter)."""
    from torch_geometric.nn.aggr import MeanAggregation, SumAggregation
    from torch_geometric.utils import segment

    calls: dict[str, int] = {}
    originals = {}
    for name in ("scatter", "segment_csr", "segment_coo", "scatter_max", "scatter_min"):
        originals[name] = getattr(torch_scatter, name)

        def counted(*a, _name=name, **kw):
            calls[_name] = calls.get(_name, 0) + 1
            return originals[_name](*a, **kw)
        setattr(torch_scatter, name, counted)
    lines = []
    try:
        x = torch.randn(20, 8, requires_grad=True)
        index = torch.arange(4).repeat_interleave(5)
        ptr = torch.tensor([0, 5, 10, 15, 20])
        probes = {
            "utils.scatter(reduce='sum')": lambda: pyg_scatter(x, index, 0, 4, "sum"),
            "utils.scatter(reduce='mean')": lambda: pyg_scatter(x, index, 0, 4, "mean"),
            "utils.scatter(reduce='max')": lambda: pyg_scatter(x, index, 0, 4, "max"),
            "SumAggregation(x, index)": lambda: SumAggregation()(x, index, dim_size=4),
            "SumAggregation(x, index, ptr)": lambda: SumAggregation()(x, index, ptr=ptr),
            "MeanAggregation(x, ptr=ptr)": lambda: MeanAggregation()(x, ptr=ptr),
            "SumAggregation(x, ptr=ptr)": lambda: SumAggregation()(x, ptr=ptr),
            "utils.segment(x, ptr, 'sum')": lambda: segment(x, ptr, "sum"),
        }
        for label, fn in probes.items():
            calls.clear()
            fn().sum().backward()
            lines.append(f"  {label:<34} -> {dict(calls) or 'no torch_scatter call'}")
        calls.clear()
        torch.use_deterministic_algorithms(True)
        try:
            SumAggregation()(x, index, ptr=ptr).sum().backward()
        finally:
            torch.use_deterministic_algorithms(False)
        lines.append(f"  {'SumAggregation(x, index, ptr) det.':<34} -> "
                     f"{dict(calls) or 'no torch_scatter call'}  (deterministic algorithms on)")
    finally:
        for name, fn in originals.items():
            setattr(torch_scatter, name, fn)
    return lines


# --------------------------------------------------------------------------- SEGNN step

def segnn_step(repeats: int):
    """relaxgnn's N-body SEGNN training step: stock aggregation against the ptr path."""
    import types

    from torch_geometric.data import Batch, Data

    from relaxgnn.data import FullyConnected
    from relaxgnn.models import SEGNN

    gen = torch.Generator().manual_seed(0)
    data = [Data(pos=torch.randn(5, 3, generator=gen), vel=torch.randn(5, 3, generator=gen),
                 charges=(torch.randint(0, 2, (5, 1), generator=gen) * 2 - 1).float())
            for _ in range(100)]
    batch = FullyConnected()(Batch.from_data_list(data))
    order = torch.argsort(batch.edge_index[1], stable=True)
    batch.edge_index = batch.edge_index[:, order]  # receiver-sorted: a CSR pointer exists
    N = batch.num_nodes
    ptr = torch.zeros(N + 1, dtype=torch.long)
    ptr[1:] = torch.bincount(batch.edge_index[1], minlength=N).cumsum(0)
    target = torch.randn(N, 3)

    def build(route_ptr: bool):
        torch.manual_seed(0)
        model = SEGNN({"vel": "1x1o"}, hidden_features=64, lmax=1, num_layers=4,
                      velocity_field="vel", pair_fields=["charges"],
                      position_input="centred", output="position")
        if route_ptr:
            for conv in model.layers:
                def aggregate(self, inputs, index, ptr_=None, dim_size=None):
                    # index=None with ptr: PyG's Aggregation.reduce takes its segment() path
                    return self.aggr_module(inputs, None, ptr=ptr, dim_size=dim_size,
                                            dim=self.node_dim)
                conv.aggregate = types.MethodType(aggregate, conv)
        return model

    def step_of(model, with_ts: bool):
        opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-12)

        def step():
            torch_geometric.typing.WITH_TORCH_SCATTER = with_ts
            try:
                loss = (model(batch) - target).pow(2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            finally:
                torch_geometric.typing.WITH_TORCH_SCATTER = torch_scatter is not None
        return step

    models = {"stock (utils.scatter → scatter_add_)": (build(False), False),
              "ptr path, torch._segment_reduce": (build(True), False)}
    if torch_scatter is not None:
        models["ptr path, ts.segment_csr"] = (build(True), True)
    with torch.no_grad():
        ref = models["stock (utils.scatter → scatter_add_)"][0](batch)
        for m, ts in models.values():
            torch_geometric.typing.WITH_TORCH_SCATTER = ts
            torch.testing.assert_close(m(batch), ref, rtol=1e-5, atol=1e-5)
        torch_geometric.typing.WITH_TORCH_SCATTER = torch_scatter is not None
    if torch_scatter is not None:  # show the wired arm really calls torch_scatter
        calls = []
        orig = torch_scatter.segment_csr
        torch_scatter.segment_csr = lambda *a, **k: (calls.append(1), orig(*a, **k))[1]
        try:
            step_of(build(True), True)()
        finally:
            torch_scatter.segment_csr = orig
        print(f"  ptr path with torch-scatter: {len(calls)} torch_scatter.segment_csr calls "
              f"per step; stock path: 0 (see probe)")
    steps = {name: step_of(m, ts) for name, (m, ts) in models.items()}
    for s in steps.values():
        for _ in range(3):
            s()
    samples = {name: [] for name in steps}
    names = list(steps)
    for _ in range(repeats):
        random.shuffle(names)
        for name in names:
            t0 = time.perf_counter()
            steps[name]()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) for name, s in samples.items()}


# --------------------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--repeats", type=int, default=41)
    parser.add_argument("--segnn", action="store_true",
                        help="also time a relaxgnn SEGNN training step (needs relaxgnn)")
    parser.add_argument("--segnn-repeats", type=int, default=31)
    args = parser.parse_args()
    random.seed(0)
    torch.manual_seed(0)

    ts_version = torch_scatter.__version__ if torch_scatter is not None else "not installed"
    print("scatter aggregation benchmark (forward + backward, float32, CPU)")
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} default threads, {date.today()}")
    print(f"torch {torch.__version__}, torch_geometric {torch_geometric.__version__}, "
          f"torch_scatter {ts_version} (PyG sees it: "
          f"{torch_geometric.typing.WITH_TORCH_SCATTER})")
    if torch_scatter is None:
        print("torch-scatter is not installed: the ts.* arms are skipped "
              "(pip install 'relaxgnn[scatter]' to include them)")
    arms = {n: a for n, a in ARMS.items() if not (a[1] and torch_scatter is None)}

    if torch_scatter is not None:
        print("\ndispatch probe: PyG calls into torch_scatter (forward + backward)")
        print("\n".join(dispatch_probe()))

    cases = make_cases()
    print("\nchecking every arm against a float64 reference (output and gradient) ...")
    worst = 0.0
    for _case, _layout, index, N, F in cases:
        src = torch.randn(index.numel(), F)
        grad = torch.randn(N, F)
        ptr = None
        sorted_ = bool((index[1:] >= index[:-1]).all())
        if sorted_:
            ptr = torch.zeros(N + 1, dtype=torch.long)
            ptr[1:] = torch.bincount(index, minlength=N).cumsum(0)
        for reduce in ("sum", "mean"):
            for fn, _, needs_sorted in arms.values():
                if needs_sorted and not sorted_:
                    continue
                worst = max(worst, check(fn, src, index, N, reduce, ptr, grad))
    print(f"all equal within float32 round-off (worst max|diff|/max|ref| = {worst:.1e})")

    names = list(arms)
    head = f"{'case':<27}{'index':<16}{'red.':<6}{'thr':>3}" + "".join(
        f"{n:>22}" for n in names) + f"{'ts/pyg':>8}{'ts/best torch':>14}"
    print(f"\nmedian µs per forward+backward, {args.repeats} interleaved repeats "
          "(— = needs a sorted index)\nts/pyg: fastest torch-scatter arm ÷ pyg; "
          "ts/best torch: fastest torch-scatter arm ÷ fastest arm without it")
    print(head)
    for threads in args.threads:
        torch.set_num_threads(threads)
        for case, layout, index, N, F in cases:
            src = torch.randn(index.numel(), F, requires_grad=True)
            grad = torch.randn(N, F)
            sorted_ = bool((index[1:] >= index[:-1]).all())
            ptr = None
            if sorted_:
                ptr = torch.zeros(N + 1, dtype=torch.long)
                ptr[1:] = torch.bincount(index, minlength=N).cumsum(0)
            for reduce in ("sum", "mean"):
                steps = {name: step_fn(fn, src, index, N, reduce, ptr, grad)
                         for name, (fn, _, needs_sorted) in arms.items()
                         if sorted_ or not needs_sorted}
                med = measure(steps, args.repeats)
                row = f"{case:<27}{layout:<16}{reduce:<6}{threads:>3}"
                for name in names:
                    row += f"{med[name] * 1e6:>22.1f}" if name in med else f"{'—':>22}"
                ts = [v for n, v in med.items() if n.startswith("ts.")]
                plain = [v for n, v in med.items() if not n.startswith("ts.")]
                row += (f"{min(ts) / med['pyg']:>8.2f}{min(ts) / min(plain):>14.2f}" if ts
                        else f"{'n/a':>8}{'n/a':>14}")
                print(row, flush=True)

    if args.segnn:
        try:
            import relaxgnn  # noqa: F401
        except ImportError:
            print("\nrelaxgnn is not importable: SEGNN step skipped")
            return
        for threads in args.threads:
            torch.set_num_threads(threads)
            print(f"\nrelaxgnn SEGNN training step (N-body: 4×(32x0e+32x1o), batch 100×5, "
                  f"receiver-sorted edges), {threads} threads, median of {args.segnn_repeats}")
            med = segnn_step(args.segnn_repeats)
            base = med["stock (utils.scatter → scatter_add_)"]
            for name, t in med.items():
                print(f"  {name:<40}{t * 1e3:>9.2f} ms  ({t / base:.3f}× stock)")


if __name__ == "__main__":
    main()
