"""deepalign: align DeepSeek-V2-style MoE + MLA language models with SFT and two-stage GRPO.

This package holds the command line (deepalign/cli.py) and the recipe loader
(deepalign/recipe.py); the model lives in policy/, and each stage in its own top-level package.
"""

__version__ = "0.1.0"
