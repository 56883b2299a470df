"""Offline GPU memory prediction (simulate), planning (plan) and run-time protection (guard)."""
