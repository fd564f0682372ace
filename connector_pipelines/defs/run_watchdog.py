"""The project-wide run watchdog (components.run_watchdog): a killed run worker is marked failed in minutes."""

from connector_pipelines.components.run_watchdog import build_run_watchdog

run_watchdog = build_run_watchdog()
