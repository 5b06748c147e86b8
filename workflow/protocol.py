"""The protocol as a document clinicians can read and sign off, generated from the code.

Why generated: the clinicians who approve the rules should not have to read Python, and a
hand-written description drifts from what the engine does. Everything below is read from
the code the engine runs: the states and transitions of `CarePathway` (with their guards and
validators, the very functions the compiled table calls), the rule checks of rules.py (each
quotes the seed sentence it comes from in its docstring), the places in the handlers that
apply a rule, the task catalogue and where each task is opened (owner, priority, due time),
and the policy defaults with the comments that justify them. A change to any of these
changes the document without anyone editing it.

`protocol_document()` builds a neutral structure; `protocol_markdown()` renders it for the
command line (`kapflow protocol`). The HTTP service renders the same structure as HTML.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from datetime import timedelta
from types import ModuleType
from typing import Any

from events.registry import EVENT_MODELS
from workflow import handlers, policy, tasks
from workflow.handlers import HANDLERS
from workflow.releases import RELEASES, PathwayRelease, release_of
from workflow.states import rules
from workflow.states.diagram import mermaid
from workflow.states.pathway import (
    CLIENT_STATES,
    MAIN_LINE,
    PATHWAY_VERSION,
    TRIGGERS,
    CarePathway,
)
from workflow.tasks import DESCRIPTIONS, TaskCode

# What each state means to a clinician (SPEC §1). A state added to the pathway without an
# entry here still appears in the document, marked as undescribed.
STATE_MEANINGS: dict[str, str] = {
    "inquiry": "The client contacted the practice or was referred.",
    "assessed": "A KAP clinician completed the initial assessment and the client meets the "
    "eligibility rules; awaiting the independent medical evaluation.",
    "cleared": "An independent prescriber (Journey Clinical or Joyous) cleared the client and "
    "fixed the pathway; preparation under way.",
    "prepared": "At least one preparatory session is done and the clinician marked the client "
    "ready for dosing.",
    "dosed": "A ketamine-assisted session has started or finished; integration is owed.",
    "integrating": "An integration session followed the latest dosing; a further dosing may "
    "follow, or the course ends.",
    "ineligible": "Screened out (age, no ongoing therapy, contraindication, not cleared). "
    "Reopened only by a new assessment request.",
    "on_hold": "Safety or administrative hold. Releasing it returns the client to the state "
    "it was in.",
    "completed": "The clinician closed the course of treatment.",
    "withdrawn": "The client withdrew.",
}
_RULE_ID = re.compile(r"\bR(\d{1,2})\b")
_RULE_RANGE = re.compile(r"\bR(\d{1,2})\s*[–-]\s*R(\d{1,2})\b")
_RULE_FUNCTION = re.compile(r"^r(\d{1,2})_")


@dataclass(frozen=True, slots=True)
class Check:
    """A guard or a rule check, by its function name and what its docstring says."""

    name: str
    says: str
    rules: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TransitionDoc:
    machine_event: str
    event_types: tuple[str, ...]
    source: str
    target: str
    when: tuple[str, ...]  # guards, e.g. "if meets_eligibility", "unless is_severe"
    checks: tuple[Check, ...]  # the validators' checks

    @property
    def stays(self) -> bool:
        return self.source == self.target


@dataclass(frozen=True, slots=True)
class Mention:
    where: str  # module:function or module:line
    text: str


@dataclass(frozen=True, slots=True)
class RuleDoc:
    id: str
    seed: tuple[str, ...]  # the seed sentences quoted in the code
    checks: tuple[Check, ...]  # the functions that check it
    transitions: tuple[str, ...]  # where the engine applies those checks
    also: tuple[Mention, ...]  # handlers and policy lines that apply it


@dataclass(frozen=True, slots=True)
class Opening:
    where: str  # the handler that opens the task
    event_types: tuple[str, ...]
    owner: str
    priority: str
    due: str


@dataclass(frozen=True, slots=True)
class TaskDoc:
    code: str
    description: str
    openings: tuple[Opening, ...]


@dataclass(frozen=True, slots=True)
class PolicyDoc:
    name: str
    default: str
    why: str


@dataclass(frozen=True, slots=True)
class StateDoc:
    id: str
    on_main_line: bool
    meaning: str


@dataclass(frozen=True, slots=True)
class ReleaseDoc:
    """A pathway release: its version and what it changed from the one before (the
    switches it turned on, in the words of workflow/releases.py)."""

    version: str
    changes: tuple[str, ...]
    switches: tuple[tuple[str, bool], ...]  # every switch, on or off in this release


@dataclass(frozen=True, slots=True)
class ProtocolDocument:
    version: str
    states: tuple[StateDoc, ...]
    mermaid: str
    transitions: tuple[TransitionDoc, ...]
    event_types: tuple[tuple[str, str, str], ...]  # (type, machine event, what it reports)
    rules: tuple[RuleDoc, ...]
    tasks: tuple[TaskDoc, ...]
    policy: tuple[PolicyDoc, ...]
    releases: tuple[ReleaseDoc, ...] = ()
    current: str = PATHWAY_VERSION  # the release this build records with


# --- reading the code ----------------------------------------------------------------------


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    text = inspect.cleandoc(doc).split("\n\n", 1)[0]
    return " ".join(text.split())


def _rules_in(text: str) -> tuple[str, ...]:
    """Rule ids named in a text, ranges such as "R5–R9" included."""
    found = {f"R{n}" for n in _RULE_ID.findall(text)}
    for low, high in _RULE_RANGE.findall(text):
        found |= {f"R{n}" for n in range(int(low), int(high) + 1)}
    return tuple(sorted(found, key=_rule_order))


def _rule_order(rule_id: str) -> int:
    return int(rule_id[1:])


def _check(name: str) -> Check:
    function = getattr(rules, name, None)
    says = _first_paragraph(getattr(function, "__doc__", None)) if function else ""
    if name.startswith("held_from_"):
        says = f"the hold was placed from `{name.removeprefix('held_from_')}`"
    number = _RULE_FUNCTION.match(name)
    ids = {f"R{number.group(1)}"} if number else set()
    ids |= set(_rules_in(says))
    return Check(name, says, tuple(sorted(ids, key=_rule_order)))


def _validator_checks(validator: Callable[..., Any]) -> tuple[Check, ...]:
    # rules.validator names the combined validator after its checks, joined by `_and_`.
    return tuple(_check(name) for name in validator.__name__.split("_and_"))


def _event_types_of(machine_event: str) -> tuple[str, ...]:
    return tuple(t for t, trigger in TRIGGERS.items() if trigger == machine_event)


def _transitions() -> Iterator[TransitionDoc]:
    for state in CarePathway.states:
        for transition in state.transitions:
            for machine_event in str(transition.event).split():
                when = tuple(
                    ("if " if spec.expected_value else "unless ") + spec.func.__name__
                    for spec in transition.cond
                )
                checks = tuple(
                    check
                    for spec in transition.validators
                    for check in _validator_checks(spec.func)
                )
                yield TransitionDoc(
                    machine_event,
                    _event_types_of(machine_event),
                    state.id,
                    transition.target.id,
                    when,
                    checks,
                )


def _guard_checks(transitions: tuple[TransitionDoc, ...]) -> Iterator[Check]:
    seen: set[str] = set()
    for transition in transitions:
        for guard in transition.when:
            name = guard.split(" ", 1)[1]
            if name not in seen:
                seen.add(name)
                yield _check(name)


def _comment_mentions(module: ModuleType) -> Iterator[Mention]:
    """Comments of a module that name a rule id (a block of comment lines read as one),
    with the line where they start."""
    source = inspect.getsource(module)
    name = module.__name__.replace(".", "/") + ".py"
    block: list[str] = []
    start = 0
    for number, line in enumerate([*source.splitlines(), ""], start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            if not block:
                start = number
            block.append(stripped.lstrip("# ").strip().rstrip("- ").strip())
            continue
        text = " ".join(part for part in block if part)
        if text and _RULE_ID.search(text):
            yield Mention(f"{name}:{start}", text)
        block = []


def _rule_ids() -> tuple[str, ...]:
    """Every rule id the pathway's code names: in rule checks, guards, handlers, policy."""
    found: set[str] = set()
    for module in (rules, policy, *_handler_modules()):
        found |= set(_rules_in(inspect.getsource(module)))
    return tuple(sorted(found, key=_rule_order))


