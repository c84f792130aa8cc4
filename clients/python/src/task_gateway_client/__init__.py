"""The Task Gateway's Python SDK.

```python
from task_gateway_client import TaskGatewayClient
from taskgateway_api.images.v1 import images_pb2

with TaskGatewayClient("gateway.internal:50051", token="...") as client:
    task_key = client.submit(images_pb2.GenerateRequest(user_id="12345", payload=...))
```

`AsyncTaskGatewayClient` is the same for asyncio; `client.publisher()` batches many tasks;
`task_gateway_client.consumer` (extra `[consumer]`) reads the tasks on the RabbitMQ side.
"""

from task_gateway_client._aio_client import AsyncTaskGatewayClient
from task_gateway_client._aio_publisher import AsyncPublisher
from task_gateway_client._client import TaskGatewayClient
from task_gateway_client._connection import TLSConfig
from task_gateway_client._errors import (
    FieldViolation,
    InvalidTask,
    OutcomeUnknown,
    PermissionDenied,
    PublisherFull,
    QuotaExceeded,
    TaskGatewayError,
    Unauthenticated,
    Unavailable,
)
from task_gateway_client._publisher import Publisher
from task_gateway_client._retry import RetryPolicy

__all__ = [
    "AsyncPublisher",
    "AsyncTaskGatewayClient",
    "FieldViolation",
    "InvalidTask",
    "OutcomeUnknown",
    "PermissionDenied",
    "Publisher",
    "PublisherFull",
    "QuotaExceeded",
    "RetryPolicy",
    "TLSConfig",
    "TaskGatewayClient",
    "TaskGatewayError",
    "Unauthenticated",
    "Unavailable",
]
