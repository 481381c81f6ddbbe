"""Many registered clients, few per round: driver memory and wall time, local vs Ray.

    .venv/bin/python benchmarks/scale_clients.py [--clients 10000] [--per-round 10] [--rounds 5]
                                                 [--workers 2] [--backends local,ray,ray-eager]

10 000 clients with synthetic data (20 samples x 20 features each, 4 classes, a client-specific
label skew), a small MLP (20-32-4), ``--rounds`` rounds of ``--per-round`` clients, codec
``ef+topk:ratio=0.1+q:bits=8`` (so every sampled client's error-feedback state is kept).

Each backend runs in a fresh process, since peak RSS is a per-process high-water mark. Per
backend it prints: the driver's RSS once the clients are registered, its peak RSS over the run
(``getrusage``), and that peak minus the peak of the same run with only ``--baseline`` (100)
registered clients: what the extra clients cost the driver beyond imports and the model (their
data alone is about 1.8 kB each, 17.6 MB for 10 000). Then the client datasets put in Ray's object
store, the wall time of ``Simulation.run()`` (Ray's start included) and the final accuracy.

``ray-eager`` is the previous RayBackend for comparison: every registered client's data put in
the object store when the backend starts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CODEC = "ef+topk:ratio=0.1+q:bits=8"


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_clients(n: int, m: int = 20, d: int = 20, k: int = 4, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * 1.5
    skew = torch.distributions.Dirichlet(torch.full((k,), 0.5))
    torch.manual_seed(seed)
    clients = []
    for _ in range(n):
        # Separate tensors per client (a view of one big tensor would pickle the whole storage).
        y = torch.multinomial(skew.sample(), m, replacement=True, generator=g)
        clients.append((centers[y] + torch.randn(m, d, generator=g), y))
    yt = torch.randint(0, k, (1000,), generator=g)
    return clients, (centers[yt] + torch.randn(1000, d, generator=g), yt)


def model_fn():
    import torch

    return torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def one(backend: str, args) -> dict:
    import torch

    import fedpress
    from fedpress.sim import backends, runner

    torch.set_num_threads(1)
    clients, test = make_clients(args.clients)
    rss_registered = _rss_mb()
    opts = {}
    name = backend
    if backend.startswith("ray"):
        name, opts = "ray", {"num_cpus": args.workers}
    if backend == "ray-eager":

        class EagerRay(backends.RayBackend):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                for c in range(len(self.clients)):
                    self._data(c)
                self.data_cache = len(self.clients)

        def make(name, model_fn, clients, **kw):
            return EagerRay(model_fn, clients, **kw)

        runner.make_backend = make
    sim = fedpress.Simulation(model_fn, clients, test, codec=CODEC, rounds=args.rounds,
                              per_round=args.per_round, lr=0.1, seed=0, backend=name,
                              backend_options=opts)
    t0 = time.perf_counter()
    res = sim.run()
    wall = time.perf_counter() - t0
    be = sim._backend
    return {"backend": backend, "clients": args.clients, "rounds": args.rounds,
            "per_round": args.per_round, "rss_registered_mb": round(rss_registered, 1),
            "peak_rss_mb": round(_peak_mb(), 1), "growth_mb": round(_peak_mb() - rss_registered, 1),
            "placed": getattr(be, "placed", None), "wall_s": round(wall, 2),
            "final_accuracy": round(res.summary["final_metric"], 4),
            "uplink_bytes": res.summary["total_uplink_bytes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=10_000)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline", type=int, default=100, help="clients of the reference run")
    ap.add_argument("--backends", default="local,ray,ray-eager")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args)))
        return
    def child(backend: str, clients: int) -> dict | None:
        cmd = [sys.executable, __file__, "--one", backend, "--clients", str(clients), "--per-round",
               str(args.per_round), "--rounds", str(args.rounds), "--workers", str(args.workers)]
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if p.returncode != 0:
            print(f"{backend} ({clients} clients): failed\n{p.stderr[-3000:]}", file=sys.stderr)
            return None
        return json.loads(p.stdout.strip().splitlines()[-1])

    rows = []
    for b in args.backends.split(","):
        row, base = child(b, args.clients), child(b, args.baseline)
        if row is None or base is None:
            continue
        row["baseline_clients"] = args.baseline
        row["baseline_peak_rss_mb"] = base["peak_rss_mb"]
        row["extra_peak_rss_mb"] = round(row["peak_rss_mb"] - base["peak_rss_mb"], 1)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{args.clients} registered clients, {args.per_round} per round, {args.rounds} rounds, "
          f"codec {CODEC}, {args.workers} Ray workers")
    head = (f"{'backend':<10} {'RSS registered MB':>17} {'peak RSS MB':>11} "
            f"{'peak @' + str(args.baseline):>10} {'extra MB':>8} {'data puts':>9} {'wall s':>7} "
            f"{'accuracy':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        placed = "-" if r["placed"] is None else str(r["placed"])
        print(f"{r['backend']:<10} {r['rss_registered_mb']:>17.1f} {r['peak_rss_mb']:>11.1f} "
              f"{r['baseline_peak_rss_mb']:>10.1f} {r['extra_peak_rss_mb']:>8.1f} {placed:>9} "
              f"{r['wall_s']:>7.2f} {r['final_accuracy']:>8.4f}")


if __name__ == "__main__":
    main()