def _handler_modules() -> tuple[ModuleType, ...]:
    return tuple(
        module
        for module in vars(handlers).values()
        if isinstance(module, ModuleType) and module.__name__.startswith("workflow.handlers.")
    )


def _rule_docs(transitions: tuple[TransitionDoc, ...]) -> tuple[RuleDoc, ...]:
    checks = {
        check.name: check
        for check in (
            *(c for t in transitions for c in t.checks),
            *_guard_checks(transitions),
            *(_check(name) for name in dir(rules) if _RULE_FUNCTION.match(name)),
        )
    }
    mentions = [
        mention
        for module in (*_handler_modules(), policy, inspect.getmodule(CarePathway))
        if module is not None
        for mention in _comment_mentions(module)
    ]
    docs = []
    for rule_id in _rule_ids():
        own = tuple(c for c in checks.values() if rule_id in c.rules)
        seed = tuple(
            dict.fromkeys(
                c.says.removeprefix("Seed:").strip() for c in own if c.says.startswith("Seed")
            )
        )
        also = tuple(m for m in mentions if rule_id in _rules_in(m.text))
        if not seed:
            seed = tuple(
                m.text.split(":", 1)[1].strip() for m in also if m.text.startswith(rule_id + ":")
            )
        names = {c.name for c in own}
        applied = [
            t
            for t in transitions
            if names & ({c.name for c in t.checks} | {g.split(" ", 1)[1] for g in t.when})
        ]
        where = tuple(
            f"{', '.join(group[0].event_types) or group[0].machine_event}: from "
            f"{', '.join(t.source for t in group)} → "
            f"{'the same state' if group[0].stays else group[0].target}"
            for group in _grouped(applied, lambda t: (t.machine_event, t.stays, t.target))
        )
        docs.append(RuleDoc(rule_id, seed, own, where, also))
    return tuple(docs)


