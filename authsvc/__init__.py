"""authsvc: an authentication service on aiohttp and PostgreSQL."""

__version__ = "0.1.0"
