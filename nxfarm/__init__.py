"""nx-farm runtime used on the operator box, the agents and the orchestrator."""
