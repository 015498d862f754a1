"""The harmonic policy: encoders, trunk, action head, presets and the Policy wrapper."""
