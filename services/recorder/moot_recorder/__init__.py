"""recorder: writes every run event from JetStream into Postgres (runs, iterations, calls, events)."""
