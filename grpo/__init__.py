"""GRPO: the algorithm as pure tensor functions (advantages.py, loss.py, sampling.py) and the
driver that runs it over Ray (driver.py, learner.py, workers.py)."""
