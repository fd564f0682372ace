"""Dagster-aware factories (the registry module named in [tool.dg.project])."""

from connector_pipelines.components.integration_pair import IntegrationPairComponent

__all__ = ["IntegrationPairComponent"]
