"""The durable record in Postgres: the schema (numbered migrations), API keys and the queries
that read runs back."""
