"""Consume the gateway's image tasks from RabbitMQ: typed payloads, de-duplicated by task id.

    pip install 'task-gateway-client[consumer]'
    python consumer.py --amqp-url amqp://guest:guest@localhost:5672/ --queue images.queue

Prints `task <task_id> <task_type> <image_name>` per task, and `duplicate <task_id>` for a
copy of a task already done (a producer's retry after an unknown outcome, or a redelivery).
`--exit-after N` stops after N deliveries.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import OrderedDict

import aio_pika
from taskgateway_api.images.v1 import images_pb2

from task_gateway_client.consumer import Task, consume, requeue_once

# Task ids already done. A real service keeps them where its results are (a unique key in its
# database); a bounded memory of recent ids shows the idea.
_RECENT = 10_000


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp-url", default="amqp://guest:guest@localhost:5672/")
    parser.add_argument("--queue", default="images.queue")
    parser.add_argument("--exit-after", type=int, default=0, help="deliveries; 0: run forever")
    args = parser.parse_args(argv)

    done: OrderedDict[str, None] = OrderedDict()
    deliveries = 0
    enough = asyncio.Event()

    async def handle(task: Task) -> None:
        nonlocal deliveries
        deliveries += 1
        if task.task_id in done:
            print(f"duplicate {task.task_id}", flush=True)
        else:
            # The payload is typed by the task type: images.generate gives a GeneratePayload,
            # images.edit an EditPayload. task.traceparent continues the producer's trace.
            # Raising here requeues the task once, then dead-letters it (requeue_once).
            payload = task.payload
            assert isinstance(payload, images_pb2.GeneratePayload | images_pb2.EditPayload)
            print(f"task {task.task_id} {task.task_type} {payload.image_name}", flush=True)
            done[task.task_id] = None
            if len(done) > _RECENT:
                done.popitem(last=False)
        if deliveries == args.exit_after:
            enough.set()

    connection = await aio_pika.connect(args.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=16)
        queue = await channel.get_queue(args.queue)
        consuming = asyncio.create_task(consume(queue, handle, on_error=requeue_once))
        await enough.wait() if args.exit_after else consuming
        consuming.cancel()  # stops taking tasks; the ones under way finish and are acked
        await asyncio.gather(consuming, return_exceptions=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
