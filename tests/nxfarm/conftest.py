import pytest

from .farm_procs import LocalFarm


@pytest.fixture
def farm(tmp_path):
    """This machine's farm as separate processes on 127.0.0.1: cache server, scheduler (with its
    run store and pages), two agents of two slots. A module may define its own `farm`."""
    farm = LocalFarm(tmp_path / "farm")
    farm.start_cache()
    farm.start_scheduler()
    farm.start_agent("agent-1")
    farm.start_agent("agent-2")
    yield farm
    farm.stop()
