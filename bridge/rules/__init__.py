"""Rules: YAML rules compiled once in a Jinja2 sandbox, then events turned into transitions.

- `sandbox.py`: the bounded sandbox every template renders in
- `paths.py`: plain field paths walked without Jinja (same answers, cheaper)
- `compiled.py`: what a compiled rule is
- `compiler.py`: `compile_rules`, every mistake found at load
- `evaluator.py`: `RuleSet.evaluate`, an event to transitions, never raising

docs/rules.md describes the rule language.
"""

from bridge.rules.compiled import MAX_RENDER, CompiledFollowUp, CompiledRule
from bridge.rules.compiler import compile_rules
from bridge.rules.evaluator import MAX_NOTES, RuleSet

__all__ = [
    "MAX_NOTES",
    "MAX_RENDER",
    "CompiledFollowUp",
    "CompiledRule",
    "RuleSet",
    "compile_rules",
]
