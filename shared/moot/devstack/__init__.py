"""What only a developer's machine needs: embedded NATS and Postgres, the local model, the test
model server, `moot up` (the stack as supervised processes) and `moot demo`. None of it is
installed in a service image: it comes with the `devstack` extra of the `moot` distribution."""
