"""Helpers of tests/test_readme.py: README parsing (markdown.py), the decision on every README
command (decisions.py) and the scratch workspace the commands run in (workspace.py)."""
