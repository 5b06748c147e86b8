"""The programme's rules R1–R12, each in its allowed and its refused direction."""

from __future__ import annotations

from builders import Journey
from conftest import Clinic


def codes(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [reason.code for reason in result.reasons]


# R1–R4: eligibility at assessment ---------------------------------------------------------


def test_adult_in_therapy_without_contraindications_is_assessed(clinic: Clinic) -> None:
    j = Journey()
    result = clinic.last(*j.to_assessed())
    assert (result.outcome, result.state) == ("accepted", "assessed")
    assert "refer-medical-evaluation" in clinic.open_codes()


def test_client_under_18_is_ineligible_under_r1(clinic: Clinic) -> None:
    j = Journey()
    result = clinic.last(j.inquiry(), j.assessment(age=17))
    assert (result.outcome, result.state) == ("accepted", "ineligible")
    assert clinic.client().reasons == ["R1"]


def test_client_of_exactly_18_is_eligible(clinic: Clinic) -> None:
    j = Journey()
    assert clinic.last(j.inquiry(), j.assessment(age=18)).state == "assessed"


def test_client_without_ongoing_therapy_is_ineligible_under_r2(clinic: Clinic) -> None:
    j = Journey()
    assert clinic.last(j.inquiry(), j.assessment(therapy="none")).state == "ineligible"
    assert clinic.client().reasons == ["R2"]


def test_client_with_an_external_therapist_is_eligible(clinic: Clinic) -> None:
    j = Journey()
    assert clinic.last(j.inquiry(), j.assessment(therapy="external_provider")).state == "assessed"


def test_history_of_psychosis_mania_or_schizophrenia_is_ineligible_under_r3(
    clinic: Clinic,
) -> None:
    for n, flag in enumerate(("psychosis", "mania", "schizophrenia")):
        j = Journey(f"c-{n}")
        clinic.send(j.inquiry(), j.assessment(**{flag: True}))
        assert clinic.client(f"c-{n}").reasons == ["R3"]


def test_maoi_stimulant_or_high_dose_benzodiazepine_is_ineligible_under_r4(clinic: Clinic) -> None:
    for n, flag in enumerate(("maoi", "stimulant", "benzodiazepine")):
        j = Journey(f"c-{n}")
        clinic.send(j.inquiry(), j.assessment(**{flag: True}))
        assert clinic.client(f"c-{n}").state == "ineligible"
        assert clinic.client(f"c-{n}").reasons == ["R4"]


def test_every_broken_eligibility_rule_is_named(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(j.inquiry(), j.assessment(age=16, therapy="none", mania=True, maoi=True))
    assert clinic.client().reasons == ["R1", "R2", "R3", "R4"]


def test_ineligible_client_reopens_only_through_a_new_assessment_request(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(j.inquiry(), j.assessment(age=17))
    assert codes(clinic.last(j.assessment(age=18))) == ["ILLEGAL_TRANSITION"]
    assert clinic.last(j.reassessment()).state == "inquiry"
    assert "schedule-assessment" in clinic.open_codes()
    assert clinic.last(j.assessment(age=18)).state == "assessed"
    assert clinic.client().reasons == []


# R5: independent medical clearance -------------------------------------------------------


def test_journey_clinical_clears_for_the_high_dose_pathway(clinic: Clinic) -> None:
    j = Journey()
    assert clinic.last(*j.to_cleared("journey_clinical")).state == "cleared"
    client = clinic.client()
    assert (client.pathway, client.doses_remaining) == ("high_dose", 2)


def test_joyous_clears_for_the_low_dose_pathway_with_a_subscription(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_cleared("joyous"))
    client = clinic.client()
    assert (client.pathway, client.subscription_active) == ("low_dose", True)


def test_prescriber_pathway_mismatch_is_rejected_under_r5(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_assessed())
    result = clinic.last(j.evaluation("joyous", pathway="high_dose"))
    assert (result.outcome, codes(result)) == ("rejected", ["R5"])
    assert clinic.client().state == "assessed"


def test_prescriber_not_clearing_makes_the_client_ineligible(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_assessed())
    assert clinic.last(j.evaluation(outcome="not_cleared")).state == "ineligible"
    assert clinic.client().reasons == ["R5"]


def test_a_dosing_without_medical_clearance_is_recorded_as_a_stat_deviation(
    clinic: Clinic,
) -> None:
    j = Journey()
    clinic.send(*j.to_assessed())
    # The client was dosed: kapflow records it (state follows what happened) and flags R5.
    result = clinic.last(j.dosing_started("s-1"))
    assert (result.outcome, result.state) == ("deviation", "dosed")
    assert "R5" in codes(result)
    [review] = clinic.open_tasks("review-protocol-deviation")
    assert review["priority"] == "stat" and review["owner"] == "clinician"
    assert "abstinence-reminder-after-dosing" in clinic.open_codes()


def test_no_dosing_after_the_clearance_expired(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(valid_until="2026-01-06"))
    j.now = j.now.replace(month=3)
    result = clinic.last(j.dosing_started("s-1"))
    assert (result.outcome, codes(result)) == ("deviation", ["R5"])


def test_dosing_on_another_pathway_than_cleared_is_rejected(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared("journey_clinical"))
    result = clinic.last(j.dosing_started("s-1", pathway="low_dose"))
    assert codes(result) == ["R5"]


def test_revoked_clearance_holds_the_client_and_blocks_dosing(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared())
    assert clinic.last(j.revocation()).state == "on_hold"
    assert clinic.client().reasons == ["R5"]
    assert clinic.last(j.release()).state == "prepared"
    assert codes(clinic.last(j.dosing_started("s-1"))) == ["R5"]


def test_only_the_clearing_prescriber_can_renew(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared("journey_clinical"))
    assert codes(clinic.last(j.renewal("joyous"))) == ["R5"]


# R6: preparation ------------------------------------------------------------------------------


def test_a_dosing_without_a_preparatory_session_is_a_deviation(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_cleared())
    result = clinic.last(j.dosing_started("s-1"))
    assert (result.outcome, codes(result), result.state) == ("deviation", ["R6"], "dosed")
    [review] = clinic.open_tasks("review-protocol-deviation")
    assert review["priority"] == "urgent"


def test_one_preparatory_session_marked_ready_allows_dosing(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared())
    assert clinic.last(j.dosing_started("s-1")).state == "dosed"


def test_preparation_not_yet_ready_keeps_the_client_cleared(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_cleared())
    assert clinic.last(j.preparation(1, ready=False)).state == "cleared"
    assert "schedule-preparation" in clinic.open_codes()


def test_a_fourth_preparatory_session_is_accepted_but_reviewed(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_cleared())
    results = clinic.send(*(j.preparation(n, ready=False) for n in (1, 2, 3)))
    assert "clinical-review" not in clinic.open_codes()
    result = clinic.last(j.preparation(4, ready=True))
    assert [r.outcome for r in results] + [result.outcome] == ["accepted"] * 4
    assert result.state == "prepared"
    assert "clinical-review" in clinic.open_codes()


# R7: chaperone and abstinence -------------------------------------------------------------


def test_a_dosing_without_a_chaperone_is_recorded_as_an_r7_deviation(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), j.booking("dosing", "d-1"))
    result = clinic.last(j.dosing_started("s-1", chaperone=False))
    assert (result.outcome, codes(result), result.state) == ("deviation", ["R7"], "dosed")
    # The usual duties still open; the dosing task is done.
    assert "abstinence-reminder-after-dosing" in clinic.open_codes()
    assert "schedule-dosing" not in clinic.open_codes()
    [review] = clinic.open_tasks("review-protocol-deviation")
    assert "R7" in review["note"]


def test_a_dosing_with_a_chaperone_is_accepted_without_review(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared())
    assert clinic.last(j.dosing_started("s-1")).outcome == "accepted"
    assert clinic.open_tasks("review-protocol-deviation") == []


def test_dosing_without_abstinence_attestation_is_rejected_under_r7(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared())
    result = clinic.last(j.dosing_started("s-1", abstinence=False))
    assert (result.outcome, codes(result)) == ("deviation", ["R7"])


def test_booking_a_dosing_asks_for_a_chaperone_until_one_is_confirmed(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), j.booking("dosing", "d-1"))
    assert {"confirm-chaperone", "abstinence-reminder-before-dosing"} <= set(clinic.open_codes())
    clinic.send(j.chaperone("d-1"))
    assert "confirm-chaperone" not in clinic.open_codes()


def test_dosing_opens_the_after_dosing_abstinence_reminder(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), j.dosing_started("s-1"))
    assert "abstinence-reminder-after-dosing" in clinic.open_codes()


