import pytest


@pytest.fixture(autouse=True)
def fresh_rate_limits():
    """Each test starts with no counts: many tests poll the OTA for the same MAC within seconds."""
    from devices import rate_limits

    rate_limits.reset()
    yield
    rate_limits.reset()
