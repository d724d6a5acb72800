"""The router service: registers programs, answers frames, forwards feedback (issue 4)."""
