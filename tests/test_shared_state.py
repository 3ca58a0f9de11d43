"""The shared state's atomic steps, and the offline stand-ins keeping Modal's semantics that they rely on."""

from __future__ import annotations

import asyncio
import queue
import threading
import time

import pytest
from modal_fakes import FakeDict, FakeQueue, FakeSpace, FakeVolume

from freestems.service.errors import ServiceError
from freestems.service.shared_state import SharedState
from freestems.service.shared_store import DictJobStore
from freestems.service.store import Job


def test_the_fake_dict_keeps_modals_semantics():
    d = FakeDict()
    value = {"a": [1]}
    assert d.put("k", value) is True
    value["a"].append(2)  # values are pickled: the stored one does not change
    assert d.get("k") == {"a": [1]}
    assert d.put("k", {"b": 1}, skip_if_exists=True) is False
    assert d["k"] == {"a": [1]}
    assert d.pop("k") == {"a": [1]} and d.get("k") is None and d.pop("k", 7) == 7
    with pytest.raises(KeyError):
        d.pop("k")


def test_the_fake_queue_keeps_modals_semantics():
    q = FakeQueue()
    assert q.get_many(5, block=False, partition="p") == []
    with pytest.raises(queue.Empty):
        q.get_many(5, timeout=0.05, partition="p")
    q.put(1, partition="p")
    q.put(2, partition="p")
    q.put(3, partition="other")
    assert q.get_many(5, block=False, partition="p") == [1, 2]
    assert q.get(block=False, partition="p") is None


def test_a_volume_shows_a_write_only_after_commit_and_reload(tmp_path):
    volume = FakeVolume(tmp_path / "cloud")
    a, b = volume.mount(tmp_path / "a"), volume.mount(tmp_path / "b")
    (a.path / "results").mkdir()
    (a.path / "results" / "x.zip").write_bytes(b"zip")
    b.reload()
    assert not (b.path / "results" / "x.zip").exists()  # not committed yet
    a.commit()
    assert not (b.path / "results" / "x.zip").exists()  # committed, not reloaded
    b.reload()
    assert (b.path / "results" / "x.zip").read_bytes() == b"zip"
    (b.path / "results" / "x.zip").unlink()
    b.commit()
    a.reload()
    assert not (a.path / "results" / "x.zip").exists()  # deletions travel too


def race(count: int, action) -> list:
    """Run ``action(i)`` in ``count`` threads released at once; their results."""
    start = threading.Barrier(count)
    results: list = [None] * count

    def run(index: int) -> None:
        start.wait()
        results[index] = action(index)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_a_job_of_a_container_that_has_gone_is_adopted_exactly_once():
    space, inbox = FakeSpace(), FakeQueue()
    gone = SharedState(space, inbox, lease=1.0, clock=lambda: time.time() - 60)
    gone.heartbeat()  # a heartbeat a minute old
    gone.own("job1")
    live = [SharedState(space, inbox, lease=5.0) for _ in range(8)]
    for state in live:
        state.heartbeat()
    assert sum(race(8, lambda i: live[i].adopt("job1"))) == 1
    winner = next(state for state in live if state.runs("job1"))
    assert [state.adopt("job1") for state in live] == [False] * 8  # the winner is alive
    winner.release("job1")  # it stops and gives the job back: adopted once more
    assert sum(race(8, lambda i: live[i].adopt("job1"))) == 1


def test_a_key_is_claimed_once_across_containers():
    space, inbox = FakeSpace(), FakeQueue()
    states = [SharedState(space, inbox) for _ in range(6)]
    states[0].heartbeat()  # the container of the key's socket is alive
    digest = b"\x01" * 32
    states[0].keys.publish(digest, {"client": "1.2.3.4", "connection": "c", "expires_at": time.time() + 60})
    assert all(state.keys.lookup(digest) is not None for state in states)
    assert sum(race(6, lambda i: states[i].keys.claim(digest))) == 1
    states[0].keys.bury(digest, ServiceError(401, "key_closed", "closed"), time.time() + 60)
    assert states[3].keys.lookup(digest) is None
    assert states[3].keys.tombstone(digest).code == "key_closed"


def test_the_socket_cap_of_an_address_holds_across_containers_and_frees_a_gone_ones_slots():
    space, inbox = FakeSpace(), FakeQueue()
    first, second = SharedState(space, inbox, lease=0.3), SharedState(space, inbox, lease=0.3)
    first.heartbeat()

    async def scenario() -> None:
        await first.acquire_socket("9.9.9.9", "a", 2)
        await second.acquire_socket("9.9.9.9", "b", 2)
        with pytest.raises(ServiceError) as refused:
            await second.acquire_socket("9.9.9.9", "c", 2)
        assert (refused.value.status, refused.value.code) == (429, "too_many_sockets")
        await asyncio.sleep(0.5)  # the first container stops beating: its socket's slot is free again
        await second.acquire_socket("9.9.9.9", "c", 2)

    asyncio.run(scenario())


