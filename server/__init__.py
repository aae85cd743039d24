"""The HTTP API (Litestar): inserts tasks, answers status, serves results."""
