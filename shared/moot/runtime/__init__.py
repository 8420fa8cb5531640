"""What every service runs on: settings, subjects, NATS wiring, the run store, the model list and
the HTTP side of a worker process (health, readiness, metrics)."""
