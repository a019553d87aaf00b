"""Property-based fuzzing of job intake (issue 8; reliability plan B7), with Hypothesis:
random arguments, task names, queue names and options through the client, and random
bytes and documents written straight into a queue's keys as a foreign producer could.

Pass: input the producer refuses raises a typed error before any Redis call (checked
with a producer whose server is a closed port: reaching for it would raise
ConnectionError instead); input it accepts ends in exactly one terminal state, a failure
with a readable reason in the failed store (or, in a queue no worker serves, waits until
it is cancelled); the worker process never dies and goes on running good jobs; the keys
of two queues never mix.

Each fault the fuzzing found (non-finite floats turned into null, far delays stored
unreadably, ids the scripts did not check, stray wait-list copies run again, overflowing
retry delays, colliding workflow keys, options of the wrong type) is fixed and has a
minimal example of its own at the end."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import redis
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from redwork import (
    JobHandle,
    JobState,
    PayloadTooLarge,
    Redwork,
    RedworkError,
    SerializationError,
    Settings,
    WorkflowError,
    chain,
)
from redwork.errors import InvalidName
from redwork.job import (
    MAX_DELAY,
    MAX_KEY_LENGTH,
    MAX_PRIORITY,
    NAME_PATTERN,
    FailureReason,
    JobRecord,
    to_json,
)
from redwork.queue import NewJob, Queue, run
from redwork.scripts import Code
from tests import tasks
from tests.conftest import (
    DAY_MS,
    WorkerProcess,
    job_events,
    wait_for_event,
)
from tests.test_client import CLOSED_PORT_URL

LIMIT = 8 * 1024
"""max_payload of producers and worker: documents near and over it are cheap to build."""
ENVELOPE = 256
"""More than the document adds around the arguments of an echo job with default options."""
RAW_KEPT = 4096
"""Bytes of a raw wait-list entry that fetch keeps (fetch.lua)."""
SERVED = ("default", "default:wait", "a", "a:b", "a.b", "job", "0", "Z" * 128, "q.1:x-Y_z")
"""Queues the worker process serves: valid names, some the prefix of another or named
like a key of a queue."""
WAIT = 15.0
TERMINAL = {state.value for state in JobState if state.is_final}
DEFAULT = Queue("default")

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same examples on every run, in CI too
    database=None,
)


# -- values ------------------------------------------------------------------------------

ODD_TEXT = [
    "",
    "\x00",
    "\u2028",
    "\ufeff",
    "\u0301",
    "\U0010ffff",
    "é",
    "😀",
    "{default}",
    "a:b",
    " ",
    '"\\',
]
EDGE_NUMBERS = [
    -(2**63),  # the range JSON encoders agree on
    2**64 - 1,
    2**63,
    2**53 + 1,  # not a double
    0.0,
    -0.0,
    5e-324,
    -2.2250738585072014e-308,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    0.1,
]
text = st.text(max_size=20) | st.sampled_from(ODD_TEXT)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)  # non-finite ones: see the xfails
    | st.sampled_from(EDGE_NUMBERS)
    | text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=20,
)


def near_limit(char: str) -> st.SearchStrategy[str]:
    """Strings of `char` whose JSON is a little under to a little over LIMIT bytes."""
    width = len(orjson.dumps(char)) - 2
    sizes = st.integers(LIMIT - 2 * ENVELOPE, LIMIT + ENVELOPE)
    return sizes.map(lambda size: char * (size // width))


@dataclass(frozen=True)
class Argument:
    value: Any
    encodable: bool
    """False when no JSON document can hold it: the producer must refuse it."""


sized = st.sampled_from(["x", "é", "😀", "\x00", '"']).flatmap(near_limit)
arguments = st.one_of(
    json_values.map(lambda v: Argument(v, True)),
    sized.map(lambda v: Argument(v, True)),
    st.tuples(json_values, sized).map(lambda pair: Argument(list(pair), True)),
    st.tuples(
        json_values,
        st.integers(min_value=2**64) | st.integers(max_value=-(2**63) - 1),
    ).map(lambda pair: Argument(list(pair), False)),
    st.sampled_from([{1, 2}, b"bytes", 1j]).map(lambda v: Argument([v], False)),
)


# -- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture
def fuzz_settings(settings: Settings) -> Settings:
    return settings.replace(max_payload=LIMIT)


@pytest.fixture
def producer(app: Redwork, fuzz_settings: Settings) -> Iterator[Redwork]:
    app.configure(fuzz_settings)
    yield app
    app.client.close()


@pytest.fixture
def offline() -> Redwork:
    """The echo task on an app whose server is a closed port (no retrying): an enqueue
    that got past every check raises ConnectionError at once."""
    settings = Settings.load(env={}, redis_url=CLOSED_PORT_URL, reconnect_for=0, max_payload=LIMIT)
    app = Redwork("offline", settings=settings)
    app.task(name="echo")(tasks.echo.fn)
    return app


@pytest.fixture
def worker_process(spawn_worker: Callable[..., WorkerProcess]) -> Iterator[WorkerProcess]:
    """One `redwork worker` process for the whole test, serving SERVED; it must still be
    running at the end."""
    proc = spawn_worker(max_payload=LIMIT, queues=SERVED, scheduler=False)
    yield proc
    assert proc.proc.poll() is None, f"the worker process died (exit {proc.proc.returncode})"


def refusal(enqueue: Callable[[], object]) -> Exception | None:
    """Run an enqueue on the offline app: the typed error it raised, or None if it got as
    far as reaching for the server. Any other exception propagates and fails the test."""
    try:
        enqueue()
    except redis.exceptions.ConnectionError:
        return None
    except (RedworkError, ValueError, TypeError) as exc:
        return exc
    raise AssertionError("the offline producer enqueued with no server")


def terminal_events(r: redis.Redis, queue: str, job_id: str) -> list[str]:
    return [
        job["event"]
        for _, raw in r.xrange(Queue(queue).events, "-", "+")
        for job in job_events(raw)
        if job["job"] == job_id and job["event"] in TERMINAL
    ]


def check_ended(r: redis.Redis, record: JobRecord) -> None:
    """A job that has ended did so once; a failed one is in the failed store with a
    readable reason, and every read of it works."""
    assert record.is_final, f"job {record.id} is {record.state}"
    assert terminal_events(r, record.queue, record.id) == [record.state.value]
    record.as_dict()  # what `redwork job show`, the API and the dashboard read
    if record.state is JobState.FAILED:
        assert record.reason in {reason.value for reason in FailureReason}
        assert record.error, f"job {record.id} failed with no error text"
        assert r.zscore(Queue(record.queue).failed, record.id) is not None


def ended(app: Redwork, r: redis.Redis, queue: str, job_id: str) -> JobRecord:
    """Wait (on the job's channel) until the job has ended; checked as above."""
    record = app.client.wait(queue, job_id, timeout=WAIT)
    check_ended(r, record)
    return record


def finish(app: Redwork, r: redis.Redis, handle: JobHandle, runs: bool = True) -> JobRecord:
    """The job's end: waited for if it `runs` soon in a queue the worker serves; else it
    must be waiting (or delayed), readable, and then it is cancelled. Checked as above."""
    if runs and handle.queue in SERVED:
        return ended(app, r, handle.queue, handle.id)
    stored = handle.info()
    assert stored.state in (JobState.DELAYED, JobState.WAITING)
    assert (stored.due_at is not None) == (stored.state is JobState.DELAYED)
    assert handle.cancel() == "cancelled"
    record = handle.info()
    check_ended(r, record)
    return record


def first_event(r: redis.Redis, job_id: str, kinds: set[str]) -> str:
    """The first event of one of `kinds` recorded for the job in the default queue
    (XREAD blocks on the server until there is one)."""
    last, deadline = "0", time.monotonic() + WAIT
    while (remaining := deadline - time.monotonic()) > 0:
        reply = r.xread({DEFAULT.events: last}, block=int(remaining * 1000) + 1, count=100)
        for _, entries in reply or []:
            for entry_id, raw in entries:
                last = entry_id
                for job in job_events(raw):
                    if job["job"] == job_id and job["event"] in kinds:
                        return job["event"]
    raise TimeoutError(f"no event of {sorted(kinds)} for job {job_id} in {WAIT}s")


# -- 1. through the client: arguments, task names, options -------------------------------


def test_arguments_are_run_as_given_or_refused_before_any_redis_call(
    r: redis.Redis, producer: Redwork, offline: Redwork, worker_process: WorkerProcess
) -> None:
    seen: Counter[str] = Counter()

    @settings(FUZZ, max_examples=60)
    @given(argument=arguments, by_keyword=st.booleans())
    def example(argument: Argument, by_keyword: bool) -> None:
        r.flushdb()
        value = argument.value

        def enqueue(task: Any) -> Any:
            return task.enqueue(value=value) if by_keyword else task.enqueue(value)

        if not argument.encodable:
            error = refusal(lambda: enqueue(offline.tasks["echo"]))
            assert isinstance(error, SerializationError), error
            assert "not JSON" in str(error)
            seen["SerializationError"] += 1
            return
        try:
            handle = enqueue(tasks.echo)
        except PayloadTooLarge:
            assert len(orjson.dumps(value)) > LIMIT - ENVELOPE
            # and it was refused before any Redis call
            assert isinstance(refusal(lambda: enqueue(offline.tasks["echo"])), PayloadTooLarge)
            seen["PayloadTooLarge"] += 1
            return
        seen["accepted"] += 1
        assert r.hstrlen(DEFAULT.job_key(handle.id), "data") <= LIMIT
        record = ended(producer, r, "default", handle.id)
        assert record.state is JobState.COMPLETED, record.error
        assert record.result_value() == value

    example()
    assert seen["accepted"] and seen["PayloadTooLarge"] and seen["SerializationError"], seen


# Registered tasks, with what the one argument the fuzz gives them leads to.
REGISTERED = {"echo": "completed", "add": "bad_arguments", "job_info": "bad_arguments"}
task_names = (
    st.just("echo")  # registered names are as likely as the other two kinds together
    | st.sampled_from(sorted(REGISTERED))
    | st.sampled_from(["", " ", "{", "}", "{echo}", "echo:", "echo ", "Echo", "tests.echo"])
    # Other registered tasks do other things (poison kills its worker): left out.
    | st.text(max_size=40).filter(lambda n: n in REGISTERED or n not in tasks.app.tasks)
)


def test_any_task_name_is_accepted_and_ends_run_or_unknown(
    r: redis.Redis, producer: Redwork, worker_process: WorkerProcess
) -> None:
    """Task names are free text: never refused by the producer; a name the worker does
    not know fails as unknown_task, naming it."""
    seen: Counter[str] = Counter()

    @FUZZ
    @given(name=task_names, value=json_values)
    def example(name: str, value: Any) -> None:
        r.flushdb()
        job = tasks.echo.prepare(value)
        job.task = name
        (handle,) = producer.enqueue_many([job])
        record = ended(producer, r, "default", handle.id)
        outcome = record.state.value if record.state is JobState.COMPLETED else record.reason
        seen[outcome or "none"] += 1
        assert outcome == REGISTERED.get(name, "unknown_task"), record.error
        if outcome == "unknown_task":
            assert repr(name) in (record.error or "")
        if outcome == "completed":
            assert record.result_value() == value

    example()
    assert set(seen) == {"completed", "bad_arguments", "unknown_task"}, seen


invalid_names = st.sampled_from(["", "x" * 129, "x\n", "a b", "{q}", "é", "@raw-1", 5]) | (
    st.text(max_size=40).filter(lambda s: not NAME_PATTERN.fullmatch(s))
)
valid_names = st.from_regex(NAME_PATTERN, fullmatch=True)
valid_keys = (
    st.text(min_size=1, max_size=30)
    | st.sampled_from(["{", "}", "{default}", ":", " ", "x" * MAX_KEY_LENGTH])
    | st.sampled_from(["é", "😀"]).map(lambda c: c * MAX_KEY_LENGTH)
)
invalid_keys = st.sampled_from(["", "x" * (MAX_KEY_LENGTH + 1), 5, b"k", ["k"]])
priorities = st.integers(0, MAX_PRIORITY)
bad_priorities = (
    st.integers(max_value=-1)
    | st.integers(min_value=MAX_PRIORITY + 1)
    | st.sampled_from([True, False, 1.0, "1"])
)
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
too_far = st.floats(MAX_DELAY + 1, 1e15)
past = st.floats(-1e9, 0).map(lambda s: time.time() + s) | st.datetimes(
    max_value=datetime(2000, 1, 1)
).map(lambda d: d.replace(tzinfo=UTC))

VALID: dict[str, st.SearchStrategy[Any]] = {
    "queue": st.sampled_from(SERVED) | valid_names,
    "job_id": valid_names,
    "priority": priorities,
    "retry_priority": priorities | st.none(),
    # Runs now or soon (at most 0.2 s), or long after the test (then it is cancelled).
    # Past MAX_DELAY (10 years) a countdown is refused: see INVALID.
    "countdown": st.floats(-1e9, 0.2) | st.floats(5, MAX_DELAY) | st.none(),
    "eta": past | st.none(),
    "key": valid_keys,
    "idempotency_key": valid_keys,
    "unique_key": valid_keys,
    "unique": st.sampled_from(["reject", "replace"]),
    "group": valid_keys,
    "timeout": st.none() | st.floats(5, 1e6),  # wrong types are not refused: see the xfails
}


@dataclass(frozen=True)
class Refused:
    """How an invalid option must be refused: the error, and a word its message holds."""

    error: type[Exception]
    word: str


INVALID: dict[str, tuple[st.SearchStrategy[Any], Refused]] = {
    "queue": (invalid_names | st.none(), Refused(InvalidName, "queue name")),
    "job_id": (invalid_names, Refused(InvalidName, "job id")),  # None: one is generated
    "priority": (bad_priorities | st.none(), Refused(ValueError, "priority")),
    "retry_priority": (bad_priorities, Refused(ValueError, "retry priority")),
    "countdown": (non_finite | too_far, Refused(ValueError, "countdown")),
    "eta": (non_finite, Refused(ValueError, "eta")),
    "key": (invalid_keys, Refused(InvalidName, "key")),
    "idempotency_key": (invalid_keys, Refused(InvalidName, "idempotency key")),
    "unique_key": (invalid_keys, Refused(InvalidName, "unique key")),
    "group": (invalid_keys, Refused(InvalidName, "group")),
    "unique": (
        st.text(max_size=10).filter(lambda s: s not in ("reject", "replace")),
        Refused(ValueError, "unique policy"),
    ),
}
BOTH_DELAYS = Refused(ValueError, "countdown or eta")
broken = st.sampled_from(sorted(INVALID)).flatmap(
    lambda name: INVALID[name][0].map(lambda value: (name, value))
)


def test_options_are_refused_with_a_typed_error_or_the_job_ends_once(
    r: redis.Redis, producer: Redwork, offline: Redwork, worker_process: WorkerProcess
) -> None:
    """Valid options, and now and then one invalid (or both countdown and eta)."""
    seen: Counter[str] = Counter()

    @settings(FUZZ, max_examples=120)
    @given(
        chosen=st.fixed_dictionaries({}, optional=VALID),
        bad=st.none() | broken,
        value=json_values,
    )
    def example(chosen: dict[str, Any], bad: tuple[str, Any] | None, value: Any) -> None:
        r.flushdb()
        expected = []  # the error may be about any of these, whichever is checked first
        if bad is not None:
            chosen[bad[0]] = bad[1]
            expected.append(INVALID[bad[0]][1])
        if chosen.get("countdown") is not None and chosen.get("eta") is not None:
            expected.append(BOTH_DELAYS)
        if expected:
            error = refusal(lambda: offline.tasks["echo"].options(**chosen).enqueue(value))
            assert any(isinstance(error, e.error) and e.word in str(error) for e in expected), (
                f"{chosen}: {error!r}, not one of {expected}"
            )
            seen[type(error).__name__] += 1
            return
        handle = tasks.echo.options(**chosen).enqueue(value)
        if "job_id" in chosen:
            assert handle.id == chosen["job_id"]
        countdown = chosen.get("countdown")
        record = finish(producer, r, handle, runs=countdown is None or countdown <= 0.2)
        if record.state is JobState.COMPLETED:
            assert record.result_value() == value
        seen[record.state.value] += 1

    example()
    assert seen.keys() == {"completed", "cancelled", "InvalidName", "ValueError"}, seen


# -- 2. raw, as a foreign producer -------------------------------------------------------


@dataclass(frozen=True)
class Written:
    """What a foreign producer wrote, and how it must end: 'completed' (with `value` as
    its result) or a failure reason. `raw`: pushed straight onto the wait list, not
    given to the enqueue script with a job id."""

    data: bytes
    expect: str
    value: Any = None
    raw: bool = False


def is_json_object(data: bytes) -> bool:
    try:
        return isinstance(orjson.loads(data), dict)
    except orjson.JSONDecodeError:
        return False


any_json = json_values
non_list = json_values.filter(lambda v: not isinstance(v, list))
non_dict = json_values.filter(lambda v: not isinstance(v, dict))
# Fields a worker reads only after a failure, or never; junk in them changes nothing.
# max_attempts is kept to values that allow no retry (a huge backoff: see the xfails).
junk_fields = st.fixed_dictionaries(
    {},
    optional={
        "priority": any_json,
        "max_attempts": st.sampled_from([1, 0, -3, None, "many", [2], {}]),
        "backoff": any_json,
        "backoff_max": any_json,
        "jitter": any_json,
        "key": any_json,
        "idempotency_key": any_json,
        "unique_key": any_json,
        "group": any_json,
        "workflow": any_json,
        "meta": any_json,
        "enqueued_at": any_json,
        "timeout": st.none() | st.integers(5, 10**6) | st.just("30"),
        "x-extra": any_json,
    },
)


@st.composite
def documents(draw: st.DrawFn) -> Written:
    """A job document, as a foreign producer might write one: valid (with junk in the
    fields that do not matter), or broken in one way."""
    value = draw(json_values)
    doc: dict[str, Any] = {
        **draw(junk_fields),
        "v": 1,
        "id": draw(any_json),  # required, but the hash's id is the one that counts
        "task": "echo",
        "queue": draw(any_json),
    }
    if draw(st.booleans()):
        doc["args"] = [value]
    else:
        doc["kwargs"] = {"value": value}
    flaw = draw(
        st.sampled_from(
            [
                *["none"] * 4,  # valid documents, with junk where it does not matter
                "version",
                "missing",
                "task_type",
                "args_type",
                "kwargs_type",
                "timeout",
                "unknown_task",
                "bad_arguments",
                "raises",
                "too_large",
            ]
        )
    )
    expect = "decode_error"
    if flaw == "none":
        expect = "completed"
    elif flaw == "version":
        doc["v"] = draw(any_json.filter(lambda v: v != 1))  # true and 1.0 equal 1
    elif flaw == "missing":
        del doc[draw(st.sampled_from(["v", "id", "task", "queue"]))]
    elif flaw == "task_type":
        doc["task"] = draw(any_json.filter(lambda v: not isinstance(v, str)))
    elif flaw == "args_type":
        doc["args"] = draw(non_list)
    elif flaw == "kwargs_type":
        doc["kwargs"] = draw(non_dict)
    elif flaw == "timeout":
        doc["timeout"] = draw(st.sampled_from(["soon", "", "1s"]) | st.lists(scalars, max_size=2))
    elif flaw == "unknown_task":
        doc["task"] = draw(text.filter(lambda name: name not in tasks.app.tasks))
        expect = "unknown_task"
    elif flaw == "bad_arguments":
        doc["args"], doc["kwargs"] = draw(
            st.sampled_from([([], {}), ([1, 2], {}), ([1], {"value": 2}), ([], {"nope": 1})])
        )
        expect = "bad_arguments"
    elif flaw == "raises":
        doc["task"], doc["args"], doc["kwargs"] = "boom", [draw(text)], {}
        expect = "exception"
    elif flaw == "too_large":
        doc["meta"] = {"pad": "x" * LIMIT}
        expect = "payload_too_large"
    return Written(orjson.dumps(doc), expect, value)


not_json_objects = st.binary(max_size=64).filter(lambda b: not is_json_object(b))
long_bytes = st.tuples(st.binary(min_size=1, max_size=8), st.integers(1, 1200)).map(
    lambda t: t[0] * t[1]
)
writes = (
    documents()
    | not_json_objects.map(lambda b: Written(b, "decode_error"))
    | non_dict.map(lambda v: Written(orjson.dumps(v), "decode_error"))
    | (st.binary(max_size=64) | long_bytes).map(lambda b: Written(b, "decode_error", raw=True))
)


def test_foreign_writes_end_in_the_failed_store_with_a_reason_and_the_worker_carries_on(
    r: redis.Redis, producer: Redwork, worker_process: WorkerProcess
) -> None:
    seen: Counter[str] = Counter()

    @settings(FUZZ, max_examples=80)
    @given(
        batch=st.lists(
            st.tuples(
                writes,
                valid_names,  # the job's id, if it goes through the enqueue script
                st.none() | st.sampled_from(["k", "{k}", "é"]),  # its key: one line per key
                priorities,
            ),
            min_size=1,
            max_size=8,
            unique_by=lambda w: w[1],
        )
    )
    def example(batch: list[tuple[Written, str, str | None, int]]) -> None:
        # A raw entry that is the id of a job is not raw: see the xfails.
        assume(not {w.data for w, *_ in batch if w.raw} & {i.encode() for _, i, *_ in batch})
        r.flushdb()
        jobs: dict[str, Written] = {}
        raws: list[bytes] = []
        for written, job_id, key, priority in batch:
            if written.raw:
                # As enqueue does: push, then wake an idle worker.
                r.pipeline().lpush(DEFAULT.wait, written.data).zadd(
                    DEFAULT.marker, {"m": 0}
                ).execute()
                raws.append(written.data)
                continue
            job = NewJob(job_id, written.data, key, None, priority)
            assert run(r, DEFAULT.enqueue([job], DAY_MS)) == [Code.OK]
            jobs[job_id] = written
        for job_id, written in jobs.items():
            record = ended(producer, r, "default", job_id)
            outcome = record.state.value if record.state is JobState.COMPLETED else record.reason
            assert outcome == written.expect, f"{written.data!r}: {record.error}"
            assert record.data == written.data  # kept as written
            if outcome == "completed":
                assert record.result_value() == written.value
            seen[outcome or "none"] += 1
        # Raw entries are filed as @raw-1, @raw-2... (the counter starts again with the
        # database), each with the first bytes of the entry.
        kept = []
        for n in range(1, len(raws) + 1):
            wait_for_event(r, "default", "failed", f"@raw-{n}", timeout=WAIT)
            record = producer.client.job("default", f"@raw-{n}")
            check_ended(r, record)
            assert record.reason == "decode_error"
            assert record.as_dict()["raw"] is not None
            kept.append(record.data)
        assert sorted(kept) == sorted(data[:RAW_KEPT] for data in raws)
        seen["raw"] += len(raws)

    example()
    assert set(seen) >= {
        "completed",
        "decode_error",
        "unknown_task",
        "bad_arguments",
        "exception",
        "payload_too_large",
        "raw",
    }, seen
    # The worker carries on: good jobs after all that still run.
    handles = producer.enqueue_many(tasks.add.prepare(i, i) for i in range(100))
    assert [h.result(timeout=WAIT) for h in handles] == [2 * i for i in range(100)]


# -- 3. keys of two queues never mix -----------------------------------------------------


def hash_tag(key: bytes) -> str | None:
    name = key.decode()
    start = name.find("{")
    return name[start + 1 : name.index("}", start)] if start >= 0 else None


def test_the_same_job_id_and_keys_in_two_queues_stay_apart(
    r: redis.Redis, producer: Redwork, worker_process: WorkerProcess
) -> None:
    """Same job id, ordering key and idempotency key in two queues: two jobs, each in its
    own keys. One completes, the other fails; each queue's failed store holds only its
    own. Queues are drawn from those the worker serves (the jobs run) and at random (the
    jobs wait, and are cancelled)."""
    seen: Counter[str] = Counter()

    @settings(FUZZ, max_examples=50)
    @given(
        queues=st.lists(st.sampled_from(SERVED) | valid_names, min_size=2, max_size=2, unique=True),
        job_id=valid_names,
        key=valid_keys,
        value=json_values,
    )
    def example(queues: list[str], job_id: str, key: str, value: Any) -> None:
        r.flushdb()
        first, second = queues
        same = {"job_id": job_id, "key": key, "idempotency_key": key}
        good = tasks.echo.options(queue=first, **same).enqueue(value)
        job = tasks.echo.options(queue=second, **same).prepare(value)
        job.task = "not registered"
        (bad,) = producer.enqueue_many([job])
        assert good.id == bad.id == job_id
        done, failed = finish(producer, r, good), finish(producer, r, bad)
        assert orjson.loads(done.data)["queue"] == first
        assert orjson.loads(failed.data)["queue"] == second
        if first in SERVED:
            assert (done.state, done.result_value()) == (JobState.COMPLETED, value)
        if second in SERVED:
            assert (failed.state, failed.reason) == (JobState.FAILED, "unknown_task")
        assert run(r, Queue(first).failed_ids()) == []
        assert run(r, Queue(second).failed_ids()) == ([job_id] if second in SERVED else [])
        assert {hash_tag(k) for k in r.scan_iter(match="rw:{*")} == {first, second}
        seen[f"{first in SERVED} {second in SERVED}"] += 1

    example()
    assert len(seen) == 4, seen  # both run, neither runs, one or the other


# -- what the fuzzing found, each fixed: minimal examples ---------------------------------


def test_a_non_finite_float_argument_is_refused_not_turned_into_null(producer: Redwork) -> None:
    """orjson writes NaN and infinities as null: the task would have received None."""
    with pytest.raises(SerializationError, match="not a finite number"):
        tasks.echo.enqueue(math.inf)
    with pytest.raises(SerializationError, match=r"\['a'\]\[1\] = nan"):
        to_json({"a": [1.0, math.nan]}, "a value")


def test_a_job_delayed_past_the_year_5138_can_still_be_read(
    r: redis.Redis, producer: Redwork
) -> None:
    """enqueue.lua wrote due_at with Lua's tostring ('%.14g'): from 1e14 ms it read
    '2.53e+14', which no reader could parse. A producer now refuses delays beyond
    MAX_DELAY; a foreign producer's far delay is still stored readably."""
    with pytest.raises(ValueError, match="eta"):
        tasks.echo.options(eta=datetime(9999, 1, 1, tzinfo=UTC)).enqueue(1)
    far = 10**14  # ms from now: beyond the year 5138
    job = NewJob("far", tasks.echo.prepare(1).encode(LIMIT), delay_ms=far)
    assert run(r, DEFAULT.enqueue([job], DAY_MS)) == [Code.OK]
    due_at = run(r, DEFAULT.job("far")).due_at
    assert due_at is not None and due_at > far


def test_a_job_enqueued_with_an_id_outside_the_name_set_still_ends(
    r: redis.Redis, producer: Redwork, worker_process: WorkerProcess
) -> None:
    """It was stored 'waiting', and fetch filed its wait-list entry as raw: the job
    stayed 'waiting' for ever. Now the client and the script refuse it."""
    odd = tasks.echo.prepare(1)
    odd.id = "a b"
    with pytest.raises(InvalidName, match="job id"):
        producer.enqueue_many([odd])
    with pytest.raises(redis.exceptions.ResponseError, match="invalid job id"):
        run(r, DEFAULT.enqueue([NewJob("a b", odd.encode(LIMIT))], DAY_MS))
    assert tasks.echo.enqueue(2).result(timeout=WAIT) == 2
    assert run(r, DEFAULT.job("a b")) is None


def test_a_wait_list_entry_naming_a_completed_job_does_not_run_it_again(
    r: redis.Redis, producer: Redwork, worker_process: WorkerProcess
) -> None:
    first = tasks.echo.enqueue(1)
    assert first.result(timeout=WAIT) == 1
    r.pipeline().lpush(DEFAULT.wait, first.id).zadd(DEFAULT.marker, {"m": 0}).execute()
    assert tasks.echo.enqueue(2).result(timeout=WAIT) == 2  # fetched after it
    assert terminal_events(r, "default", first.id) == ["completed"]
    assert first.info().attempt == 1


def test_a_retry_delay_that_overflows_still_reports_the_run(
    r: redis.Redis, producer: Redwork, worker_process: WorkerProcess
) -> None:
    doc = {"v": 1, "id": "x", "task": "boom", "queue": "default", "max_attempts": 2}
    doc |= {"backoff": 1e308, "backoff_max": 1e308}
    assert run(r, DEFAULT.enqueue([NewJob("x", orjson.dumps(doc))], DAY_MS)) == [Code.OK]
    assert first_event(r, "x", {"retry_scheduled", "failed", "recovered"}) != "recovered"


def test_workflow_ids_do_not_collide_with_the_lists_of_other_workflows(
    producer: Redwork,
) -> None:
    first = producer.submit(chain(tasks.echo.s(1), tasks.echo.s(2)), workflow_id="w")
    try:
        other = producer.submit(chain(tasks.echo.s(3), tasks.echo.s(4)), workflow_id="w:nodes")
    except (WorkflowError, InvalidName):
        return  # refusing the id is as good
    assert len(first.info().nodes) == len(other.info().nodes) == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("countdown", "5"),  # TypeError "must be real number, not str", from math.isfinite
        ("retries", "x"),  # ValueError "invalid literal for int()", naming no option
        ("timeout", "x"),  # accepted; the worker fails the job as decode_error
    ],
)
def test_an_option_of_the_wrong_type_is_refused_naming_it(
    offline: Redwork, name: str, value: str
) -> None:
    error = refusal(lambda: offline.tasks["echo"].options(**{name: value}).enqueue(1))
    assert isinstance(error, TypeError) and name in str(error), repr(error)
