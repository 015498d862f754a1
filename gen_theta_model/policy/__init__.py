"""The harmonic policy: tokenizer, encoders, trunk, action head, presets and the Policy wrapper."""
