"""Fixtures every test suite of the repository may use."""

pytest_plugins = ["localinfra.pytest_plugin"]
