"""Explanations of classifier decisions (issue 5)."""
