"""Commands beside training: the LR range test (train.py --find-lr), the planner (train.py --plan) with its
estimates and measurements, and export (evaluate.py --export)."""