def _grouped(
    transitions: list[TransitionDoc], key: Callable[[TransitionDoc], Any]
) -> list[list[TransitionDoc]]:
    """Transitions with the same key, in first-seen order (one row for many sources)."""
    groups: dict[Any, list[TransitionDoc]] = {}
    for transition in transitions:
        k = key(transition)
        if transition.stays:
            k = (k, "stays")
        groups.setdefault(k, []).append(transition)
    return list(groups.values())


def transition_rows(
    document: ProtocolDocument, machine_event: str
) -> list[tuple[str, str, str, str]]:
    """(from, to, when, checks) rows of one machine event, sources with the same outcome
    merged: what a reader needs, shared by the Markdown and the HTML renderings."""
    own = [t for t in document.transitions if t.machine_event == machine_event]
    rows = []
    for group in _grouped(own, lambda t: (t.target, t.when, t.checks)):
        first = group[0]
        checks = "; ".join(f"{c.name} ({', '.join(c.rules) or '—'})" for c in first.checks)
        rows.append(
            (
                ", ".join(t.source for t in group),
                "stays" if first.stays else first.target,
                "; ".join(first.when),
                checks,
            )
        )
    return rows


def _event_handlers() -> dict[str, tuple[str, ...]]:
    """Handler function name → the event types it handles."""
    found: dict[str, list[str]] = {}
    for event_type, handler in HANDLERS.items():
        found.setdefault(handler.__name__, []).append(event_type)
    return {name: tuple(types) for name, types in found.items()}


def _attribute_value(node: ast.expr, namespace: type) -> str | None:
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == namespace.__name__
    ):
        value = getattr(namespace, node.attr, None)
        return value if isinstance(value, str) else None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _due_text(node: ast.expr | None) -> str:
    if node is None:
        return "—"
    names = [
        n.attr
        for n in ast.walk(node)
        if isinstance(n, ast.Attribute)
        and isinstance(n.value, ast.Attribute)
        and n.value.attr == "policy"
    ]
    if names:
        return ", ".join(f"policy `{name}`" for name in names)
    return f"`{ast.unparse(node)}`"


