"""Independent NumPy implementations of each recipe, written from the papers.

Nothing here imports optlab. Every reference has the signature

    fn(params, grad_fn, steps, **hyperparameters) -> list of params dicts

where `params` is a dict of float64 arrays, ``grad_fn(params, t)`` returns the
gradient dict at 0-based step t, and the list holds the params after each step.
Defaults are the paper's (or the official code's) and are written here
independently of optlab's.
"""
