"""The protocol document is generated from the code, so clinicians sign off what the engine
runs: every state, event type, rule, task and default is in it, without anyone editing it."""

from __future__ import annotations

from dataclasses import fields

import pytest
from test_cli import kapflow

from events import EVENT_TYPES
from kapflow.entrypoints.http.protocol_page import render_protocol
from workflow.policy import CarePolicy
from workflow.protocol import protocol_document, protocol_markdown
from workflow.states.pathway import CLIENT_STATES, PATHWAY_VERSION
from workflow.tasks import TaskCode

SPEC_RULES = [f"R{n}" for n in range(1, 13)]  # SPEC §2
TASK_CODES = [value for name, value in vars(TaskCode).items() if name.isupper()]


@pytest.fixture(scope="module")
def renderings() -> dict[str, str]:
    document = protocol_document()
    return {"markdown": protocol_markdown(document), "html": render_protocol(document)}


@pytest.mark.parametrize("rendering", ["markdown", "html"])
def test_every_state_event_type_task_and_default_is_in_the_document(
    renderings: dict[str, str], rendering: str
) -> None:
    text = renderings[rendering]
    assert PATHWAY_VERSION in text
    missing = [
        name
        for name in (
            *CLIENT_STATES,
            *EVENT_TYPES,
            *TASK_CODES,
            *(field.name for field in fields(CarePolicy)),
        )
        if name not in text
    ]
    assert not missing, missing
    assert "stateDiagram-v2" in text  # the Mermaid diagram, or its text under the SVG


def test_every_rule_r1_to_r12_is_documented_with_the_seed_sentence_it_comes_from() -> None:
    rules = {rule.id: rule for rule in protocol_document().rules}
    assert [rule_id for rule_id in SPEC_RULES if rule_id not in rules] == []
    assert [rule_id for rule_id in SPEC_RULES if not rules[rule_id].seed] == []
    # The dosing-safety rules name the checks and the transitions that apply them.
    for rule_id in ("R5", "R6", "R7", "R8", "R9"):
        assert rules[rule_id].checks and rules[rule_id].transitions, rule_id
        assert any("clinician.dosing_started" in where for where in rules[rule_id].transitions)


def test_the_seed_sentence_quoted_by_a_rule_check_is_the_one_the_document_shows() -> None:
    from workflow.states.rules import r1_adult

    quoted = (r1_adult.__doc__ or "").removeprefix("Seed:").strip()
    rules = {rule.id: rule for rule in protocol_document().rules}
    assert quoted in rules["R1"].seed


def test_every_task_in_the_catalogue_says_who_owns_it_how_urgent_and_when_due() -> None:
    tasks = {task.code: task for task in protocol_document().tasks}
    assert sorted(tasks) == sorted(TASK_CODES)
    undocumented = [code for code, task in tasks.items() if not task.openings]
    assert not undocumented, f"opened nowhere the document can find: {undocumented}"
    notify = tasks["notify-prescriber-adverse-event"].openings[0]
    assert (notify.owner, notify.priority) == ("prescriber_liaison", "urgent")
    assert "adverse_event_notification_within" in notify.due


def test_the_policy_defaults_are_shown_in_words_with_their_reasons() -> None:
    policy = {setting.name: setting for setting in protocol_document().policy}
    assert policy["assessment_booking_within"].default == "2 days"
    assert policy["adverse_event_notification_within"].default == "1 hour"
    assert "Joyous" in policy["subscription_period"].why


def test_kapflow_protocol_prints_the_markdown_document() -> None:
    printed = kapflow("protocol").stdout
    assert printed.startswith("# KAP care pathway — protocol")
    assert "## Rules" in printed and "### R12" in printed


def test_the_protocol_of_every_release_lists_the_releases_and_what_each_changed() -> None:
    from workflow.releases import RELEASES

    for version in RELEASES:
        text = protocol_markdown(protocol_document(version))
        assert text.startswith(f"# KAP care pathway — protocol, pathway version {version}")
        assert f"| {version} (this document) |" in text
        assert all(f"| {other}" in text for other in RELEASES)
    earlier = protocol_markdown(protocol_document("2026.11.5"))
    assert "an earlier release" in earlier and "- `derives_from_facts`: off" in earlier
    assert "- `derives_from_facts`: on" in protocol_markdown(protocol_document())


def test_the_html_page_is_the_markdown_document_rendered() -> None:
    document = protocol_document("2026.11.4")
    html = render_protocol(document)
    assert '<h3 id="R12">' in html and '<h2 id="pathway-releases">' in html
    assert "<table>" in html and '<th scope="col">' in html
    assert "```" not in html  # the Markdown is rendered, not shown


def test_kapflow_protocol_prints_an_earlier_release_and_refuses_an_unknown_one() -> None:
    printed = kapflow("protocol", "--release", "2026.11.3").stdout
    assert printed.startswith("# KAP care pathway — protocol, pathway version 2026.11.3")
    refused = kapflow("protocol", "--release", "1999.1.1", check=False)
    assert refused.returncode == 2 and "known: 2026.11.3" in refused.stderr
