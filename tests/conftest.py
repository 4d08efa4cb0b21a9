"""Shared test set-up: fake engines (fault injection), the gateway, the real CPU engines."""

pytest_plugins = ["fake_fixtures", "gateway_fixtures", "engine_fixtures"]
