"""The policy service: per-call-site backend decisions learned online from feedback (issue 4)."""
