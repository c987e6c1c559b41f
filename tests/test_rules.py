"""Rules turn events into lead-status transitions, safely (docs/rules.md).

Most tests build rules in Python and compile them as the loader would; the few that are
about loading (included files, CSV lookups, messages naming the file) write YAML.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.config import LocatedRule, RuleConfig, load_config
from bridge.errors import ConfigError, ConfigErrors
from bridge.models import Event, LeadStatus, Outcome, Transition
from bridge.rules import MAX_NOTES, MAX_RENDER, RuleSet, compile_rules

RULES_FILE = "rules.yaml"  # where a rule built in Python says it came from
SOURCES = {
    "stripe": {"preset": "stripe", "secret": "whsec_x"},
    "hubspot": {"preset": "hubspot", "secret": "y"},
}


def write_config(
    tmp_path: Path,
    rules: list[dict[str, Any]],
    *,
    account_id: int | None = 7,
    lookups: dict[str, Any] | None = None,
    files: dict[str, list[dict[str, Any]]] | None = None,
) -> Path:
    voxys: dict[str, Any] = {"api_token": "x"}
    if account_id is not None:
        voxys["account_id"] = account_id
    entries: list[dict[str, Any]] = list(rules)
    for name, file_rules in (files or {}).items():
        (tmp_path / "rules").mkdir(exist_ok=True)
        (tmp_path / "rules" / name).write_text(yaml.safe_dump({"rules": file_rules}))
    if files:
        entries.append({"include": "rules/*.yaml"})
    doc = {"voxys": voxys, "sources": SOURCES, "lookups": lookups or {}, "rules": entries}
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def compile_(
    rules: list[dict[str, Any]],
    *,
    account_id: int | None = 7,
    lookups: dict[str, dict[str, str]] | None = None,
) -> RuleSet:
    """Rules built in Python, as the config loader hands them over, from RULES_FILE."""
    located = [LocatedRule(rule=RuleConfig.model_validate(r), file=RULES_FILE) for r in rules]
    return compile_rules(
        located, lookups=lookups or {}, sources=SOURCES.keys(), default_account_id=account_id
    )


def errors_of(rules: list[dict[str, Any]], **kwargs: Any) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as info:
        compile_(rules, **kwargs)
    return info.value.errors


def compile_yaml(tmp_path: Path, rules: list[dict[str, Any]], **kwargs: Any) -> RuleSet:
    """Rules through the whole loader: bridge.yaml, included files, CSV lookups."""
    loaded = load_config(write_config(tmp_path, rules, **kwargs))
    return compile_rules(
        loaded.rules,
        lookups=loaded.lookups,
        sources=loaded.config.sources.keys(),
        default_account_id=loaded.config.voxys.account_id,
    )


def yaml_errors_of(tmp_path: Path, rules: list[dict[str, Any]], **kwargs: Any) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as info:
        compile_yaml(tmp_path, rules, **kwargs)
    return info.value.errors


def rule(name: str = "r", **fields: Any) -> dict[str, Any]:
    return {"name": name, "source": "stripe", "lead_id": 42, "status": "won", **fields}


def event(payload: Any, source: str = "stripe", **kwargs: Any) -> Event:
    return Event(
        source=source,
        event_id=kwargs.pop("event_id", "evt_1"),
        occurred_at=kwargs.pop("occurred_at", 1_700_000_000.0),
        received_at=kwargs.pop("received_at", 1_700_000_001.0),
        payload=payload,
        **kwargs,
    )


CHECKOUT = {
    "type": "checkout.session.completed",
    "livemode": True,
    "data": {
        "object": {
            "payment_status": "paid",
            "amount_total": 1999,
            "currency": "eur",
            "metadata": {"voxys_account_id": "9", "voxys_lead_id": "42"},
        }
    },
}

STRIPE_PAID = {
    "name": "stripe-checkout-paid",
    "source": "stripe",
    "when": [
        "event.type == 'checkout.session.completed'",
        "event.data.object.payment_status == 'paid'",
        "event.livemode",
    ],
    "account_id": "{{ event.data.object.metadata.voxys_account_id }}",
    "lead_id": "{{ event.data.object.metadata.voxys_lead_id }}",
    "status": "won",
    "notes": "Paid {{ event.data.object.amount_total / 100 }} "
    "{{ event.data.object.currency | upper }}",
}


# --- matching and order ---------------------------------------------------------------


def test_the_issue_example_turns_a_paid_checkout_into_a_won_transition() -> None:
    rules = compile_([STRIPE_PAID])
    result = rules.evaluate(event(CHECKOUT))
    assert result.outcome is Outcome.MATCHED
    assert result.transitions == (
        Transition("stripe-checkout-paid", 9, 42, LeadStatus.WON, "Paid 19.99 EUR"),
    )
    assert result.matched_rules == ("stripe-checkout-paid",)
    assert result.rule == "stripe-checkout-paid"


def test_every_when_condition_must_hold() -> None:
    rules = compile_([STRIPE_PAID])
    test_mode = {**CHECKOUT, "livemode": False}
    result = rules.evaluate(event(test_mode))
    assert result.outcome is Outcome.IGNORED
    assert result.transitions == ()
    assert result.rule is None


def test_a_single_when_string_is_one_condition() -> None:
    rules = compile_([rule(when="event.type == 'a'")])
    assert rules.evaluate(event({"type": "a"})).outcome is Outcome.MATCHED
    assert rules.evaluate(event({"type": "b"})).outcome is Outcome.IGNORED


def test_a_rule_without_when_matches_every_event_of_its_source() -> None:
    rules = compile_([rule()])
    assert rules.evaluate(event({})).outcome is Outcome.MATCHED


def test_a_when_template_is_true_unless_it_renders_empty_false_zero_or_none() -> None:
    rules = compile_([rule(when="{{ event.flag }}")])
    falsy: list[Any] = ["", "false", "False", "0", None, False, 0]
    truthy: list[Any] = ["yes", 1, True, "won"]
    for value in falsy:
        assert rules.evaluate(event({"flag": value})).outcome is Outcome.IGNORED, value
    for value in truthy:
        assert rules.evaluate(event({"flag": value})).outcome is Outcome.MATCHED, value


def test_rules_only_see_events_from_their_sources() -> None:
    rules = compile_(
        [rule("only-stripe"), rule("both", source=["hubspot", "stripe"], lead_id=5)],
    )
    assert rules.evaluate(event({}, source="hubspot")).matched_rules == ("both",)
    assert rules.evaluate(event({}, source="stripe")).matched_rules == ("only-stripe",)
    assert rules.evaluate(event({}, source="other")).outcome is Outcome.IGNORED
    assert [r.sources for r in rules.rules] == [("stripe",), ("hubspot", "stripe")]


def test_the_first_matching_rule_wins() -> None:
    rules = compile_(
        [
            rule("no", when="event.type == 'other'", lead_id=1),
            rule("first", lead_id=2),
            rule("second", lead_id=3),
        ],
    )
    result = rules.evaluate(event({"type": "x"}))
    assert [t.lead_id for t in result.transitions] == [2]
    assert result.matched_rules == ("first",)


def test_continue_lets_later_rules_add_transitions() -> None:
    rules = compile_(
        [
            rule("first", lead_id=2, **{"continue": True}),
            rule("second", lead_id=3, status="lost"),
            rule("third", lead_id=4),
        ],
    )
    result = rules.evaluate(event({}))
    assert [(t.rule, t.lead_id, t.status) for t in result.transitions] == [
        ("first", 2, LeadStatus.WON),
        ("second", 3, LeadStatus.LOST),
    ]
    assert result.matched_rules == ("first", "second")


def test_an_unmapped_rule_stops_evaluation_unless_it_continues() -> None:
    bad = {"lead_id": "{{ event.missing }}"}
    stops = compile_([rule("bad", **bad), rule("good")])
    assert stops.evaluate(event({})).outcome is Outcome.UNMAPPED
    goes_on = compile_([rule("bad", **bad, **{"continue": True}), rule("good")])
    result = goes_on.evaluate(event({}))
    assert result.outcome is Outcome.MATCHED  # at least one transition
    assert result.matched_rules == ("good",)
    assert [u.rule for u in result.unmapped] == ["bad"]


def test_rules_run_inline_first_then_included_files_in_sorted_order(tmp_path: Path) -> None:
    rules = compile_yaml(
        tmp_path,
        [rule("inline", **{"continue": True})],
        files={
            "b.yaml": [rule("b", **{"continue": True})],
            "a.yaml": [rule("a", **{"continue": True})],
        },
    )
    assert [r.name for r in rules.rules] == ["inline", "a", "b"]
    assert [r.file for r in rules.rules][1:] == [
        str(tmp_path / "rules" / "a.yaml"),
        str(tmp_path / "rules" / "b.yaml"),
    ]
    assert rules.evaluate(event({})).matched_rules == ("inline", "a", "b")
    assert rules.rules[0].continue_ is True


def test_a_rule_set_is_immutable() -> None:
    rules = compile_([rule()])
    with pytest.raises(dataclasses.FrozenInstanceError):
        rules.rules = []  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rules.rules[0].name = "x"  # type: ignore[misc]


# --- ids, accounts, status, notes -------------------------------------------------------


def test_account_id_defaults_to_the_configured_account() -> None:
    rules = compile_([rule()], account_id=123)
    assert rules.evaluate(event({})).transitions[0].account_id == 123


def test_without_any_account_id_the_event_is_unmapped() -> None:
    rules = compile_([rule()], account_id=None)
    result = rules.evaluate(event({}))
    assert result.outcome is Outcome.UNMAPPED
    assert result.rule == "r"
    assert result.reason is not None
    assert "account_id" in result.reason


def test_constant_ids_may_be_integers_or_decimal_strings() -> None:
    rules = compile_([rule(account_id="11", lead_id=2**63 - 1)])
    t = rules.evaluate(event({})).transitions[0]
    assert (t.account_id, t.lead_id) == (11, 2**63 - 1)


INVALID_IDS = ["../x", "42/status", "1e3", "+5", " 7", "7 ", "0", "-1", "9223372036854775808",
               "", "4.0", "0x1f", "07", "４２", "42\n", "1_000", "None"]  # fmt: skip


@pytest.mark.parametrize("value", INVALID_IDS)
@pytest.mark.parametrize("key", ["lead_id", "account_id"])
def test_ids_that_are_not_plain_positive_decimals_make_the_event_unmapped(
    key: str, value: str
) -> None:
    rules = compile_([rule(**{key: "{{ event.id }}"})])
    result = rules.evaluate(event({"id": value}))
    assert result.outcome is Outcome.UNMAPPED
    assert result.transitions == ()
    assert result.reason == f"{key} rendered {value!r}, not a positive integer"


def test_the_largest_id_is_two_to_the_63_minus_one() -> None:
    rules = compile_([rule(lead_id="{{ event.id }}")])
    assert rules.evaluate(event({"id": 2**63 - 1})).transitions[0].lead_id == 2**63 - 1
    assert rules.evaluate(event({"id": 2**63})).outcome is Outcome.UNMAPPED


def test_a_missing_lead_id_field_is_unmapped_not_an_error() -> None:
    rules = compile_([rule(lead_id="{{ event.data.object.metadata.lead }}")])
    result = rules.evaluate(event({"data": None}))
    assert result.outcome is Outcome.UNMAPPED
    assert result.reason == "lead_id rendered '', not a positive integer"


def test_a_status_template_is_checked_when_rendered() -> None:
    rules = compile_([rule(status="{{ event.stage | lower }}")])
    assert rules.evaluate(event({"stage": "LOST"})).transitions[0].status is LeadStatus.LOST
    result = rules.evaluate(event({"stage": "closedwon"}))
    assert result.outcome is Outcome.UNMAPPED
    assert result.reason is not None
    assert result.reason.startswith("status rendered 'closedwon'")


def test_a_status_template_can_map_through_a_lookup() -> None:
    rules = compile_(
        [rule(status="{{ lookup('stages', event.stage, 'open') }}")],
        lookups={"stages": {"closedwon": "won", "closedlost": "lost"}},
    )
    statuses = [rules.evaluate(event({"stage": s})).transitions[0].status for s in
                ["closedwon", "closedlost", "appointment"]]  # fmt: skip
    assert statuses == [LeadStatus.WON, LeadStatus.LOST, LeadStatus.OPEN]


def test_notes_that_render_empty_are_none() -> None:
    rules = compile_([rule(notes="{{ event.note }}")])
    assert rules.evaluate(event({})).transitions[0].notes is None
    assert rules.evaluate(event({"note": None})).transitions[0].notes is None
    assert rules.evaluate(event({"note": "  hi "})).transitions[0].notes == "hi"


def test_long_notes_are_truncated_not_refused() -> None:
    rules = compile_([rule(notes="{% for i in range(5000) %}abc{% endfor %}")])
    notes = rules.evaluate(event({})).transitions[0].notes
    assert notes == ("abc" * 5000)[:MAX_NOTES]


def test_payload_text_is_data_never_a_template() -> None:
    rules = compile_([rule(notes="{{ event.text }}")])
    result = rules.evaluate(event({"text": "{{ 7 * 7 }}"}))
    assert result.transitions[0].notes == "{{ 7 * 7 }}"


# --- names in scope and filters ---------------------------------------------------------


def test_headers_source_and_times_are_in_scope() -> None:
    notes = "{{ headers['x-kind'] }} {{ source }} {{ received_at | int }} {{ event_id }}"
    rules = compile_([rule(notes=notes)])
    result = rules.evaluate(event({}, headers={"x-kind": "k"}, event_id="evt_9"))
    assert result.transitions[0].notes == "k stripe 1700000001 evt_9"


def test_lookup_compares_keys_as_strings_and_has_a_default() -> None:
    rules = compile_(
        [
            rule(
                lead_id="{{ lookup('deals', event.deal) }}", notes="{{ lookup('deals', 'x', 'd') }}"
            )
        ],
        lookups={"deals": {"1001": "55"}},
    )
    result = rules.evaluate(event({"deal": 1001}))
    assert (result.transitions[0].lead_id, result.transitions[0].notes) == (55, "d")
    missing = rules.evaluate(event({"deal": 1002}))
    assert missing.reason == "lead_id rendered '', not a positive integer"


def test_lookup_tables_can_come_from_csv_files(tmp_path: Path) -> None:
    (tmp_path / "deals.csv").write_text("key,value\n1001,77\n")
    rules = compile_yaml(
        tmp_path,
        [rule(lead_id="{{ lookup('deals', event.deal) }}")],
        lookups={"deals": {"file": "deals.csv"}},
    )
    assert rules.evaluate(event({"deal": "1001"})).transitions[0].lead_id == 77


@pytest.mark.parametrize(
    ("template", "payload", "expected"),
    [
        ("{{ event.v | int }}", {"v": "12"}, "12"),
        ("{{ event.v | float }}", {"v": "1.5"}, "1.5"),
        ("{{ (event.v / 100) | round(1) }}", {"v": 1234}, "12.3"),
        ("{{ event.v | upper }}/{{ event.v | lower }}", {"v": "eUr"}, "EUR/eur"),
        ("{{ event.v | default('none given') }}", {}, "none given"),
        ("{{ event.v | replace('-', ' ') }}", {"v": "a-b"}, "a b"),
        ("{{ event.v | regex_replace('[^0-9]', '') }}", {"v": "lead-4-2"}, "42"),
        ("{{ event.v | regex_replace('([a-z]+)@([a-z]+)', '\\\\2') }}", {"v": "a@b"}, "b"),
        ("{{ 'yes' if event.v is match('^deal-[0-9]+$') else 'no' }}", {"v": "deal-7"}, "yes"),
        ("{{ 'yes' if event.v is match('^deal-[0-9]+$') else 'no' }}", {"v": "xdeal-7"}, "no"),
        ("{{ 'yes' if event.v is match('deal') else 'no' }}", {"v": "my deal"}, "yes"),
        (
            "{{ event.t | fromtimestamp | strftime('%Y-%m-%d %H:%M') }}",
            {"t": 0},
            "1970-01-01 00:00",
        ),
        ("{{ event.t | date('%d/%m/%Y') }}", {"t": "1700000000"}, "14/11/2023"),
        ("{{ (event.t | fromtimestamp).tzname() }}", {"t": 0}, "UTC"),
        ("{{ event.data.object['items'] }}", {"data": {"object": {"items": 3}}}, "3"),
        ("{{ event.data.object.items }}", {"data": {"object": {"items": 3}}}, "3"),
        ("[{{ event.a.b.c }}]", {}, "[]"),
    ],
)
def test_filters_and_tests_a_rule_author_needs(
    template: str, payload: dict[str, Any], expected: str
) -> None:
    rules = compile_([rule(notes=template)])
    result = rules.evaluate(event(payload))
    assert result.transitions[0].notes == expected


def test_missing_fields_are_falsy_in_when() -> None:
    rules = compile_([rule(when=["not event.a.b.c", "event.x.y != 'z'", "event.q is undefined"])])
    assert rules.evaluate(event({})).outcome is Outcome.MATCHED
    assert rules.evaluate(event([1, 2])).outcome is Outcome.MATCHED
    assert rules.evaluate(event("text")).outcome is Outcome.MATCHED


# --- failures while evaluating -----------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason_start"),
    [
        ({"when": "event.n / 0 > 1"}, "when failed: ZeroDivisionError"),
        ({"when": ["true", "event.missing + 1 > 0"]}, "when[1] failed: UndefinedError"),
        ({"notes": "{{ event.amount / 100 }}"}, "notes failed: UndefinedError"),
        ({"notes": "{{ event.v | regex_replace('(', '') }}"}, "notes failed: error"),
        ({"notes": "{{ event.v | fromtimestamp }}"}, "notes failed: ValueError"),
        ({"lead_id": "{{ event.pop('v') }}"}, "lead_id failed: SecurityError"),
        ({"lead_id": "{{ lookup(event.v, 1) }}"}, "lead_id failed: LookupError"),
        ({"lead_id": "{{ 'x' * event.n }}"}, "lead_id failed: OverflowError"),
        ({"lead_id": "{{ event.n ** event.n }}"}, "lead_id failed: OverflowError"),
    ],
)
def test_an_error_in_one_rule_makes_the_event_unmapped_with_a_short_reason(
    fields: dict[str, Any], reason_start: str
) -> None:
    rules = compile_([rule(**fields)])
    result = rules.evaluate(event({"v": "x", "n": 10**9}))
    assert result.outcome is Outcome.UNMAPPED
    assert result.reason is not None
    assert result.reason.startswith(reason_start), result.reason
    assert "Traceback" not in result.reason
    assert len(result.reason) < 200


def test_a_template_rendering_too_much_is_unmapped() -> None:
    rules = compile_([rule(lead_id="{% for i in range(99999) %}1{% endfor %}")])
    result = rules.evaluate(event({}))
    assert result.outcome is Outcome.UNMAPPED
    assert result.reason == f"lead_id rendered more than {MAX_RENDER} characters"


def test_a_huge_payload_value_in_an_id_is_refused_and_quoted_briefly() -> None:
    rules = compile_([rule(lead_id="{{ event.id }}")])
    result = rules.evaluate(event({"id": "9" * 5000}))
    assert result.outcome is Outcome.UNMAPPED
    assert result.reason is not None
    assert len(result.reason) < 120


# --- check: load-time errors ----------------------------------------------------------------


def test_a_template_syntax_error_names_file_rule_and_key(tmp_path: Path) -> None:
    errors = yaml_errors_of(tmp_path, [rule("broken", when=["true", "event.type =="])])
    assert [(e.file, e.rule, e.key) for e in errors] == [
        (str(tmp_path / "bridge.yaml"), "broken", "when[1]")
    ]
    assert "syntax error" in errors[0].message


@pytest.mark.parametrize("key", ["lead_id", "account_id", "status", "notes"])
def test_a_value_template_syntax_error_names_its_key(key: str) -> None:
    errors = errors_of([rule(**{key: "{{ event.x | }}"})])
    assert [(e.rule, e.key) for e in errors] == [("r", key)]


def test_unknown_source_keys_are_refused() -> None:
    errors = errors_of([rule(source=["stripe", "strip"])])
    assert [(e.key, e.message) for e in errors] == [
        ("source[1]", "unknown source 'strip' (sources: hubspot, stripe)")
    ]


@pytest.mark.parametrize(
    "template", ["{{ lookup('dealz', event.id) }}", "{{ lookup(table='dealz', key=1) }}"]
)
def test_unknown_lookup_tables_are_refused(template: str) -> None:
    errors = errors_of([rule(lead_id=template)], lookups={"deals": {"1": "2"}})
    assert [(e.key, e.message) for e in errors] == [("lead_id", "unknown lookup table 'dealz'")]


def test_unknown_lookup_tables_are_refused_in_when_expressions() -> None:
    errors = errors_of([rule(when="lookup('nope', event.id)")])
    assert [(e.key, e.message) for e in errors] == [("when", "unknown lookup table 'nope'")]


def test_unknown_names_are_refused_so_typos_do_not_silently_never_match() -> None:
    errors = errors_of([rule(when="evnt.type == 'x'", notes="{{ evnt }}")])
    assert [(e.key, e.message) for e in errors] == [
        ("when", "unknown name 'evnt'"),
        ("notes", "unknown name 'evnt'"),
    ]


def test_names_set_inside_a_template_are_known() -> None:
    notes = "{% set n = event.n %}{% for x in event.xs %}{{ x }}{{ n }}{% endfor %}"
    rules = compile_([rule(notes=notes)])
    assert rules.evaluate(event({"n": 1, "xs": ["a", "b"]})).transitions[0].notes == "a1b1"


@pytest.mark.parametrize("status", ["WON", "closed", "", "won "])
def test_an_invalid_constant_status_is_refused(status: str) -> None:
    errors = errors_of([rule(status=status)])
    assert [e.key for e in errors] == ["status"]


@pytest.mark.parametrize("value", ["../x", "0", -1, 0, "1e3", 2**63])
def test_an_invalid_constant_id_is_refused(value: Any) -> None:
    errors = errors_of([rule(lead_id=value, account_id=value)])
    assert [e.key for e in errors] == ["account_id", "lead_id"]


def test_duplicate_rule_names_are_refused_even_across_files(tmp_path: Path) -> None:
    errors = yaml_errors_of(tmp_path, [rule("same")], files={"a.yaml": [rule("same")]})
    assert [(e.file, e.rule, e.key) for e in errors] == [
        (str(tmp_path / "rules" / "a.yaml"), "same", "name")
    ]
    assert str(tmp_path / "bridge.yaml") in errors[0].message


def test_every_mistake_is_reported_at_once() -> None:
    errors = errors_of(
        [
            rule("a", source="nope"),
            rule("b", status="maybe", lead_id="{{ x"),
            rule("a"),
        ],
    )
    assert sorted((e.rule, e.key) for e in errors) == [
        ("a", "name"),
        ("a", "source"),
        ("b", "lead_id"),
        ("b", "status"),
    ]


def test_unknown_keys_in_a_rule_are_refused_when_the_config_loads(tmp_path: Path) -> None:
    path = write_config(tmp_path, [rule("typo", statuss="won")])
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    assert [(e.rule, e.key, e.message) for e in info.value.errors] == [
        ("typo", "statuss", "unknown key")
    ]


# --- sandbox ------------------------------------------------------------------------------


def escapes(marker: Path) -> list[str]:
    cmd = f"touch {marker}"
    return [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ event.__class__.__mro__[1].__subclasses__() }}",
        "{{ source.__class__.__base__.__subclasses__() }}",
        "{{ lookup.__globals__['__builtins__']['__import__']('os').system('" + cmd + "') }}",
        "{{ range.__init__.__globals__['os'].system('" + cmd + "') }}",
        "{{ cycler.__init__.__globals__.os.system('" + cmd + "') }}",
        "{{ joiner.__init__.__globals__.os.system('" + cmd + "') }}",
        "{{ namespace.__init__.__globals__.os.system('" + cmd + "') }}",
        "{{ lipsum.__globals__['os'].system('" + cmd + "') }}",
        "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.popen('"
        + cmd
        + "') }}",
        "{{ self.__init__.__globals__.__builtins__.__import__('os').system('" + cmd + "') }}",
        "{{ config.__class__.__init__.__globals__['os'].system('" + cmd + "') }}",
        "{{ request.application.__globals__.__builtins__.__import__('os') }}",
        "{{ headers.__class__.__init__.__globals__ }}",
        "{{ lookup.__code__ }}",
        "{{ lookup.__closure__[0].cell_contents }}",
        "{{ event.items.__self__ }}",
        "{{ received_at.__class__.__subclasses__() }}",
        "{{ (event.t | fromtimestamp).__class__.__module__ }}",
        "{{ '{0.__class__}'.format(event) }}",
        "{{ '%s' | format(event.__class__) }}",
        "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{{ c }}{% endfor %}",
        "{{ event.update({'x': 1}) }}{{ event.x }}",
        "{% set _ = headers.clear() %}{{ headers }}",
    ]


def test_templates_cannot_reach_python_internals(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for template in escapes(marker):
        for key in ("notes", "lead_id", "when"):
            fields: dict[str, Any] = {key: template, "account_id": 1}
            try:
                rules = compile_([rule(**fields)])
            except ConfigErrors:
                continue  # refused by check: cannot run at all
            headers = {"a": "b"}
            result = rules.evaluate(event({"t": 0}, headers=headers))
            assert headers == {"a": "b"}
            for t in result.transitions:
                assert t.notes is None or not re.search(r"class|module|function|os|'", t.notes), (
                    template,
                    t.notes,
                )
    assert not marker.exists()


def test_the_escape_attempts_would_execute_outside_the_sandbox(tmp_path: Path) -> None:
    # Control: proves the payloads above are real, so their failing is the sandbox's doing.
    marker = tmp_path / "pwned"
    attempt = escapes(marker)[3]
    jinja2.Environment().from_string(attempt).render(lookup=load_config)  # noqa: S701
    assert marker.exists()


def test_private_attributes_are_refused_at_check() -> None:
    errors = errors_of([rule(notes="{{ event.__class__ }}{{ lookup['__globals__'] }}")])
    assert [e.message for e in errors] == [
        "attributes starting with '_' are not allowed ('__class__')",
        "attributes starting with '_' are not allowed ('__globals__')",
    ]


def test_private_attributes_built_at_render_are_still_unreachable() -> None:
    # A name the static check cannot see: the sandbox itself refuses it.
    notes = "[{{ event | attr('_' ~ '_class__') }}{{ lookup | attr('__glo' ~ 'bals__') }}]"
    rules = compile_([rule(notes=notes)])
    assert rules.evaluate(event({})).transitions[0].notes == "[]"


def test_templates_cannot_import_include_or_extend() -> None:
    for text in ["{% import 'os' as os %}", "{% include 'x' %}", "{% from 'x' import y %}"]:
        errors = errors_of([rule(notes=text)])
        assert [e.message for e in errors] == ["templates cannot import or include other templates"]


def test_the_sandbox_check_catches_names_outside_the_rule_scope() -> None:
    for name in ["cycler", "joiner", "namespace", "lipsum", "self", "config", "request"]:
        errors = errors_of([rule(notes="{{ " + name + " }}")])
        assert [e.message for e in errors] == [f"unknown name {name!r}"]


def test_runaway_power_and_repetition_are_stopped_quickly() -> None:
    rules = compile_([rule(notes="{{ (event.n ** event.n ** event.n) | string }}")])
    started = time.perf_counter()
    result = rules.evaluate(event({"n": 99}))
    assert result.outcome is Outcome.UNMAPPED
    assert time.perf_counter() - started < 1.0


# --- properties ----------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
ID_LIKE = (
    st.integers()
    | st.text(max_size=25)
    | st.from_regex(r"[ +\-0]?[0-9]{1,20}[ ./e]?[0-9]?", fullmatch=True)
    | JSON
)
PAYLOADS = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["a", "b"]) | JSON, "lead": ID_LIKE, "acct": ID_LIKE},
        optional={"amount": JSON, "stage": JSON, "data": JSON, "items": JSON},
    ),
)
PROPERTY_RULES = [
    rule("amount", when="event.amount > 10", notes="{{ event.amount / 100 }}", lead_id=1,
         **{"continue": True}),
    rule("typed", when=["event.type == 'a'", "event.data"], lead_id="{{ event.lead }}",
         account_id="{{ event.acct }}", status="{{ event.stage }}", **{"continue": True}),
    rule("any", lead_id="{{ event.lead | int }}", account_id="{{ event.acct }}",
         notes="{{ event.items | join(',') }} {{ event.type | upper }}", **{"continue": True}),
    rule("lookup", lead_id="{{ lookup('t', event.lead, event.acct) }}"),
]  # fmt: skip


@pytest.fixture(scope="module")
def property_rules() -> RuleSet:
    return compile_(PROPERTY_RULES, lookups={"t": {"1": "x", "2": "3"}})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=PAYLOADS, headers=st.dictionaries(st.text(max_size=5), st.text(max_size=5)))
def test_no_payload_makes_evaluation_raise_or_yield_an_invalid_id(
    property_rules: RuleSet, payload: Any, headers: dict[str, str]
) -> None:
    result = property_rules.evaluate(event(payload, headers=headers))
    assert result.outcome in set(Outcome)
    assert (result.outcome is Outcome.MATCHED) == bool(result.transitions)
    for t in result.transitions:
        for value in (t.account_id, t.lead_id):
            assert type(value) is int
            assert 1 <= value <= 2**63 - 1
            assert re.fullmatch(r"[1-9][0-9]*", str(value))
        assert t.status in set(LeadStatus)
        assert t.notes is None or 0 < len(t.notes) <= MAX_NOTES
    for u in result.unmapped:
        assert u.reason
        assert len(u.reason) < 200
