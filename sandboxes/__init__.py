"""Local emulators of the vendors' APIs and identity providers.

Used by the tests, the benchmarks and the demo. Product code never imports this package: only
configuration (base URLs, authority hosts, CA bundles) points the product at a sandbox.
"""