def _openings() -> dict[str, list[Opening]]:
    """Every `open_task(...)` call in the handlers: the task code, owner, priority, due."""
    by_handler = _event_handlers()
    found: dict[str, list[Opening]] = {}
    for module in (*_handler_modules(), *_domain_modules()):
        tree = ast.parse(textwrap.dedent(inspect.getsource(module)))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef):
                continue
            for call in ast.walk(function):
                if not (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "open_task"
                    and len(call.args) >= 2
                ):
                    continue
                code = _attribute_value(call.args[0], TaskCode)
                if code is None:
                    continue
                owner = _attribute_value(call.args[1], tasks.Owner) or (
                    f"`{ast.unparse(call.args[1])}`"
                )
                keywords = {k.arg: k.value for k in call.keywords if k.arg}
                priority_node = keywords.get("priority")
                priority = (
                    "routine"
                    if priority_node is None
                    else _attribute_value(priority_node, str) or f"`{ast.unparse(priority_node)}`"
                )
                due = _due_text(call.args[2] if len(call.args) > 2 else keywords.get("due"))
                where = f"{module.__name__}.{function.name}"
                found.setdefault(code, []).append(
                    Opening(where, by_handler.get(function.name, ()), owner, priority, due)
                )
    return found


def _domain_modules() -> tuple[ModuleType, ...]:
    """Domain modules outside the handlers that open tasks (deviation reviews)."""
    import importlib

    modules = []
    for name in ("workflow.deviations",):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            continue
    return tuple(modules)


def _task_docs() -> tuple[TaskDoc, ...]:
    openings = _openings()
    codes = [value for name, value in vars(TaskCode).items() if name.isupper()]
    return tuple(
        TaskDoc(code, DESCRIPTIONS.get(code, code), tuple(openings.get(code, ()))) for code in codes
    )


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds < 2 * 86400 and seconds % 3600 == 0 and seconds >= 3600:
        hours = seconds // 3600
        return f"{hours} hour{'s' if hours != 1 else ''}"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0 and seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


def _policy_docs() -> tuple[PolicyDoc, ...]:
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(policy.CarePolicy).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# ").strip())
            continue
        match = re.match(r"^(\w+)\s*:", stripped)
        if match:
            comments[match.group(1)] = " ".join(pending)
        pending = [] if stripped else pending
    docs = []
    for field in fields(policy.CarePolicy):
        default = getattr(policy.DEFAULT_POLICY, field.name)
        shown = _duration(default) if isinstance(default, timedelta) else str(default)
        docs.append(PolicyDoc(field.name, shown, comments.get(field.name, "")))
    return tuple(docs)


def _event_docs() -> tuple[tuple[str, str, str], ...]:
    base = _first_paragraph(EVENT_MODELS[next(iter(EVENT_MODELS))].__mro__[1].__doc__)
    out = []
    for event_type, model in EVENT_MODELS.items():
        says = _first_paragraph(model.__doc__)
        out.append((event_type, TRIGGERS.get(event_type, "—"), "" if says == base else says))
    return tuple(out)


def _switch_meanings() -> dict[str, str]:
    """Each switch of `PathwayRelease`, in the words of the comment above it."""
    meanings: dict[str, str] = {}
    comment: list[str] = []
    for line in inspect.getsource(PathwayRelease).splitlines():
        text = line.strip()
        if text.startswith("#"):
            comment.append(text.lstrip("# "))
            continue
        name = text.split(":", 1)[0]
        if comment and name.isidentifier() and name != "version":
            meanings[name] = " ".join(comment)
        comment = []
    return meanings


def _release_docs() -> tuple[ReleaseDoc, ...]:
    meanings = _switch_meanings()
    docs: list[ReleaseDoc] = []
    previous: PathwayRelease | None = None
    for release in RELEASES.values():
        switches = tuple(
            (name, bool(getattr(release, name))) for name in meanings if hasattr(release, name)
        )
        changed = tuple(
            meanings[name]
            for name, on in switches
            if previous is None or on != bool(getattr(previous, name))
            if on or previous is not None
        )
        docs.append(ReleaseDoc(release.version, changed or ("the first release",), switches))
        previous = release
    return tuple(docs)


def protocol_document(release: str | None = None) -> ProtocolDocument:
    """The protocol as the code states it, for `release` (default: the current one). Every
    release shares the pathway, rules and tasks; what differs is the set of switches that
    say how that release applied them (workflow/releases.py). Raises UnknownPathwayVersion
    for a release this build does not know."""
    version = release_of(release).version if release else PATHWAY_VERSION
    transitions = tuple(_transitions())
    states = tuple(
        StateDoc(
            state,
            state in MAIN_LINE,
            STATE_MEANINGS.get(state, "(no description in the code yet)"),
        )
        for state in CLIENT_STATES
    )
    return ProtocolDocument(
        version,
        states,
        mermaid(),
        transitions,
        _event_docs(),
        _rule_docs(transitions),
        _task_docs(),
        _policy_docs(),
        _release_docs(),
    )


