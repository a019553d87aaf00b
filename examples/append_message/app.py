"""Seed 000 with redwork: an append-message event appends its text to a stored message
one character per step, saving each step to a versioned state store.

What makes it safe when the same event reaches two workers at once:
- the event id is the job's idempotency key: a second publish of e-1 adds nothing;
- the message id is the job's key: events for one message run one at a time, in order;
- every save is fenced by the job's lease: a worker that lost its job cannot write.
"""

from __future__ import annotations

import os
import time
from typing import Any

from redwork import JobHandle, Redwork

# The state keys are "goapp||<message id>", as Dapr's Redis state store lays them out.
app = Redwork("goapp")
store = app.state("redis-state")
STEP_SECONDS = float(os.environ.get("APPEND_STEP_SECONDS", "0.2"))


@app.task(name="append-message")
def append_message(event: dict[str, Any]) -> int:
    """Append event["message"] to the message, one character per saved step; returns the
    message's final version."""
    item = store.get(event["message_id"])
    if item is None:
        raise LookupError(f"no message {event['message_id']}")
    value, etag = item.value, item.etag
    for character in event["message"]:
        value = {**value, "message": value["message"] + character}
        etag = store.save(event["message_id"], value, etag=etag)
        time.sleep(STEP_SECONDS)
    return etag


def publish(event: dict[str, Any]) -> JobHandle:
    """What seed 000's POST /append-message does: hand the event to a worker."""
    options = append_message.options(key=event["message_id"], idempotency_key=event["event_id"])
    return options.enqueue(event)
