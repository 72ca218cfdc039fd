"""Training loop, checkpoints, evaluation protocols and testing."""
