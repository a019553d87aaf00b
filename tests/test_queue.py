"""The Lua transitions, driven directly through redwork.queue.Queue ops (no worker)."""

from __future__ import annotations

import orjson
import pytest
import redis

from redwork.errors import InvalidName
from redwork.job import Envelope
from redwork.queue import QUEUES_KEY, Completion, Delivery, Failure, NewJob, Queue, run
from redwork.scripts import Code
from tests.conftest import DAY_MS, job_events

WORKER = "test-worker"
LEASE = 60_000
BIG = 1 << 20


def doc(job_id: str, queue: str = "q", **fields: object) -> bytes:
    return Envelope(id=job_id, task="t", queue=queue, **fields).encode(BIG)  # type: ignore[arg-type]


def server_ms(r: redis.Redis) -> int:
    seconds, micros = r.time()
    return seconds * 1000 + micros // 1000


def events(r: redis.Redis, q: Queue, event: str, job_id: str | None = None) -> list[dict[str, str]]:
    return [
        job
        for _, raw in r.xrange(q.events, "-", "+")
        for job in job_events(raw)
        if job["event"] == event and job_id in (None, job["job"])
    ]


def enqueue(r: redis.Redis, q: Queue, *ids: str) -> None:
    assert run(r, q.enqueue([NewJob(i, doc(i, q.name)) for i in ids], DAY_MS)) == [Code.OK] * len(
        ids
    )


def fetch(r: redis.Redis, q: Queue, count: int = 1, lease_ms: int = LEASE) -> list[Delivery]:
    return run(r, q.fetch(count, lease_ms, WORKER, BIG)).deliveries


def fetch_one(r: redis.Redis, q: Queue, lease_ms: int = LEASE) -> Delivery:
    (delivery,) = fetch(r, q, 1, lease_ms)
    return delivery


def wait_ids(r: redis.Redis, q: Queue) -> list[str]:
    """The wait list in the order jobs will be fetched (RPOP takes from the right)."""
    return [i.decode() for i in reversed(r.lrange(q.wait, 0, -1))]


def record(r: redis.Redis, q: Queue, job_id: str):
    rec = run(r, q.job(job_id))
    assert rec is not None, f"job {job_id} has no hash"
    return rec


@pytest.fixture
def q() -> Queue:
    return Queue("q")


# -- enqueue ------------------------------------------------------------------------


def test_enqueue_same_id_twice_is_applied_once(r: redis.Redis, q: Queue) -> None:
    assert run(r, q.enqueue([NewJob("a", doc("a"))], DAY_MS)) == [Code.OK]
    assert run(r, q.enqueue([NewJob("a", b'{"other": 1}')], DAY_MS)) == [Code.DUPLICATE]
    assert run(r, q.enqueue([NewJob("b", doc("b")), NewJob("b", doc("b"))], DAY_MS)) == [
        Code.OK,
        Code.DUPLICATE,
    ]

    assert wait_ids(r, q) == ["a", "b"]
    assert record(r, q, "a").data == doc("a")
    assert record(r, q, "a").state == "waiting"
    assert len(events(r, q, "enqueued")) == 2
    assert run(r, q.counts()).stats["enqueued"] == 2


def test_a_large_call_writes_entries_of_at_most_100_jobs_and_one_live_message(
    r: redis.Redis, q: Queue
) -> None:
    """The stream is capped in entries; bounded entries keep it bounded in bytes however
    large the calls (found by the soak run: 1,000-job entries of 35 KB each)."""
    live = r.pubsub()
    live.subscribe(q.events)
    assert live.get_message(timeout=5) is not None  # the subscription's confirmation
    ids = [f"j{i}" for i in range(250)]
    run(r, q.enqueue([NewJob(i, doc(i)) for i in ids], DAY_MS))
    entries = [raw[b"jobs"].decode().split(",") for _, raw in r.xrange(q.events, "-", "+")]
    assert [len(jobs) for jobs in entries] == [100, 100, 50]
    assert [job for jobs in entries for job in jobs] == ids
    message = live.get_message(timeout=5)
    assert message is not None and orjson.loads(message["data"])["jobs"] == ids
    live.close()


