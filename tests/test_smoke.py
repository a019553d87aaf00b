from redwork import Redwork, Worker
from tests import tasks


async def test_async_task_result_round_trip(app: Redwork, worker: Worker) -> None:
    handle = await tasks.add.aenqueue(2, 3)
    assert await app.client.aresult(handle.queue, handle.id, timeout=10) == 5
