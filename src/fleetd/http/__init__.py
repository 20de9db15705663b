"""The HTTP edge: the RPC router, OpenAPI, blob and event streams, limits and headers, metrics exposition."""