# --- Markdown ----------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "—"


def _releases_markdown(doc: ProtocolDocument) -> list[str]:
    out = ["", "## Pathway releases", ""]
    if doc.version != doc.current:
        out += [
            f"This document is for release {doc.version}, an earlier release: the states, "
            "transitions, rules and tasks below are the shared core every release runs; the "
            f"switches of {doc.version} (below) say how it applied them. Histories it "
            "recorded are verified under those switches.",
            "",
        ]
    out += ["| release | what changed |", "|---|---|"]
    for release in doc.releases:
        mark = " (this document)" if release.version == doc.version else ""
        out.append(f"| {release.version}{mark} | {_cell(' '.join(release.changes))} |")
    selected = next((r for r in doc.releases if r.version == doc.version), None)
    if selected is not None:
        out += ["", f"Switches of release {doc.version}:", ""]
        out += [f"- `{name}`: {'on' if on else 'off'}" for name, on in selected.switches]
    return out


def protocol_markdown(document: ProtocolDocument | None = None) -> str:
    doc = document or protocol_document()
    out: list[str] = [
        f"# KAP care pathway — protocol, pathway version {doc.version}",
        "",
        "Generated from kapflow's code (`kapflow protocol`); do not edit by hand. Every "
        "transition, rule, task and default below is what the engine runs.",
        "",
        "## States",
        "",
        "| state | main line | meaning |",
        "|---|---|---|",
    ]
    out += [
        f"| `{s.id}` | {'yes' if s.on_main_line else ''} | {_cell(s.meaning)} |" for s in doc.states
    ]
    out += _releases_markdown(doc)
    out += ["", "## Diagram", "", "```mermaid", doc.mermaid.rstrip(), "```", ""]
    out += ["## Events and transitions", ""]
    out += [
        "Each event type triggers one machine event. From each state it may move the client "
        "(or leave the state as it is: *stays*), when its guards hold, after its checks. A "
        "check that fails names its rule: a fact of care that breaks a protocol rule is "
        "recorded as a deviation; a contradiction of settled facts is rejected.",
        "",
    ]
    for event_type, machine_event, says in doc.event_types:
        out.append(f"### `{event_type}`")
        out.append("")
        if says:
            out += [says, ""]
        rows = transition_rows(doc, machine_event)
        if not rows:
            out += ["No transition: not recorded by the pathway.", ""]
            continue
        out += ["| from | to | when | checks |", "|---|---|---|---|"]
        for source, target, when, checks in rows:
            to = "*stays*" if target == "stays" else f"`{target}`"
            out.append(f"| {_cell(source)} | {to} | {_cell(when)} | {_cell(checks)} |")
        out.append("")
    out += ["## Rules", ""]
    for rule in doc.rules:
        out += [f"### {rule.id}", ""]
        for sentence in rule.seed:
            out.append(f"> Seed: {sentence}")
        if rule.seed:
            out.append("")
        if rule.checks:
            out.append("Checked by:")
            out += [f"- `{c.name}`: {c.says or '(no docstring)'}" for c in rule.checks]
            out.append("")
        if rule.transitions:
            out.append("Applied on:")
            out += [f"- {where}" for where in rule.transitions]
            out.append("")
        if rule.also:
            out.append("Also in:")
            out += [f"- `{m.where}`: {m.text}" for m in rule.also]
            out.append("")
    out += [
        "## Follow-up tasks",
        "",
        "| code | what | opened by | owner | priority | due |",
        "|---|---|---|---|---|---|",
    ]
    for task in doc.tasks:
        if not task.openings:
            out.append(f"| `{task.code}` | {_cell(task.description)} | — | — | — | — |")
        for opening in task.openings:
            by = ", ".join(f"`{t}`" for t in opening.event_types) or f"`{opening.where}`"
            out.append(
                f"| `{task.code}` | {_cell(task.description)} | {by} | {_cell(opening.owner)} "
                f"| {_cell(opening.priority)} | {_cell(opening.due)} |"
            )
    out += ["", "## Policy defaults", "", "| setting | default | why |", "|---|---|---|"]
    out += [f"| `{p.name}` | {p.default} | {_cell(p.why)} |" for p in doc.policy]
    out.append("")
    return "\n".join(out)
