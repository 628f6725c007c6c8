"""The command lifecycle table: every pair walked, the documented diagram, random walks."""

from __future__ import annotations

import itertools
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tether.protocol import commands
from tether.protocol.commands import (
    FINAL_STATES,
    TRANSITIONS,
    CommandEvent,
    CommandState,
    IllegalTransition,
    is_final,
    transition,
)

S, E = CommandState, CommandEvent

# The lifecycle as the module docstring draws and describes it, transcribed by hand: the
# table must say exactly this, no more and no less.
DOCUMENTED: dict[tuple[CommandState, CommandEvent], CommandState] = {
    # the diagram
    (S.QUEUED, E.DELIVER): S.DELIVERED,
    (S.DELIVERED, E.START): S.RUNNING,
    (S.RUNNING, E.SUCCEED): S.SUCCEEDED,
    (S.RUNNING, E.FAIL): S.FAILED,
    (S.DELIVERED, E.FAIL): S.FAILED,
    (S.QUEUED, E.EXPIRE): S.EXPIRED,
    (S.QUEUED, E.CANCEL): S.CANCELLED,
    (S.DELIVERED, E.EXPIRE): S.EXPIRED,
    (S.DELIVERED, E.CANCEL): S.CANCELLED,
    (S.RUNNING, E.EXPIRE): S.EXPIRED,
    # the prose under it
    (S.DELIVERED, E.REQUEUE): S.QUEUED,
    (S.DELIVERED, E.DELIVER): S.DELIVERED,
    (S.QUEUED, E.START): S.RUNNING,
    (S.DELIVERED, E.SUCCEED): S.SUCCEEDED,
    (S.QUEUED, E.SUCCEED): S.SUCCEEDED,
    (S.QUEUED, E.FAIL): S.FAILED,
}

ALL_PAIRS = list(itertools.product(CommandState, CommandEvent))
LEGAL = sorted(TRANSITIONS, key=str)
ILLEGAL = [pair for pair in ALL_PAIRS if pair not in TRANSITIONS]


@pytest.mark.parametrize(("state", "event"), LEGAL)
def test_every_legal_pair_gives_the_tables_state(state: CommandState, event: CommandEvent) -> None:
    assert transition(state, event) is TRANSITIONS[(state, event)]
    assert transition(state, event) is DOCUMENTED[(state, event)]


@pytest.mark.parametrize(("state", "event"), ILLEGAL)
def test_every_other_pair_raises(state: CommandState, event: CommandEvent) -> None:
    with pytest.raises(IllegalTransition) as caught:
        transition(state, event)
    assert caught.value.state is state
    assert caught.value.event is event
    assert state.value in str(caught.value)
    assert event.value in str(caught.value)


def test_legal_and_illegal_cover_every_pair_once() -> None:
    assert len(LEGAL) + len(ILLEGAL) == len(CommandState) * len(CommandEvent)
    assert len(LEGAL) == 16


def test_illegal_transition_is_a_value_error() -> None:
    # Callers validating input catch ValueError; the lifecycle error must be one.
    with pytest.raises(ValueError, match="cannot take event"):
        transition(S.SUCCEEDED, E.START)


@pytest.mark.parametrize("state", sorted(FINAL_STATES))
def test_final_states_accept_nothing(state: CommandState) -> None:
    assert is_final(state)
    for event in CommandEvent:
        with pytest.raises(IllegalTransition):
            transition(state, event)


def test_final_states_are_exactly_the_four_outcomes() -> None:
    assert {S.SUCCEEDED, S.FAILED, S.EXPIRED, S.CANCELLED} == FINAL_STATES
    assert [s for s in CommandState if not is_final(s)] == [S.QUEUED, S.DELIVERED, S.RUNNING]
    # A state is final exactly when no move leaves it.
    sources = {state for state, _ in TRANSITIONS}
    assert sources == set(CommandState) - FINAL_STATES


def test_table_matches_the_documented_lifecycle() -> None:
    assert dict(TRANSITIONS) == DOCUMENTED


def test_docstring_names_every_state_and_event() -> None:
    doc = commands.__doc__
    assert doc is not None
    for name in [*CommandState, *CommandEvent]:
        assert name.value in doc, f"{name.value!r} missing from the documented lifecycle"


def _reachable(start: CommandState) -> set[CommandState]:
    seen = {start}
    todo = deque([start])
    while todo:
        state = todo.popleft()
        for (source, _), target in TRANSITIONS.items():
            if source is state and target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_every_state_is_reachable_from_queued() -> None:
    assert _reachable(S.QUEUED) == set(CommandState)


@pytest.mark.parametrize("state", [S.QUEUED, S.DELIVERED, S.RUNNING])
def test_every_live_state_can_still_finish(state: CommandState) -> None:
    # No trap: whatever happened so far, some legal path ends the command.
    assert _reachable(state) & FINAL_STATES
    # ...and expiry ends it in one step from anywhere it is live.
    assert transition(state, E.EXPIRE) is S.EXPIRED


def test_running_cannot_go_back() -> None:
    # Once the agent started, the command is never re-queued nor re-delivered.
    assert _reachable(S.RUNNING) == {S.RUNNING, S.SUCCEEDED, S.FAILED, S.EXPIRED}


@settings(max_examples=300)
@given(st.lists(st.sampled_from(CommandEvent), max_size=40))
def test_random_event_sequences_follow_the_table(events: list[CommandEvent]) -> None:
    state = S.QUEUED
    for event in events:
        expected = TRANSITIONS.get((state, event))
        if expected is None:
            with pytest.raises(IllegalTransition):
                transition(state, event)
            continue
        assert not is_final(state)
        state = transition(state, event)
        assert state is expected
    assert state in _reachable(S.QUEUED)


class CommandLifecycle(RuleBasedStateMachine):
    """A command driven by arbitrary events; only legal moves change it."""

    def __init__(self) -> None:
        super().__init__()
        self.state = S.QUEUED
        self.path: list[tuple[CommandState, CommandEvent, CommandState]] = []
        self.finished_at: int | None = None

    @precondition(lambda self: not is_final(self.state))
    @rule(event=st.sampled_from(CommandEvent))
    def apply(self, event: CommandEvent) -> None:
        before = self.state
        if (before, event) not in DOCUMENTED:
            with pytest.raises(IllegalTransition):
                transition(before, event)
            return
        after = transition(before, event)
        assert DOCUMENTED[(before, event)] is after
        self.path.append((before, event, after))
        self.state = after
        if is_final(after):
            self.finished_at = len(self.path)

    @precondition(lambda self: is_final(self.state))
    @rule(event=st.sampled_from(CommandEvent))
    def poke_finished(self, event: CommandEvent) -> None:
        with pytest.raises(IllegalTransition):
            transition(self.state, event)

    @invariant()
    def path_is_legal_and_starts_queued(self) -> None:
        current = S.QUEUED
        for before, event, after in self.path:
            assert before is current
            assert TRANSITIONS[(before, event)] is after
            current = after
        assert current is self.state

    @invariant()
    def finishing_is_the_last_move(self) -> None:
        # A final state, once reached, is where the path ends.
        if self.finished_at is not None:
            assert self.finished_at == len(self.path)
            assert is_final(self.state)
        else:
            assert all(not is_final(after) for _, _, after in self.path)


TestCommandLifecycle = CommandLifecycle.TestCase
TestCommandLifecycle.settings = settings(max_examples=150, stateful_step_count=30)
