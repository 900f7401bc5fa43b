"""Rank-r merging of many adapters: merge-then-truncate against a shared subspace chosen first (Compress-then-
Merge), measured by what each task keeps of its own update (issue 23, item 3). Synthetic, no model.

    OMP_NUM_THREADS=1 .venv/bin/python bench/rank_subspace.py [--rank 16] [--tasks 4]

Four r=16 adapters of one 1024 x 1024 module, with update norms 4 : 2 : 1 : 0.5 (the unequal sizes that make a
truncated merge favour the largest task). For each core-space method and both subspace modes at output rank
r, `task_retained` from the engine's own code path: ||P_U M_t P_V||^2 / ||M_t||^2 of each task's weighted core in
the output's row and column spaces. This says how much room each task gets in a rank-r output; whether that
buys task quality is what the benchmark on real adapters (not run yet) must show.
"""

from __future__ import annotations

import argparse

import torch

from loramerge.merge.methods import METHODS, Contribution, MethodSettings

SIZE, INPUT_RANK = 1024, 16
NORMS = (4.0, 2.0, 1.0, 0.5)


def adapters(count: int, seed: int = 0) -> list[Contribution]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for norm in NORMS[:count]:
        a, b = torch.randn(INPUT_RANK, SIZE, generator=generator), torch.randn(SIZE, INPUT_RANK, generator=generator)
        scale = norm / float((b.double() @ a.double()).norm())
        out.append(Contribution(a=a, b=b, scale=scale, weight=1.0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--beta", type=float, default=0.25, help="subspace_beta of the shared mode")
    options = parser.parse_args()
    inputs = adapters(options.tasks)
    print(
        f"| method | subspace | retained share per task (norms {', '.join(f'{n:g}' for n in NORMS[: options.tasks])}) | smallest | mean |"
    )
    print("|---|---|---|---:|---:|")
    for method in ("tsv", "iso_c", "iso_cts", "core_ties", "knots_ties"):
        for subspace in ("merged", "shared"):
            settings = MethodSettings(rank=options.rank, subspace=subspace, subspace_beta=options.beta)
            result = METHODS[method].function(inputs, settings, torch.Generator().manual_seed(0))
            shares = result.task_retained or ()
            cells = ", ".join(f"{share:.2f}" for share in shares)
            label = f"shared, beta {options.beta:g}" if subspace == "shared" else subspace
            print(f"| {method} | {label} | {cells} | {min(shares):.2f} | {sum(shares) / len(shares):.2f} |")


if __name__ == "__main__":
    main()