# R8: integration after each dosing ---------------------------------------------------------


def test_second_dose_needs_integration_first(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), *j.dosing("s-1"))
    result = clinic.last(j.dosing_started("s-2"))
    assert (result.outcome, codes(result), result.state) == ("deviation", ["R8"], "dosed")
    clinic.send(j.integration("s-2"))
    assert clinic.last(j.dosing_started("s-3")).outcome == "deviation"  # s-1 still owed


def test_a_second_dose_after_integration_is_accepted(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), *j.dosing("s-1"), j.integration("s-1"))
    result = clinic.last(j.dosing_started("s-2"))
    assert (result.outcome, result.state) == ("accepted", "dosed")


def test_dosing_opens_an_integration_task_that_integration_closes(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), *j.dosing("s-1"))
    assert "schedule-integration" in clinic.open_codes()
    assert clinic.last(j.integration("s-1")).state == "integrating"
    assert "schedule-integration" not in clinic.open_codes()


def test_an_integration_of_a_dosing_not_yet_heard_of_is_parked(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), *j.dosing("s-1"))
    result = clinic.last(j.integration("s-0"))
    assert (result.outcome, codes(result)) == ("parked", ["SESSION_NOT_STARTED"])


def test_completing_a_session_not_started_while_another_runs_waits_for_its_start(
    clinic: Clinic,
) -> None:
    """Publishers cannot order their messages (2026.12.1): the start of s-2 may still be on
    its way, so its end waits for it rather than being refused; past the parking window it
    is recorded as a deviation for a person (never a silent loss of its R11/R12 duties)."""
    j = Journey()
    clinic.send(*j.to_prepared(), j.dosing_started("s-1"))
    result = clinic.last(j.dosing_completed("s-2"))
    assert (result.outcome, codes(result)) == ("parked", ["SESSION_NOT_STARTED"])


