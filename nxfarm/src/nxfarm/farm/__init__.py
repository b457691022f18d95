"""What the orchestrator, the scheduler and the agents share: the task protocol and cluster TLS."""
