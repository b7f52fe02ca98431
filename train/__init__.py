"""train: the training core that SFT (sft/), GRPO (grpo/) and reward-model training (rewards/rm_train.py)
share: recipes (recipe.py), the shared recipe sections (config.py), the optimiser and its schedule
(optim.py, schedule.py), process groups and FSDP2 (distributed.py), expert parallelism
(expert_parallel.py), checkpoints (checkpoint.py) and metrics (tracking.py)."""
