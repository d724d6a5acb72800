"""Backend services: one Ray Serve deployment per backend, built from the typed configuration.

Importing this package imports nothing heavy; Ray is imported where applications are built.
"""

from services.app import backend_app, build_backend_app, deployment_options, run_backends, serve_config

__all__ = ["backend_app", "build_backend_app", "deployment_options", "run_backends", "serve_config"]