# -- fetch --------------------------------------------------------------------------


def test_fetch_leases_at_most_count_jobs_in_fifo_order(r: redis.Redis, q: Queue) -> None:
    enqueue(r, q, "a", "b", "c", "d", "e")
    before = server_ms(r)
    fetched = run(r, q.fetch(3, LEASE, WORKER, BIG))

    assert [d.id for d in fetched.deliveries] == ["a", "b", "c"]
    assert fetched.next_due_in_ms is None
    # Tokens come from the queue's counter: one each, in fetch order.
    assert [d.token for d in fetched.deliveries] == [1, 2, 3]
    for d in fetched.deliveries:
        assert (d.attempt, d.queue, d.data) == (1, "q", doc(d.id))
        rec = record(r, q, d.id)
        assert (rec.state, rec.token, rec.attempt, rec.worker) == ("active", d.token, 1, WORKER)
        assert r.zscore(q.active, d.id) >= before + LEASE
    assert wait_ids(r, q) == ["d", "e"]
    assert len(fetch(r, q, 10)) == 2
    assert fetch(r, q, 10) == []


# -- complete -----------------------------------------------------------------------


def test_complete_with_current_token_then_repeat_is_already_done(r: redis.Redis, q: Queue) -> None:
    enqueue(r, q, "a")
    d = fetch_one(r, q)
    assert run(r, q.complete([Completion("a", d.token, b'"ok"')], 60)) == [Code.OK]
    assert run(r, q.complete([Completion("a", d.token, b'"again"')], 60)) == [Code.ALREADY_DONE]

    rec = record(r, q, "a")
    assert (rec.state, rec.result_value()) == ("completed", "ok")
    assert r.zcard(q.active) == 0
    assert 0 < r.ttl(q.job_key("a")) <= 60
    assert len(events(r, q, "completed", "a")) == 1
    assert run(r, q.counts()).stats["completed"] == 1


def _stolen(r: redis.Redis, q: Queue) -> tuple[Delivery, Delivery]:
    """Job a, leased by a first delivery whose lease expired, then by a second one."""
    enqueue(r, q, "a")
    old = fetch_one(r, q, lease_ms=0)
    assert run(r, q.recover(max_losses=3)) == (1, 0)
    new = fetch_one(r, q)
    assert (old.token, new.token) == (1, 2)
    return old, new


def test_stale_token_writes_nothing_while_new_owner_runs(r: redis.Redis, q: Queue) -> None:
    old, new = _stolen(r, q)
    before = r.hgetall(q.job_key("a"))
    score = r.zscore(q.active, "a")

    assert run(r, q.complete([Completion("a", old.token, b'"stale"')], 60)) == [Code.LEASE_LOST]
    stale_fail = Failure("a", old.token, "exception", "stale", retry_in_ms=-1)
    assert run(r, q.fail([stale_fail])) == [Code.LEASE_LOST]
    assert run(r, q.heartbeat([("a", old.token)], 10 * LEASE)) == (["a"], [])
    assert run(r, q.handback([("a", old.token)])) == [Code.LEASE_LOST]

    assert r.hgetall(q.job_key("a")) == before
    assert r.zscore(q.active, "a") == score
    # the new owner is untouched and can still finish
    assert run(r, q.complete([Completion("a", new.token, b'"new"')], 60)) == [Code.OK]
    assert r.zcard(q.failed) == 0
    assert wait_ids(r, q) == []
    assert run(r, q.counts()).stats["fenced"] == 2


