"""deepalign: align DeepSeek-V2-style MoE + MLA language models with SFT and two-stage GRPO.

This package is the application layer: the command line (cli.py), the table of recipe kinds
(kinds.py) and the pipeline that chains stages (pipeline.py). Nothing else imports it: the model
lives in policy/, the training core in train/, and each stage in its own top-level package.
"""

__version__ = "0.1.0"
