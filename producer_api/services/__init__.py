"""The API's services, one job each; producer_api/app.py builds them from settings and the routes get
them through producer_api/deps.py. The module map is in docs/architecture.md ("The producer API")."""
