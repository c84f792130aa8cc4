"""Publish a typed task and a generic one with the sync client; print their task keys.

    python producer.py --target localhost:50051 --user-id 12345

TASK_GATEWAY_TOKEN, when set, is sent as the bearer token. Exits 2 when the gateway refused
a task, 1 when a task's outcome stayed unknown (run again with the printed key).
"""

from __future__ import annotations

import argparse
import os
import sys

from taskgateway_api.images.v1 import images_pb2

from task_gateway_client import InvalidTask, OutcomeUnknown, TaskGatewayClient, TaskGatewayError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="localhost:50051")
    parser.add_argument("--user-id", required=True)
    args = parser.parse_args(argv)

    with TaskGatewayClient(args.target, token=os.environ.get("TASK_GATEWAY_TOKEN")) as client:
        try:
            # A typed request goes to its own RPC (images.v1.ImagesService/Generate). With no
            # idempotency_key the client makes one, and every retry of this task reuses it.
            image = client.submit(
                images_pb2.GenerateRequest(
                    user_id=args.user_id,
                    payload=images_pb2.GeneratePayload(
                        model="openrouter::google/gemini-3.1-flash-image-preview",
                        prompt="a lighthouse at dusk",
                        image_name="lighthouse",
                    ),
                )
            )
            # Any task type, with its payload as a dict (the generic Publish).
            video = client.publish(
                "videos.generate",
                args.user_id,
                {"model": "veo", "prompt": "waves at night", "video_name": "waves"},
                idempotency_key="waves-at-night-1",  # yours: retrying with it is safe
            )
        except InvalidTask as error:
            for violation in error.violations:
                print(f"invalid {violation.field}: {violation.description}", file=sys.stderr)
            return 2
        except OutcomeUnknown as error:
            print(f"{error}\nretry with idempotency_key={error.idempotency_key}", file=sys.stderr)
            return 1
        except TaskGatewayError as error:
            print(error, file=sys.stderr)
            return 2
    print(image)
    print(video)
    return 0


if __name__ == "__main__":
    sys.exit(main())