def test_course_cannot_close_while_integration_is_owed(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), *j.dosing("s-1"))
    result = clinic.last(j.course_completed())
    assert (result.outcome, codes(result), result.state) == ("deviation", ["R8"], "completed")


def test_a_course_closed_after_integration_is_accepted(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), *j.dosing("s-1"), j.integration("s-1"))
    assert clinic.last(j.course_completed()).outcome == "accepted"


# R9: medication covered by the package or the subscription ---------------------------------


def test_high_dose_package_covers_two_dosings_then_needs_renewal(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), *j.dosing("s-1"), j.integration("s-1"), *j.dosing("s-2"))
    assert "renew-high-dose-package" in clinic.open_codes()
    clinic.send(j.integration("s-2"))
    result = clinic.last(j.dosing_started("s-3"))
    assert (result.outcome, codes(result)) == ("deviation", ["R9"])


def test_a_renewed_package_covers_the_third_dosing(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), *j.dosing("s-1"), j.integration("s-1"), *j.dosing("s-2"))
    clinic.send(j.integration("s-2"), j.renewal())
    assert "renew-high-dose-package" not in clinic.open_codes()
    result = clinic.last(j.dosing_started("s-3"))
    assert (result.outcome, result.state) == ("accepted", "dosed")


def test_low_dose_dosing_needs_an_active_subscription(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared("joyous"))
    assert clinic.last(j.lapse()).state == "on_hold"
    assert clinic.client().reasons == ["R9"]
    clinic.send(j.release())
    result = clinic.last(j.dosing_started("s-1", pathway="low_dose"))
    assert (result.outcome, codes(result)) == ("deviation", ["R9"])


def test_a_subscription_renewal_releases_a_hold_placed_only_for_its_lapse(
    clinic: Clinic,
) -> None:
    j = Journey()
    clinic.send(*j.to_prepared("joyous"), j.lapse())
    assert clinic.last(j.renewal("joyous")).state == "prepared"
    result = clinic.last(j.dosing_started("s-1", pathway="low_dose"))
    assert (result.outcome, result.state) == ("accepted", "dosed")


