"""Run the benchmarks and print a table of ratios against the standard tools.

    python3 -m bench.run [--only converge,backup,reconcile,latency,maintenance,failover,fleet,dr] [--json]

Results are also written to bench/results/results.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from bench.common import REPO, Result

BENCHES = {
    "converge": "bench.bench_converge",
    "reconcile": "bench.bench_reconcile",
    "backup": "bench.bench_backup",
    "latency": "bench.bench_latency",
    "maintenance": "bench.bench_maintenance",
    "failover": "bench.bench_failover",
    "fleet": "bench.bench_fleet",
    "dr": "bench.bench_dr",
}


def render(results: list[Result]) -> str:
    head = f"{'benchmark':<12} {'metric':<42} {'value':>10} {'unit':<6} {'baseline':>10} {'ratio':>7}  vs"
    lines = [head, "-" * len(head)]
    for r in results:
        base = f"{r.baseline:.2f}" if r.baseline is not None else "-"
        ratio = f"{r.ratio:.3f}" if r.ratio is not None else "-"
        lines.append(f"{r.bench:<12} {r.metric:<42} {r.value:>10.2f} {r.unit:<6} {base:>10} {ratio:>7}  "
                     f"{r.baseline_name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(BENCHES), help="comma list of " + ",".join(BENCHES))
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "results.json")
    args = parser.parse_args(argv)
    wanted = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = [b for b in wanted if b not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; expected some of {list(BENCHES)}")
    results: list[Result] = []
    failures: dict[str, str] = {}
    for name in wanted:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(BENCHES[name])
        except ModuleNotFoundError as exc:
            failures[name] = f"not available: {exc}"
            continue
        try:
            results.extend(module.run())
        except Exception as exc:
            failures[name] = f"{type(exc).__name__}: {exc}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "results": [r.as_dict() for r in results], "failures": failures}
    args.out.write_text(json.dumps(payload, indent=2))
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print(render(results))
        for name, why in failures.items():
            print(f"{name}: FAILED — {why}")
        print(f"\nwritten to {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
