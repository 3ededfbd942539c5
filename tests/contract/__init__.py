"""The family contract: every registered tiny variant (`vlm_lens.testing.tiny_variants`) must pass
these checks. See CONTRIBUTING.md, "Adding a model family"."""
