"""Hydra configs of the stage commands (ff-plan, ff-train, ff-analyze, ff-visualize)."""
