"""Primitives: small, pure optax gradient transformations shared by all recipes."""
