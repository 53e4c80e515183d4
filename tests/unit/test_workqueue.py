"""The work queue: one visit at a time per key, wake-ups during a visit coalesce into one more, the earliest
scheduled wake-up wins."""
from __future__ import annotations

import asyncio

from qfleet.workqueue import WorkQueue


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, timeout=10))


def test_a_waiting_key_is_handed_out_once_however_often_it_is_added() -> None:
    async def scenario():
        queue = WorkQueue()
        for _ in range(5):
            queue.add("a")
        queue.add("b")
        assert len(queue) == 2
        first, _, _ = await queue.get()
        second, _, _ = await queue.get()
        return first, second, len(queue)

    assert run(scenario()) == ("a", "b", 0)


def test_wakeups_during_a_visit_coalesce_into_one_more_visit_after_it() -> None:
    async def scenario():
        queue = WorkQueue()
        queue.add("a")
        key, _, _ = await queue.get()
        for _ in range(3):
            queue.add("a")  # the model's event, a child's event, a person's action: all during the visit
        assert len(queue) == 0  # not handed to a second worker while the first visits it
        queue.done(key)
        again, _, _ = await queue.get()
        queue.done(again)
        return again, len(queue)

    assert run(scenario()) == ("a", 0)


def test_a_scheduled_wakeup_comes_when_due_and_the_earliest_wins() -> None:
    async def scenario():
        clock = asyncio.get_running_loop().time
        queue = WorkQueue(clock=clock)
        start = clock()
        queue.add("a", start + 0.6)
        queue.add("a", start + 0.2)
        queue.add("a", start + 0.4)  # later than the one kept: ignored
        assert queue.scheduled == 1 and len(queue) == 0
        key, lag, cause = await queue.get()
        return key, clock() - start, lag, cause, queue.scheduled

    key, waited, lag, cause, scheduled = run(scenario())
    assert key == "a" and 0.2 <= waited < 0.5 and lag < 0.2 and cause == "scheduled" and scheduled == 0


def test_an_event_before_the_due_time_visits_now_and_drops_the_scheduled_wakeup() -> None:
    async def scenario():
        clock = asyncio.get_running_loop().time
        queue = WorkQueue(clock=clock)
        queue.add("a", clock() + 60)
        queue.add("a")
        key, _, cause = await queue.get()
        queue.done(key)
        return key, cause, queue.scheduled, len(queue)

    assert run(scenario()) == ("a", "event", 0, 0)


def test_workers_share_keys_but_never_one_key() -> None:
    async def scenario():
        queue = WorkQueue()
        visiting: set[str] = set()
        overlaps, visits = [], []

        async def worker():
            while True:
                key, _, _ = await queue.get()
                if key in visiting:
                    overlaps.append(key)
                visiting.add(key)
                visits.append(key)
                await asyncio.sleep(0.01)
                visiting.discard(key)
                queue.done(key)

        tasks = [asyncio.create_task(worker()) for _ in range(4)]
        for round_ in range(20):
            for key in ("a", "b", "c"):
                queue.add(key)
            await asyncio.sleep(0.003)
        await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        return overlaps, visits

    overlaps, visits = run(scenario())
    assert overlaps == [] and set(visits) == {"a", "b", "c"} and len(visits) < 60


def test_a_wakeup_during_a_visit_keeps_the_earliest_moment_and_its_cause() -> None:
    """Lag is measured from the earliest of the coalesced wake-ups, and named by it: a canary's analysis that came due
    during a visit and an event after it make one visit, late since the due time."""
    async def scenario():
        now = [100.0]
        queue = WorkQueue(clock=lambda: now[0])
        queue.add("a")
        key, _, _ = await queue.get()
        queue.add("a", 99.0)  # a due time already passed, met while the visit runs
        now[0] = 101.0
        queue.add("a")  # then an event
        now[0] = 102.0
        queue.done(key)
        again = await queue.get()
        return again.key, again.lag, again.cause

    assert run(scenario()) == ("a", 3.0, "scheduled")


def test_an_immediate_add_is_an_event_and_lags_from_when_it_was_added() -> None:
    async def scenario():
        now = [10.0]
        queue = WorkQueue(clock=lambda: now[0])
        queue.add("a")
        now[0] = 12.5
        return await queue.get()

    assert tuple(run(scenario())) == ("a", 2.5, "event")