def test_stale_token_after_new_owner_completed_keeps_its_result(r: redis.Redis, q: Queue) -> None:
    old, new = _stolen(r, q)
    assert run(r, q.complete([Completion("a", new.token, b'"new"')], 60)) == [Code.OK]

    assert run(r, q.complete([Completion("a", old.token, b'"old"')], 60)) == [Code.LEASE_LOST]
    stale_fail = Failure("a", old.token, "exception", "stale", retry_in_ms=-1)
    assert run(r, q.fail([stale_fail])) == [Code.LEASE_LOST]
    assert run(r, q.heartbeat([("a", old.token)], LEASE)) == (["a"], [])

    rec = record(r, q, "a")
    assert (rec.state, rec.result_value(), rec.reason, rec.error) == (
        "completed",
        "new",
        None,
        None,
    )
    assert r.zcard(q.failed) == 0 and r.zcard(q.active) == 0


# -- fail ---------------------------------------------------------------------------


@pytest.mark.cluster
def test_fail_with_retry_delays_then_a_later_fetch_promotes_it(r: redis.Redis, q: Queue) -> None:
    enqueue(r, q, "a", "b")
    a, b = fetch(r, q, 2)
    codes = run(
        r,
        q.fail(
            [
                Failure("a", a.token, "exception", "try again", retry_in_ms=0),
                Failure("b", b.token, "exception", "later", retry_in_ms=LEASE),
            ]
        ),
    )
    assert codes == [Code.OK, Code.OK]
    assert run(r, q.fail([Failure("a", a.token, "exception", "x", 0)])) == [Code.ALREADY_DONE]
    rec = record(r, q, "a")
    assert (rec.state, rec.reason, rec.error, rec.attempt) == (
        "delayed",
        "exception",
        "try again",
        1,
    )
    assert r.zcard(q.active) == 0 and r.zcard(q.delayed) == 2

    fetched = run(r, q.fetch(10, LEASE, WORKER, BIG))
    assert [(d.id, d.token, d.attempt) for d in fetched.deliveries] == [("a", 3, 2)]
    assert fetched.next_due_in_ms is not None and 0 < fetched.next_due_in_ms <= LEASE
    assert [e["job"] for e in events(r, q, "promoted")] == ["a"]
    assert r.zrange(q.delayed, 0, -1) == [b"b"]
    assert record(r, q, "b").state == "delayed"
    assert run(r, q.counts()).stats["retried"] == 2


def test_fail_without_retry_goes_to_failed_store_without_ttl(r: redis.Redis, q: Queue) -> None:
    enqueue(r, q, "a")
    d = fetch_one(r, q)
    failure = Failure("a", d.token, "exception", "Traceback: boom", retry_in_ms=-1)
    assert run(r, q.fail([failure])) == [Code.OK]
    assert run(r, q.fail([failure])) == [Code.ALREADY_DONE]

    rec = record(r, q, "a")
    assert (rec.state, rec.reason, rec.error) == ("failed", "exception", "Traceback: boom")
    assert rec.finished_at is not None
    assert r.ttl(q.job_key("a")) == -1
    assert run(r, q.failed_ids()) == ["a"]
    assert r.zcard(q.active) == 0 and r.zcard(q.delayed) == 0
    assert len(events(r, q, "failed", "a")) == 1


# -- heartbeat ----------------------------------------------------------------------


def test_heartbeat_extends_the_lease_and_reports_lost_ids(r: redis.Redis, q: Queue) -> None:
    enqueue(r, q, "a", "b")
    a, b = fetch(r, q, 2, lease_ms=1000)
    first = r.zscore(q.active, "a")

    lost, aborted = run(r, q.heartbeat([("a", a.token), ("b", b.token + 1), ("nope", 1)], LEASE))
    assert (lost, aborted) == (["b", "nope"], [])
    assert r.zscore(q.active, "a") >= first + LEASE - 1000
    assert r.zscore(q.active, "b") < first + LEASE - 1000
    assert r.zscore(q.active, "nope") is None


# -- handback -----------------------------------------------------------------------


