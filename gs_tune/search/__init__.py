"""Distributed search: every call into Ray lives in this package."""
