"""member-worker: executes model-call jobs from JetStream through litellm."""
