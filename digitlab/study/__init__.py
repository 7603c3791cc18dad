"""Studies (grids of configs over the one training loop), run through Optuna, and their reports."""
