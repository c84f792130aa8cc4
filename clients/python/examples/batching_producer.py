"""Publish many tasks with the asyncio client's batching publisher; print each task key.

    python batching_producer.py --target localhost:50051 --user-id 12345 --count 1000

Each publish() returns a future at once; the publisher sends the tasks in PublishBatch calls
of up to 100 and retries each on its own. Exits 1 when any task failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from taskgateway_api.images.v1 import images_pb2

from task_gateway_client import AsyncTaskGatewayClient, TaskGatewayError


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="localhost:50051")
    parser.add_argument("--user-id", required=True)
    parser.add_argument("--count", type=int, default=100)
    args = parser.parse_args(argv)

    token = os.environ.get("TASK_GATEWAY_TOKEN")
    async with AsyncTaskGatewayClient(args.target, token=token) as client:
        # The defaults shown: 100 tasks a call, 10 ms to fill one, publish() waits while
        # 1000 tasks are unanswered (when_full="raise" raises PublisherFull instead).
        publisher = client.publisher(max_batch=100, max_latency=0.01, max_outstanding=1000)
        futures = []
        for index in range(args.count):
            request = images_pb2.GenerateRequest(
                user_id=args.user_id,
                payload=images_pb2.GeneratePayload(
                    model="openrouter::google/gemini-3.1-flash-image-preview",
                    prompt="a lighthouse at dusk",
                    image_name=f"lighthouse-{index}",
                ),
            )
            futures.append(await publisher.submit(request))
        await publisher.close()  # sends what waits, returns once every task has its outcome

    failed = 0
    for future in futures:
        try:
            print(future.result())
        except TaskGatewayError as error:
            failed += 1
            print(f"error {error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
