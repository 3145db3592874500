"""shadowrl: rehearse rollbacks in a shadow deployment before they are needed."""

__version__ = "0.1.0"
