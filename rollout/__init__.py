"""Rollout: generation engines behind one interface (engine.py). `LocalEngine` (local.py, the one
decode loop, over the decoders of decoders.py) is the embedded default on CPU and single GPUs;
`VLLMEngine` (vllm_engine.py) is the only module that imports vLLM."""
