"""Pure metrics on tensors: no model, no hooks."""
