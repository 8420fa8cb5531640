"""The `moot` command: `moot up` / `moot demo` (see `moot.devstack`), a client of a running gateway
(`run`, `debate`, `save`, `list`, `remove`, `runs`, `show`) and admin commands (`keys`, `migrate`)."""
