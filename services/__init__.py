"""Backend services: one Ray Serve deployment per backend (issue 3)."""
