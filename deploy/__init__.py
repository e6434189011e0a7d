"""Deployment files that are generated from code (the Grafana dashboard)."""
