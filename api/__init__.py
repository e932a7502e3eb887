"""HTTP API, auth (tenants, API keys, roles) and the `clearance` command line."""
