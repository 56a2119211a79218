"""vmguard's built-in rules: one module per rule, each registered under the ``guard.rules`` entry points."""
