"""Cost of evaluating one Stripe-like event against 100 rules (issue 3's closing note).

Each rule has two `when` conditions and templated ids and notes, like the shipped
examples. Times `RuleSet.evaluate` with the matching rule last, first, and absent.
Not a test:

    python -m bench.rules_eval [--rules 100] [--number 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import timeit
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from bridge.config import load_config
from bridge.models import Event, Outcome
from bridge.rules import RuleSet, compile_rules

PAYLOAD = {
    "id": "evt_1",
    "type": "checkout.session.completed",
    "livemode": True,
    "data": {
        "object": {
            "id": "cs_1",
            "payment_status": "paid",
            "amount_total": 1999,
            "currency": "eur",
            "created": 1_700_000_000,
            "metadata": {"voxys_account_id": "9", "voxys_lead_id": "42"},
        }
    },
}


def rule(name: str, event_type: str) -> dict[str, Any]:
    return {
        "name": name,
        "source": "stripe",
        "when": [f"event.type == '{event_type}'", "event.data.object.payment_status == 'paid'"],
        "account_id": "{{ event.data.object.metadata.voxys_account_id }}",
        "lead_id": "{{ event.data.object.metadata.voxys_lead_id }}",
        "status": "won",
        "notes": "Paid {{ event.data.object.amount_total / 100 }} "
        "{{ event.data.object.currency | upper }} on "
        "{{ event.data.object.created | date('%Y-%m-%d') }}",
    }


def rule_set(directory: Path, count: int, match_at: int | None) -> RuleSet:
    rules = [rule(f"rule-{i}", f"other.type.{i}") for i in range(count)]
    if match_at is not None:
        rules[match_at] = rule("the-match", "checkout.session.completed")
    doc = {
        "voxys": {"api_token": "x"},
        "sources": {"stripe": {"preset": "stripe", "secret": "whsec_x"}},
        "rules": rules,
    }
    path = directory / f"bridge-{match_at}.yaml"
    path.write_text(yaml.safe_dump(doc))
    loaded = load_config(path)
    return compile_rules(
        loaded.rules,
        lookups=loaded.lookups,
        sources=loaded.config.sources.keys(),
        default_account_id=loaded.config.voxys.account_id,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=100)
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()
    event = Event("stripe", "evt_1", 1_700_000_000.0, 1_700_000_000.0, PAYLOAD, {})
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "match last": (rule_set(Path(tmp), args.rules, args.rules - 1), Outcome.MATCHED),
            "match first": (rule_set(Path(tmp), args.rules, 0), Outcome.MATCHED),
            "no match": (rule_set(Path(tmp), args.rules, None), Outcome.IGNORED),
        }
    print(f"one Stripe-like event against {args.rules} rules, best of 5 x {args.number}:")
    for label, (rules, expected) in cases.items():
        assert rules.evaluate(event).outcome is expected
        best = min(timeit.repeat(partial(rules.evaluate, event), number=args.number, repeat=5))
        print(f"  {label:<12} {best / args.number * 1e6:8.1f} µs per event")


if __name__ == "__main__":
    main()
