"""kapflow: event-driven care-workflow service for Ketamine-Assisted Psychotherapy."""

__version__ = "0.1.0"
