"""Training: the engine (one model on tensors on the device)."""