def test_a_high_dose_client_has_no_subscription_to_lapse(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared("journey_clinical"))
    assert codes(clinic.last(j.lapse())) == ["R9"]


# R10: adverse events ------------------------------------------------------------------------


def test_any_adverse_event_raises_an_urgent_prescriber_notification(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), *j.dosing("s-1"))
    result = clinic.last(j.adverse_event("mild"))
    assert result.state == "dosed"
    urgent = [
        t
        for t in clinic.client().open_tasks.values()
        if t.code == "notify-prescriber-adverse-event"
    ]
    assert [t.priority for t in urgent] == ["urgent"]


def test_severe_adverse_event_holds_the_client_until_released(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), *j.dosing("s-1"))
    assert clinic.last(j.adverse_event("severe")).state == "on_hold"
    assert clinic.client().reasons == ["R10"]
    assert "notify-prescriber-adverse-event" in clinic.open_codes()
    assert clinic.last(j.release()).state == "dosed"  # back where the client was


def test_a_dosing_during_a_hold_is_a_stat_deviation_and_the_hold_stays(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), j.hold())
    result = clinic.last(j.dosing_started("s-1"))
    assert (result.outcome, codes(result), result.state) == ("deviation", ["ON_HOLD"], "on_hold")
    [review] = clinic.open_tasks("review-protocol-deviation")
    assert review["priority"] == "stat"
    assert clinic.last(j.release()).state == "dosed"  # the client was dosed meanwhile


def test_hold_release_returns_each_state_it_was_placed_from(clinic: Clinic) -> None:
    for n, stretch in enumerate(("to_assessed", "to_cleared", "to_prepared")):
        j = Journey(f"c-{n}")
        before = clinic.last(*getattr(j, stretch)()).state
        assert clinic.last(j.hold()).state == "on_hold"
        assert clinic.last(j.hold()).state == "on_hold"  # a second hold is recorded too
        assert clinic.last(j.release()).state == before


# R11: release to the chaperone -----------------------------------------------------------


def test_dosing_without_release_to_chaperone_raises_an_urgent_safety_task(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(
        *j.to_prepared(), j.dosing_started("s-1"), j.dosing_completed("s-1", released=False)
    )
    safety = [
        t for t in clinic.client().open_tasks.values() if t.code == "safety-follow-up-release"
    ]
    assert [(t.priority, t.owner) for t in safety] == [("urgent", "clinician")]


def test_dosing_released_to_chaperone_raises_no_safety_task(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), *j.dosing("s-1"))
    assert "safety-follow-up-release" not in clinic.open_codes()


# R12: billing ---------------------------------------------------------------------------------


def test_time_beyond_the_first_hour_is_billed_privately_per_minute(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), j.dosing_started("s-1"), j.dosing_completed("s-1", duration=150))
    bills = [t for t in clinic.client().open_tasks.values() if t.code == "bill-private-time"]
    assert [b.amount_usd for b in bills] == ["225.00"]  # 90 min at $150/h
    assert "Advance Care" in (bills[0].note or "") and "CareCredit" in (bills[0].note or "")


def test_odd_minutes_are_pro_rated(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(
        *j.to_prepared(),
        j.dosing_started("s-1"),
        j.dosing_completed("s-1", duration=121, active=45),
    )
    bills = [t for t in clinic.client().open_tasks.values() if t.code == "bill-private-time"]
    assert [b.amount_usd for b in bills] == ["152.50"]  # 61 min × $2.50


def test_a_one_hour_session_bills_nothing_privately(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(
        *j.to_prepared(), j.dosing_started("s-1"), j.dosing_completed("s-1", duration=60, active=45)
    )
    assert "bill-private-time" not in clinic.open_codes()


def test_low_dose_sessions_are_not_billed_by_the_hour(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(
        *j.to_prepared("joyous"),
        j.dosing_started("s-1", pathway="low_dose"),
        j.dosing_completed("s-1", duration=120),
    )
    assert "bill-private-time" not in clinic.open_codes()


def test_insurance_used_at_assessment_opens_a_benefits_check(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_assessed())
    assert "verify-insurance-benefits" in clinic.open_codes()
