"""Model organisms: tiny VLMs trained on the synthetic world, shipped with the package."""
