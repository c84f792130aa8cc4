"""A client of the Task Gateway: typed image-generation tasks over gRPC, one by one or streamed.

    python clients/python/publish_images.py --address localhost:50051 --user-id 12345 \\
        --prompt "a lighthouse at dusk" [--count 3] [--stream] [--idempotency-key KEY]

Prints one line per task: its index and task key, or its error. Exits 1 when any task failed.

What a production client should copy from it:
- a deadline on every call (`timeout=`): the gateway answers only once RabbitMQ confirmed;
- an idempotency key per task, so that a retry after UNAVAILABLE or DEADLINE_EXCEEDED ("the
  outcome is unknown") gets the same task id instead of a second task;
- gRPC's own retries (a service config) for UNAVAILABLE, safe because of that key;
- for many tasks, PublishStream: results come as confirms arrive, matched by index.

It needs grpcio and the contracts package: `pip install ./src/generated` from the gateway's
repository installs `taskgateway_api` (the stubs alone); other languages generate them from proto/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator

import grpc
from google.protobuf import any_pb2
from taskgateway_api.images.v1 import images_pb2, images_pb2_grpc
from taskgateway_api.taskgateway.v1 import gateway_pb2, gateway_pb2_grpc

# Retry UNAVAILABLE (broker away, gateway restarting) with backoff; every task carries an
# idempotency key, so a retry never makes a second task.
SERVICE_CONFIG = {
    "methodConfig": [
        {
            "name": [{"service": "images.v1.ImagesService"}],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.2s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}
DEADLINE_SECONDS = 10.0


def generate_request(args: argparse.Namespace, index: int) -> images_pb2.GenerateRequest:
    return images_pb2.GenerateRequest(
        user_id=args.user_id,
        payload=images_pb2.GeneratePayload(
            model=args.model, prompt=args.prompt, image_name=f"{args.image_name}-{index}"
        ),
        idempotency_key=f"{args.idempotency_key}-{index}",
    )


async def one_by_one(channel: grpc.aio.Channel, args: argparse.Namespace) -> int:
    stub = images_pb2_grpc.ImagesServiceStub(channel)
    failed = 0
    for index in range(args.count):
        try:
            response = await stub.Generate(generate_request(args, index), timeout=DEADLINE_SECONDS)
        except grpc.aio.AioRpcError as error:
            failed += 1
            print(f"{index} error {error.code().name}: {error.details()}")
        else:
            print(f"{index} {response.task_key}")
    return failed


async def streamed(channel: grpc.aio.Channel, args: argparse.Namespace) -> int:
    stub = gateway_pb2_grpc.TaskGatewayServiceStub(channel)

    async def requests() -> AsyncIterator[gateway_pb2.PublishStreamRequest]:
        for index in range(args.count):
            typed = any_pb2.Any()
            typed.Pack(generate_request(args, index))
            yield gateway_pb2.PublishStreamRequest(entry=gateway_pb2.TaskEntry(typed=typed))

    failed = 0
    # A response holds every result that settled at the same time, each with its index.
    async for response in stub.PublishStream(requests(), timeout=DEADLINE_SECONDS):
        for result in response.results:
            if result.WhichOneof("result") == "task_key":
                print(f"{result.index} {result.task_key}")
            else:
                failed += 1
                print(f"{result.index} error {result.error.code}: {result.error.message}")
    return failed


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--address", default="localhost:50051")
    parser.add_argument("--user-id", required=True)
    parser.add_argument("--model", default="openrouter::google/gemini-3.1-flash-image-preview")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--image-name", default="image")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--stream", action="store_true", help="send them on one PublishStream")
    parser.add_argument(
        "--idempotency-key",
        default=str(uuid.uuid4()),
        help="prefix of the tasks' keys; run again with the same one to retry the same tasks",
    )
    args = parser.parse_args(argv)
    options = [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
    ]
    async with grpc.aio.insecure_channel(args.address, options=options) as channel:
        failed = await (streamed if args.stream else one_by_one)(channel, args)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