def test_the_dict_store_orders_the_queue_and_keeps_ended_jobs_ended(tmp_path):
    store = DictJobStore(FakeSpace(), tmp_path)
    now = time.time()
    for index in range(3):
        store.create(
            Job(id=f"{index:016x}", token="t", state="queued", options={}, model="m", client=f"c{index % 2}",
                created_at=now + index, input_path=tmp_path / "uploads" / f"{index}.mp3")
        )  # fmt: skip
    assert [job.id for job in store.queued()] == [f"{i:016x}" for i in range(3)]
    assert store.position(store.get(f"{2:016x}")) == 3
    assert store.in_flight() == 3 and store.in_flight("c0") == 2
    assert store.get(f"{1:016x}").input_path == tmp_path / "uploads" / "1.mp3"
    store.update(f"{0:016x}", state="cancelled", expires_at=now - 1)
    store.update(f"{0:016x}", state="running", progress=0.5)  # a late report cannot revive it
    assert store.get(f"{0:016x}").state == "cancelled"
    assert [job.id for job in store.expired()] == [f"{0:016x}"]
    assert store.position(store.get(f"{2:016x}")) == 2 and store.counts()["queued"] == 2


class SlowDict(FakeDict):
    """A Dict whose calls take a little time, as a network round trip does: races get room to happen."""

    def get(self, key, default=None):
        time.sleep(0.0005)
        return super().get(key, default)

    def put(self, key, value, *, skip_if_exists=False):
        time.sleep(0.0005)
        return super().put(key, value, skip_if_exists=skip_if_exists)


class SlowSpace(FakeSpace):
    def __call__(self, name):
        with self._lock:
            return self.dicts.setdefault(name, SlowDict())


def running_job(store: DictJobStore, tmp_path) -> Job:
    job = Job(id="0123456789abcdef", token="t", state="running", options={}, model="m", client="c",
              created_at=time.time(), input_path=tmp_path / "uploads" / "x.mp3")  # fmt: skip
    store.create(job)
    return job


@pytest.mark.parametrize("round_", range(5))
def test_a_cancel_racing_progress_reports_from_other_containers_is_never_lost(tmp_path, round_):
    space = SlowSpace()
    job = running_job(DictJobStore(space, tmp_path), tmp_path)
    stores = [DictJobStore(space, tmp_path) for _ in range(6)]  # six containers, one Dict

    def act(index: int) -> None:
        if index == 0:
            time.sleep(0.01)
            stores[0].update(job.id, state="cancelled", error_code="cancelled", finished_at=time.time())
            return
        for step in range(15):  # progress reports read as running and write the row back
            stores[index].update(job.id, progress=step / 15, timings={"step": float(step)})

    race(6, act)
    final = DictJobStore(space, tmp_path).get(job.id)
    assert final.state == "cancelled" and final.error_code == "cancelled"
    assert job.id not in space("active")  # nor does the index say it runs


def test_a_job_deleted_while_a_report_races_stays_deleted(tmp_path):
    space = SlowSpace()
    job = running_job(DictJobStore(space, tmp_path), tmp_path)
    a, b = DictJobStore(space, tmp_path), DictJobStore(space, tmp_path)

    def act(index: int) -> None:
        if index == 0:
            a.delete(job.id)
        else:
            for step in range(10):
                b.update(job.id, progress=step / 10)

    race(2, act)
    assert DictJobStore(space, tmp_path).get(job.id) is None


def test_on_an_event_loop_the_store_answers_from_its_copy_and_writes_through_its_courier(tmp_path):
    space = FakeSpace()
    state = SharedState(space, FakeQueue())
    store = state.open_store(tmp_path, tmp_path / "unused.sqlite")
    other = DictJobStore(space, tmp_path)  # another container, reading the Dicts directly

    async def on_the_loop() -> Job:
        job = running_job(store, tmp_path)  # no Dict call here (the fakes raise on the loop's thread)
        store.update(job.id, progress=0.5)
        assert store.get(job.id).progress == 0.5 and store.in_flight() == 1
        await state.settled()
        return job

    job = asyncio.run(on_the_loop())
    assert other.get(job.id).progress == 0.5 and other.in_flight() == 1
