"""Scaling-law fits."""
