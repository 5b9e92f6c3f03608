"""optlab's private internals: the helpers that several modules share.

Each helper has one home here (`numerics`, `tree`, `random`, `dtypes`), so the
modules import it under one name instead of keeping their own copies. Names
in this package carry no leading underscore, but the package is private: it is
no part of optlab's API and may change without notice. The few helpers that
are public (`optlab.safe_square`, `optlab.bias_correction`, ...) are re-exported
by the primitives modules that document them.
"""
