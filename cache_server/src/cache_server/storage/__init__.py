"""Storage backends. `base` holds the contract; one backend per module."""
