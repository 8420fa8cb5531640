"""OpenTelemetry set-up (one trace per run across the services) and the metric instruments."""
