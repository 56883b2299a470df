"""Prediction: token-budget generation batches, OOM-safe generation, the submission CSV."""