def test_handback_puts_job_at_front_with_attempt_given_back(r: redis.Redis, q: Queue) -> None:
    enqueue(r, q, "a", "b", "c")
    a = fetch_one(r, q)
    assert a.id == "a"
    assert run(r, q.handback([("a", a.token)])) == [Code.OK]

    rec = record(r, q, "a")
    assert (rec.state, rec.attempt, rec.worker) == ("waiting", 0, None)
    assert r.zcard(q.active) == 0
    assert wait_ids(r, q) == ["a", "b", "c"]
    assert [e["attempt"] for e in events(r, q, "returned", "a")] == ["0"]
    # handing back the same delivery again, or with a stale token, changes nothing
    assert run(r, q.handback([("a", a.token)])) == [Code.LEASE_LOST]
    assert run(r, q.handback([("a", a.token - 1)])) == [Code.LEASE_LOST]
    assert wait_ids(r, q) == ["a", "b", "c"]

    again = fetch_one(r, q)
    assert (again.id, again.attempt, again.token) == ("a", 1, 2)


def test_jobs_handed_back_together_keep_their_order(r: redis.Redis, q: Queue) -> None:
    enqueue(r, q, "a", "b", "c", "d")
    a, b, c = fetch(r, q, 3)
    assert run(r, q.handback([(a.id, a.token), (b.id, b.token), (c.id, c.token)])) == [Code.OK] * 3
    assert wait_ids(r, q) == ["a", "b", "c", "d"]


# -- recover ------------------------------------------------------------------------


@pytest.mark.cluster
def test_recover_takes_back_expired_leases_only(r: redis.Redis, q: Queue) -> None:
    enqueue(r, q, "a", "b", "c")
    a = fetch_one(r, q, lease_ms=1)
    fetch_one(r, q, lease_ms=LEASE)  # b keeps its lease
    r.blpop(["rw:test:never"], timeout=0.05)  # 50 ms pass on the server's clock

    assert run(r, q.recover(max_losses=3)) == (1, 0)
    rec = record(r, q, "a")
    assert (rec.state, rec.losses, rec.attempt, rec.token) == ("waiting", 1, 1, a.token)
    assert wait_ids(r, q) == ["a", "c"]
    assert r.zrange(q.active, 0, -1) == [b"b"]
    assert len(events(r, q, "recovered", "a")) == 1
    assert run(r, q.recover(max_losses=3)) == (0, 0)


def test_recover_fails_job_with_worker_lost_after_max_losses(r: redis.Redis, q: Queue) -> None:
    enqueue(r, q, "a")
    for _ in range(2):
        fetch_one(r, q, lease_ms=0)
        assert run(r, q.recover(max_losses=3)) == (1, 0)
    fetch_one(r, q, lease_ms=0)
    assert run(r, q.recover(max_losses=3)) == (0, 1)

    rec = record(r, q, "a")
    assert (rec.state, rec.reason, rec.losses, rec.attempt) == ("failed", "worker_lost", 3, 3)
    assert "3 times" in (rec.error or "")
    assert run(r, q.failed_ids()) == ["a"]
    assert r.ttl(q.job_key("a")) == -1
    assert r.zcard(q.active) == 0 and wait_ids(r, q) == []


# -- bad entries --------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"\xff\x00 not an id " * 500, b"no-such-job", b"x" * 129],
    ids=["binary-5000-bytes", "unknown-id", "too-long"],
)
def test_raw_wait_list_entry_goes_to_failed_store_as_raw_n(
    r: redis.Redis, q: Queue, raw: bytes
) -> None:
    enqueue(r, q, "good")
    r.lpush(q.wait, raw)  # behind "good"
    r.lpush(q.wait, raw)

    deliveries = fetch(r, q, 10)
    assert [d.id for d in deliveries] == ["good"]
    assert sorted(run(r, q.failed_ids())) == ["@raw-1", "@raw-2"]
    for raw_id in ("@raw-1", "@raw-2"):
        rec = record(r, q, raw_id)
        assert (rec.state, rec.reason) == ("failed", "decode_error")
        assert rec.data == raw[:4096]
        assert rec.as_dict()["raw"] is not None
    assert len(events(r, q, "failed")) == 2
    assert wait_ids(r, q) == []


