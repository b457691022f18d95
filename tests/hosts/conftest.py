import pytest

from . import testhosts


@pytest.fixture(scope="session")
def testhost_base():
    try:
        testhosts.check_prerequisites()
        testhosts.ensure_base()
    except testhosts.TestHostsUnavailable as exc:
        pytest.skip(f"no test hosts here: {exc}")
    yield
    testhosts.remove_bridge()


@pytest.fixture
def start_host(testhost_base):
    started = []

    def start(name, ip, suite="bookworm"):
        testhosts.ensure_base(suite)  # other releases than the session's base are built on first use
        host = testhosts.start(name, ip, suite)
        started.append(host)
        return host

    yield start
    for host in started:
        testhosts.stop(host)
