"""`deepalign policy convert`: a dense Llama-family model into DeepSeek-V2, healed (convert/run.py)."""
