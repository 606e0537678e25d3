"""Long-running consumers: the settlement worker (settlement.py)."""
