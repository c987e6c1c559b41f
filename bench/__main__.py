"""`python -m bench SCENARIO [options]`: run one benchmark, or `all` with their defaults.

python -m bench ingest [--duration 10] [--concurrency 1,16,64] [--runs 3]
python -m bench recovery [--pending 100000]
python -m bench delivery rate|throughput [...]
python -m bench rules_eval [--rules 100]
python -m bench scaling [--workers 1,2,4] [--postgres DSN]
python -m bench reload [--rows 1000000] [--rate 200] [--runs 3] [--bridge-src DIR]
python -m bench profile [--duration 12] [--against REV]   (needs py-spy; not in `all`)
python -m bench console [--events 10000,100000] [--requests 300]
python -m bench handover [--runs 3] [--ttl 6] [--idle 30] [--postgres DSN]
python -m bench followups [--count 100000] [--runs 3] [--baseline-src DIR] [--postgres DSN]
python -m bench bulk [--count 20000] [--unknown-count 5000] [--rate 10] [--patch-seconds 20]
python -m bench bulk_claim [--pending 20000] [--requests 10] [--postgres DSN]
python -m bench all
"""

from __future__ import annotations

import importlib
import sys

SCENARIOS = (
    "ingest",
    "recovery",
    "delivery",
    "rules_eval",
    "scaling",
    "reload",
    "profile",
    "console",
    "handover",
    "followups",
    "bulk",
    "bulk_claim",
)
# `all`: every scenario with its defaults; delivery's rate accuracy at both limits.
ALL: tuple[tuple[str, list[str]], ...] = (
    ("ingest", []),
    ("recovery", []),
    ("delivery", ["throughput"]),
    ("delivery", ["rate", "--rate", "20"]),
    ("delivery", ["rate", "--rate", "100"]),
    ("rules_eval", []),
    ("scaling", []),
    ("reload", []),
    ("console", []),
    ("handover", []),
    ("followups", []),
    ("bulk", []),
    ("bulk_claim", []),
)


def run(name: str, argv: list[str]) -> None:
    """Call the scenario's `main` as if it were run as `python -m bench.<name> argv`."""
    module = importlib.import_module(f"bench.{name}")
    saved = sys.argv
    sys.argv = [f"python -m bench {name}", *argv]
    try:
        module.main()
    finally:
        sys.argv = saved


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in (*SCENARIOS, "all"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    name, argv = sys.argv[1], sys.argv[2:]
    if name != "all":
        run(name, argv)
        return 0
    for scenario, args in ALL:
        print(f"\n== python -m bench {scenario} {' '.join(args)}".rstrip(), flush=True)
        run(scenario, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
