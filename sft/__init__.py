"""sft: supervised fine-tuning of the policy on chat mixtures (assistant-only loss, packing)."""
