"""Shared test configuration: pytester runs the pytest plugin in real child sessions."""

pytest_plugins = ["pytester"]