def test_document_over_max_bytes_fails_without_delivery(r: redis.Redis, q: Queue) -> None:
    big = doc("big", meta={"pad": "x" * 500})
    run(r, q.enqueue([NewJob("big", big), NewJob("small", doc("small"))], DAY_MS))

    fetched = run(r, q.fetch(10, LEASE, WORKER, 400))
    assert [d.id for d in fetched.deliveries] == ["small"]
    rec = record(r, q, "big")
    assert (rec.state, rec.reason, rec.attempt, rec.token) == ("failed", "payload_too_large", 0, 0)
    assert "400" in (rec.error or "")
    assert rec.data == big  # kept for inspection, just never sent
    assert run(r, q.failed_ids()) == ["big"]
    assert events(r, q, "active", "big") == []


# -- the failed store ---------------------------------------------------------------


def _fail_for_good(r: redis.Redis, q: Queue, *ids: str) -> None:
    enqueue(r, q, *ids)
    deliveries = fetch(r, q, len(ids))
    failures = [Failure(d.id, d.token, "exception", "no", -1) for d in deliveries]
    assert run(r, q.fail(failures)) == [Code.OK] * len(ids)


def test_retry_failed_requeues_with_fresh_attempts_but_never_raw_entries(
    r: redis.Redis, q: Queue
) -> None:
    _fail_for_good(r, q, "a", "b", "c")
    r.lpush(q.wait, b"garbage")
    fetch(r, q)
    assert sorted(run(r, q.failed_ids())) == ["@raw-1", "a", "b", "c"]

    assert run(r, q.retry_failed(["a", "@raw-1", "missing"])) == 1
    assert (record(r, q, "a").state, record(r, q, "a").attempt) == ("waiting", 0)
    assert run(r, q.retry_failed()) == 2
    assert run(r, q.failed_ids()) == ["@raw-1"]
    assert sorted(wait_ids(r, q)) == ["a", "b", "c"]
    for job_id in "abc":
        rec = record(r, q, job_id)
        assert (rec.state, rec.attempt, rec.losses) == ("waiting", 0, 0)
    assert len(events(r, q, "requeued")) == 3

    d = fetch_one(r, q)
    assert d.attempt == 1


def test_purge_failed_deletes_jobs_for_good(r: redis.Redis, q: Queue) -> None:
    _fail_for_good(r, q, "a", "b", "c")
    assert run(r, q.purge_failed(["a", "nope"])) == 1
    assert not r.exists(q.job_key("a"))
    assert run(r, q.purge_failed()) == 2
    assert run(r, q.failed_ids()) == []
    assert run(r, q.job("b")) is None and run(r, q.job("c")) is None
    assert run(r, q.retry_failed()) == 0
    assert sorted(e["job"] for e in events(r, q, "purged")) == ["a", "b", "c"]


def test_a_raw_entry_never_overwrites_a_job_named_like_one(r: redis.Redis, q: Queue) -> None:
    enqueue(r, q, "raw-1")
    r.lpush(q.wait, b"\x00 not a job")
    [delivery] = fetch(r, q, 2)
    assert delivery.id == "raw-1"
    assert record(r, q, "raw-1").state.value == "active"
    assert run(r, q.complete([Completion("raw-1", delivery.token, b"7")], 60)) == [Code.OK]
    assert run(r, q.failed_ids()) == ["@raw-1"]


# -- counts -------------------------------------------------------------------------


