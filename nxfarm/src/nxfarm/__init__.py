"""nx-farm runtime used on the operator box, the agents and the orchestrator."""

__version__ = "0.1.0"
