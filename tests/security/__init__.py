"""Regression tests for the hardening issue: each attack that worked before its fix."""
