"""Multi-turn environments for GRPO: the API and registry (api.py), the token-in/token-out
trajectory runner (trajectories.py) and the built-ins (code_feedback.py, python_tool.py)."""
