"""Evaluation and comparison of checkpoints: suites (suites.py), metrics (metrics.py), the
runner with its per-checkpoint cache (runner.py) and the report (report.py)."""
