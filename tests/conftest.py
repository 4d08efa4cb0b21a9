"""Shared test set-up: fake engines (fault injection), the gateway, the real CPU engines."""

pytest_plugins = ["tests.support.fake_fixtures", "tests.support.gateway_fixtures", "tests.support.engine_fixtures"]
