"""Timing and money defaults of the care pathway, in one place.

Every due time is computed from the triggering event's own `time`, never the wall clock.
Changing a value here changes outcomes, so it must come with a new `PATHWAY_VERSION`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class CarePolicy:
    # Scheduling: an inquiry's assessment should be booked within 2 days.
    assessment_booking_within: timedelta = timedelta(days=2)
    # Referral to Journey Clinical / Joyous after a positive assessment.
    medical_referral_within: timedelta = timedelta(days=7)
    insurance_verification_within: timedelta = timedelta(days=5)
    preparation_booking_within: timedelta = timedelta(days=7)
    dosing_booking_within: timedelta = timedelta(days=14)
    # Seed: a trusted person must drive the client home; confirm a day before the session.
    chaperone_confirmation_before_dosing: timedelta = timedelta(hours=24)
    # Seed: no alcohol or non-prescribed substances 24 h before and after dosing.
    abstinence_window: timedelta = timedelta(hours=24)
    # Seed: integration sessions follow each dosing experience.
    integration_booking_within: timedelta = timedelta(days=7)
    # Seed: notify therapist and medical provider immediately of any concerning reaction.
    adverse_event_notification_within: timedelta = timedelta(hours=1)
    # Seed: released only to the chaperone; a missed release is followed up the same hour.
    safety_follow_up_within: timedelta = timedelta(hours=1)
    hold_review_within: timedelta = timedelta(days=1)
    # SPEC §3: a protocol deviation is reviewed by a person; stat ones (R3–R5, dosing on
    # hold) the same half-day.
    deviation_review_within: timedelta = timedelta(days=1)
    stat_deviation_review_within: timedelta = timedelta(hours=4)
    clinical_review_within: timedelta = timedelta(days=3)
    # Issue 18: an emergency (break-glass) read of a record is reviewed by a clinician the
    # next day, while the reason is still fresh.
    break_glass_review_within: timedelta = timedelta(days=1)
    reschedule_within: timedelta = timedelta(days=2)
    renewal_within: timedelta = timedelta(days=7)
    billing_within: timedelta = timedelta(days=30)
    # Early events are held this long (event time) before being rejected as premature.
    parking_window: timedelta = timedelta(hours=72)
    # Escalation: an overdue task has its priority raised and a supervisor task opened,
    # which must be picked up within this time (its own deadline only raises priority).
    supervisor_response_within: timedelta = timedelta(days=1)
    # Expiries: a renewal task opens this long before a medical clearance expires.
    clearance_renewal_notice: timedelta = timedelta(days=14)
    # Seed: Joyous is $129/month; a month without renewal is treated as a lapse (R9).
    subscription_period: timedelta = timedelta(days=30)
    # A client with no activity this long (system events aside) gets a follow-up task.
    inactivity_follow_up_after: timedelta = timedelta(days=90)
    # Seed: 1–3 preparatory sessions; a fourth raises a clinical review (R6).
    max_preparation_sessions: int = 3
    # Repeated no-shows: this many missed appointments raise a clinical review.
    no_show_review_threshold: int = 2
    # Seed: the $355 Journey package covers medication for two dosing sessions (R9).
    high_dose_default_doses: int = 2
    # Seed (R12): first hour may go to insurance; the rest is $150/hour, pro-rated per minute.
    insurance_covered_minutes: int = 60
    private_rate_usd_per_hour: Decimal = Decimal("150")


DEFAULT_POLICY = CarePolicy()
