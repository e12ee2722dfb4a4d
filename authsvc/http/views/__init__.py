"""HTTP handlers: parse the request, call the service or repository, answer JSON."""
