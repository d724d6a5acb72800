"""Camera streams: frames that arrive in order from a fixed camera, and what can be saved between them."""
