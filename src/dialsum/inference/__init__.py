"""Prediction: token-budget generation batches, OOM-safe generation, the submission CSV.

May import: ``training`` (settings, OOM guard) and everything below it.
"""
