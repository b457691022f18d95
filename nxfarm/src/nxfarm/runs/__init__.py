"""Run intelligence: every `nxfarm build` reported to the farm and kept in a SQLite database
beside the scheduler (report.py: the message; store.py: the database; outbox.py: reports kept
on the orchestrator until the farm can take them)."""
