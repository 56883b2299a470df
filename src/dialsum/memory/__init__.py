"""Offline GPU memory and time prediction: simulate a step on fake tensors, then plan.

Prediction only: nothing here runs a real step. The run applies a plan in
``dialsum.training.settings``; the checks against real runs live in ``dialsum.checks``.
"""
