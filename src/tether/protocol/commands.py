"""The command lifecycle as a transition table: queued → delivered → running → a final state.

No I/O. Both programs (and the store) apply transitions only through :func:`transition`, so the
table below is the one place that says which moves are legal.

    queued ──deliver──▶ delivered ──start──▶ running ──succeed──▶ succeeded
      │                    │                    └──────fail─────▶ failed
      │                    ├──fail (refused)──────────────────────▶ failed
      ├──expire / cancel   ├──expire / cancel   ├──expire (deadline passed while running)
      ▼                    ▼                    ▼
    expired/cancelled   expired/cancelled     expired

A delivered command whose link dropped before the agent acknowledged it goes back to queued
(``requeue``): delivery is at-least-once; the agent executes an id at most once. Three more
moves follow from that: ``deliver`` again leaves a delivered command delivered (redelivery after
a relink), ``start`` may come while still queued (an agent on a polling tier starts what it
fetched in the same exchange), and ``succeed`` may come straight after ``deliver`` (an instant
handler reports only its outcome). Because a requeue can cross the agent's report on the wire,
``succeed`` and ``fail`` are also taken while queued: the outcome of a command the agent did run
must never be refused (else it would be redelivered for ever and its result lost).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

__all__ = [
    "COMMAND_KINDS",
    "DIAGNOSTIC_COMMAND_KINDS",
    "FINAL_STATES",
    "TRANSITIONS",
    "CommandEvent",
    "CommandState",
    "IllegalTransition",
    "is_final",
    "transition",
]


#: The command kinds an agent runs: its handler table has exactly these (the cloud refuses others).
COMMAND_KINDS: frozenset[str] = frozenset(
    {"ping", "metrics", "reboot", "shutdown", "restart-service", "set-config"}
)

#: The kinds that only look: they change nothing on the gateway, so a support role may send them.
DIAGNOSTIC_COMMAND_KINDS: frozenset[str] = frozenset({"ping", "metrics"})


class CommandState(enum.StrEnum):
    QUEUED = "queued"
    DELIVERED = "delivered"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class CommandEvent(enum.StrEnum):
    DELIVER = "deliver"  # the cloud sent it on a link
    REQUEUE = "requeue"  # the link dropped before the agent took it
    START = "start"  # the agent began executing it
    SUCCEED = "succeed"
    FAIL = "fail"
    EXPIRE = "expire"  # its deadline passed
    CANCEL = "cancel"  # an operator withdrew it


S, E = CommandState, CommandEvent

TRANSITIONS: Mapping[tuple[CommandState, CommandEvent], CommandState] = {
    (S.QUEUED, E.DELIVER): S.DELIVERED,
    (S.QUEUED, E.EXPIRE): S.EXPIRED,
    (S.QUEUED, E.CANCEL): S.CANCELLED,
    # An agent on a polling tier may start a command it fetched in the same exchange.
    (S.QUEUED, E.START): S.RUNNING,
    (S.QUEUED, E.SUCCEED): S.SUCCEEDED,  # the report crossed a requeue
    (S.QUEUED, E.FAIL): S.FAILED,
    (S.DELIVERED, E.REQUEUE): S.QUEUED,
    (S.DELIVERED, E.DELIVER): S.DELIVERED,  # redelivery after a relink is harmless
    (S.DELIVERED, E.START): S.RUNNING,
    (S.DELIVERED, E.SUCCEED): S.SUCCEEDED,  # instant handlers may report only the outcome
    (S.DELIVERED, E.FAIL): S.FAILED,
    (S.DELIVERED, E.EXPIRE): S.EXPIRED,
    (S.DELIVERED, E.CANCEL): S.CANCELLED,
    (S.RUNNING, E.SUCCEED): S.SUCCEEDED,
    (S.RUNNING, E.FAIL): S.FAILED,
    (S.RUNNING, E.EXPIRE): S.EXPIRED,
}
del S, E

FINAL_STATES: frozenset[CommandState] = frozenset(
    {CommandState.SUCCEEDED, CommandState.FAILED, CommandState.EXPIRED, CommandState.CANCELLED}
)


class IllegalTransition(ValueError):
    """An event that the lifecycle table does not allow in the command's current state."""

    def __init__(self, state: CommandState, event: CommandEvent) -> None:
        super().__init__(f"command in state {state.value!r} cannot take event {event.value!r}")
        self.state = state
        self.event = event


def is_final(state: CommandState) -> bool:
    return state in FINAL_STATES


def transition(state: CommandState, event: CommandEvent) -> CommandState:
    """Return the state after *event*, or raise :class:`IllegalTransition`."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None
