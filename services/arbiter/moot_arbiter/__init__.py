"""arbiter: folds call outcomes into run state (NATS KV, compare-and-set) and publishes what follows."""
