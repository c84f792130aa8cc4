"""The transport-free request path: call context, middleware seam, methods, ingest, window.

Imports the contracts, the errors and the broker interface only; gRPC and HTTP meet it at
`Methods` and `CallContext`.
"""
