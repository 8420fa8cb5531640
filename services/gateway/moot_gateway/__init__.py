"""gateway: the HTTP API (runs, SSE event streams, health)."""
