"""GRPO: the algorithm as pure tensor functions (advantages.py, loss.py, sampling.py), the batch
(batch.py), the learner (learner.py), the processes it runs on (workers.py) and where they run
(cluster.py, the only module that imports Ray), and the loop (driver.py) with what it calls each
step (groups.py, run_log.py, stage.py)."""
