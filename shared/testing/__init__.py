"""Test helpers for moot: an OpenAI-compatible model server that stands in for real providers."""
