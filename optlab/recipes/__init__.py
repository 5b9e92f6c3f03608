"""Recipes: each seed method as a short chain of primitives, one module per family."""
