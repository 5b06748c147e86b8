"""The pathway compiled into a lookup table for the engine's hot path.

Building a python-statemachine instance costs ~140 µs and a transition ~85 µs, so the
engine does not run the machine per event. Instead this module reads the `CarePathway`
class once — its transitions, guards and validators, the very same function objects —
into a dict keyed by (state, machine event). It is derived, not a second definition;
tests/test_pathway_agreement.py proves it picks what the machine picks everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from workflow.states.pathway import MAIN_LINE, CarePathway
from workflow.states.rules import RuleContext

Guard = Callable[[RuleContext], bool]
Validator = Callable[[RuleContext], None]


@dataclass(frozen=True, slots=True)
class CompiledTransition:
    source: str
    target: str
    event: str
    guards: tuple[tuple[Guard, bool], ...]  # (guard, expected value): cond → True, unless → False
    validators: tuple[Validator, ...]

    def selected(self, ctx: RuleContext) -> bool:
        return all(bool(guard(ctx)) is expected for guard, expected in self.guards)


def _compile() -> dict[tuple[str, str], tuple[CompiledTransition, ...]]:
    table: dict[tuple[str, str], list[CompiledTransition]] = {}
    for state in CarePathway.states:
        for transition in state.transitions:
            for event in str(transition.event).split():
                compiled = CompiledTransition(
                    source=state.id,
                    target=transition.target.id,
                    event=event,
                    guards=tuple(
                        (spec.func, bool(spec.expected_value)) for spec in transition.cond
                    ),
                    validators=tuple(spec.func for spec in transition.validators),
                )
                table.setdefault((state.id, event), []).append(compiled)
    return {key: tuple(value) for key, value in table.items()}


TRANSITIONS = _compile()

# Checks that refuse an event even where it has no transition (settled facts, not timing):
# see rules.validator.
ANY_STATE_VALIDATORS: dict[str, tuple[Validator, ...]] = {}
for (_state, _event), _options in TRANSITIONS.items():
    for _option in _options:
        for _validate in _option.validators:
            _settled = getattr(_validate, "any_state", None)
            if _settled is not None:
                known = ANY_STATE_VALIDATORS.setdefault(_event, ())
                if _settled not in known:
                    ANY_STATE_VALIDATORS[_event] = known + (_settled,)

_EVENTS_LEGAL_IN: dict[str, frozenset[str]] = {}
for _state, _event in TRANSITIONS:
    _EVENTS_LEGAL_IN[_state] = _EVENTS_LEGAL_IN.get(_state, frozenset()) | {_event}


def _ahead_of(state: str) -> tuple[str, ...]:
    index = MAIN_LINE.index(state)
    ahead = MAIN_LINE[index + 1 :]
    # dosed ↔ integrating repeat for each further dosing session.
    return ahead if ahead else ("dosed",)


PREMATURE_IN: dict[str, frozenset[str]] = {
    state: frozenset().union(*(_EVENTS_LEGAL_IN.get(s, frozenset()) for s in _ahead_of(state)))
    for state in MAIN_LINE
}


def is_premature(state: str, held_from: str | None, event: str) -> bool:
    """Legal further along the main line (or, on hold, once the hold is released)."""
    if state == "on_hold" and held_from in PREMATURE_IN:
        return event in _EVENTS_LEGAL_IN.get(held_from, frozenset()) or (
            event in PREMATURE_IN[held_from]
        )
    return event in PREMATURE_IN.get(state, frozenset())


def forced_target(ctx: RuleContext, trigger: str) -> str:
    """Where a fact that stayed premature past the parking window takes the client when
    it is recorded all the same: the state the pathway would reach with it from the
    nearest state ahead that allows it. On hold the hold stays; out of care the client
    stays out (the fact is recorded, the duties it raises open)."""
    state = ctx.client.state
    if state == "on_hold" or state not in MAIN_LINE:
        return state
    for ahead in MAIN_LINE[MAIN_LINE.index(state) + 1 :]:
        for option in TRANSITIONS.get((ahead, trigger), ()):
            if option.selected(ctx):
                moves = option.target != ahead or trigger in _DOSING_FACTS
                return option.target if moves else state
    return state


# A completed or integrated dosing means the client was dosed, whatever else is missing.
_DOSING_FACTS = frozenset({"complete_dosing", "complete_integration"})
