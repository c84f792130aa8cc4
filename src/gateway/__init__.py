"""Task Gateway: typed gRPC in, RabbitMQ out, nothing acknowledged that the broker did not take."""

__version__ = "0.1.0"
