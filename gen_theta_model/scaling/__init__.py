"""Data scaling laws, ossification and data-mixture ablations (docs/scaling.md)."""
