"""What each event does after its transition: facts, tasks opened and closed."""

from collections.abc import Callable

from workflow.handlers import clinician, operations, prescriber, scheduling, system
from workflow.handlers.effects import Effects, TaskEffect

HANDLERS: dict[str, Callable[[Effects], None]] = {
    **scheduling.HANDLERS,
    **prescriber.HANDLERS,
    **clinician.HANDLERS,
    **operations.HANDLERS,
    **system.HANDLERS,
}

__all__ = ["HANDLERS", "Effects", "TaskEffect"]
