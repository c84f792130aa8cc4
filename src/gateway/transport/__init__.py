"""The transports: gRPC and the HTTP shim. The only modules that import grpc's server or aiohttp."""
