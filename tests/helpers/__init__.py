"""Shared test helpers (test backends and clients in http_backends.py)."""
