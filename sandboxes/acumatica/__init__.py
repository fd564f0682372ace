"""Acumatica contract-based REST API sandbox: see ``app.py`` (routes, queries, actions, limits), ``documents.py``
(document states), ``filter.py`` ($filter), ``auth.py`` (OAuth 2.0 and the cookie session), ``push.py`` (push
notifications) and ``model.py`` (value objects, field shapes from the vendor's OpenAPI document, the store)."""

from sandboxes.acumatica.app import AcumaticaSandbox, Limits

__all__ = ["AcumaticaSandbox", "Limits"]