@pytest.mark.cluster
def test_counts_add_up(r: redis.Redis, q: Queue) -> None:
    enqueue(r, q, *(f"j{i}" for i in range(10)))
    d = fetch(r, q, 6)
    run(
        r,
        q.complete(
            [Completion(d[0].id, d[0].token, b"1"), Completion(d[1].id, d[1].token, b"2")], 60
        ),
    )
    run(
        r,
        q.fail(
            [
                Failure(d[2].id, d[2].token, "exception", "x", LEASE),
                Failure(d[3].id, d[3].token, "exception", "x", -1),
            ]
        ),
    )
    c = run(r, q.counts())
    assert (c.waiting, c.active, c.delayed, c.failed) == (4, 2, 1, 1)
    assert c.stats == {"enqueued": 10, "completed": 2, "failed": 1, "retried": 1}
    assert c.waiting + c.active + c.delayed + c.failed + c.stats["completed"] == 10


def test_stats_failed_counts_jobs_buried_by_fetch(r: redis.Redis, q: Queue) -> None:
    run(r, q.enqueue([NewJob("big", doc("big", meta={"pad": "x" * 500}))], DAY_MS))
    r.lpush(q.wait, b"garbage")
    run(r, q.fetch(10, LEASE, WORKER, 400))
    c = run(r, q.counts())
    assert c.failed == 2
    assert c.stats.get("failed", 0) == c.failed


# -- keys and names -----------------------------------------------------------------


@pytest.mark.cluster
def test_every_key_of_a_queue_carries_its_hash_tag(r: redis.Redis) -> None:
    q, other = Queue("tagged.q-1"), Queue("other")
    for queue in (q, other):
        enqueue(r, queue, "a", "b", "c", "d", "e")
        r.lpush(queue.wait, b"raw bytes")
        d = fetch(r, queue, 10, lease_ms=0)
        fail = Failure(d[1].id, d[1].token, "exception", "x", -1)
        run(r, queue.complete([Completion(d[0].id, d[0].token, b"1")], 60))
        run(r, queue.fail([fail, Failure(d[2].id, d[2].token, "exception", "x", LEASE)]))
        run(r, queue.handback([(d[3].id, d[3].token)]))
        run(r, queue.recover(1))
        run(r, queue.heartbeat([(d[4].id, d[4].token)], LEASE))
        run(r, queue.retry_failed())
        run(r, queue.counts())

    keys = {k.decode() for k in r.scan_iter("*")} - {QUEUES_KEY}  # every node of a cluster
    for queue in (q, other):
        mine = {k for k in keys if f"{{{queue.name}}}" in k}
        assert {queue.wait, queue.events, queue.stats, queue.seq, queue.failed} <= mine
        assert any(":job:@raw-" in k for k in mine)
        assert any(":done:" in k for k in mine)
    untagged = {k for k in keys if "{tagged.q-1}" not in k and "{other}" not in k}
    assert untagged == set()


@pytest.mark.parametrize(
    "name", ["a{b", "a}b", "{q}", "has space", "", "x" * 129, "tab\t", "ünïcode", "a/b"]
)
def test_invalid_queue_name_raises_invalid_name(name: str) -> None:
    with pytest.raises(InvalidName):
        Queue(name)


def test_queue_name_with_trailing_newline_raises_invalid_name() -> None:
    with pytest.raises(InvalidName):
        Queue("q\n")


def test_longest_valid_queue_name_is_accepted(r: redis.Redis) -> None:
    q = Queue("x" * 128)
    enqueue(r, q, "a")
    assert fetch_one(r, q).id == "a"


def test_a_job_that_lost_its_worker_before_is_delivered_alone(r: redis.Redis, q: Queue) -> None:
    enqueue(r, q, "a", "b", "c", "d")
    r.hset(q.job_key("b"), "losses", 1)  # as recover leaves a job whose worker died
    assert [d.id for d in fetch(r, q, 4)] == ["a"]
    assert [d.id for d in fetch(r, q, 4)] == ["b"]
    assert [d.id for d in fetch(r, q, 4)] == ["c", "d"]
