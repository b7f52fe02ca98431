"""End-to-end SFT runs on the tiny policy: loss falls, exact resume after SIGKILL, FSDP2 over gloo
on 2 processes equals one process, LoRA."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "policy": {"name": "tiny", "moe": {"token_dropping": False}},
    "data": {"source": "builtin:arithmetic", "num_examples": 600, "max_length": 128},
    "train": {"micro_batch_size": 4, "grad_accum": 2, "threads": 1},
    "optim": {"lr": 2e-3, "warmup_steps": 2},
    "log": {"every": 1, "progress": False},
}


def _recipe(tmp_path: Path, name: str, **sections) -> Path:
    data = {k: dict(v) for k, v in BASE.items()}
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _cli(*args: str, torchrun: int = 0) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torchrun}",
               "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", "-m", "deepalign.cli", *args]
    else:
        cmd = [sys.executable, "-m", "deepalign.cli", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run(*args: str, torchrun: int = 0) -> str:
    proc = _cli(*args, torchrun=torchrun)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    """A saved checkpoint's weights as plain transformers loads them."""
    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


def test_loss_falls_logs_and_saves_hf_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out_dir = tmp_path / "run"
    recipe = _recipe(tmp_path, "r", train={"output_dir": str(out_dir), "max_steps": 30}, optim={"lr": 3e-3},
                     policy={"name": "tiny", "moe": {"token_dropping": True}})
    _run("sft", str(recipe))
    events = EventAccumulator(str(out_dir / "tensorboard"))
    events.Reload()
    loss = [e.value for e in events.Scalars("train/loss")]
    assert len(loss) == 30
    assert sum(loss[-5:]) / 5 < 0.6 * sum(loss[:5]) / 5  # visibly falling
    tags = set(events.Tags()["scalars"])
    assert {"train/lr", "train/grad_norm", "train/tokens_per_second", "moe/expert_balance_loss",
            "moe/device_balance_loss", "moe/communication_balance_loss", "moe/load_imbalance",
            "moe/drop_rate"} <= tags
    assert max(e.value for e in events.Scalars("moe/drop_rate")) > 0  # token dropping on in training
    assert "moe/expert_load" in events.Tags()["histograms"]
    model = AutoModelForCausalLM.from_pretrained(out_dir / "final")
    assert type(model).__name__ == "DeepseekV2ForCausalLM"


def test_killed_run_resumes_to_identical_weights(tmp_path):
    steps = {"max_steps": 12, "save_every": 3, "keep_checkpoints": 2}
    straight = tmp_path / "straight"
    _run("sft", str(_recipe(tmp_path, "a", train={**steps, "output_dir": str(straight)})))

    killed = tmp_path / "killed"
    recipe = _recipe(tmp_path, "b", train={**steps, "output_dir": str(killed)})
    proc = _cli("sft", str(recipe))
    deadline = time.time() + 300
    while not (killed / "step-0000006" / "trainer_state.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before its step-6 checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()
    out = _run("sft", str(recipe))
    assert "resumed from" in out
    a, b = _weights(straight / "final"), _weights(killed / "final")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_fsdp2_two_processes_match_one_process(tmp_path):
    one = tmp_path / "one"
    two = tmp_path / "two"
    _run("sft", str(_recipe(tmp_path, "one", train={"output_dir": str(one), "max_steps": 4, "grad_accum": 2})))
    _run("sft", str(_recipe(tmp_path, "two", train={"output_dir": str(two), "max_steps": 4, "grad_accum": 1})),
         torchrun=2)
    a, b = _weights(one / "final"), _weights(two / "final")
    base = _weights_of_tiny()
    moved = 0
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=2e-6, msg=name)
        moved += int(not torch.equal(a[name], base[name]))
    assert moved > len(a) // 2  # the comparison is over trained weights, not the initial ones


def _weights_of_tiny() -> dict[str, torch.Tensor]:
    from policy.load import load_policy

    model, _ = load_policy("tiny")
    return model.state_dict()


def test_lora_trains_adapters_and_saves_merged_weights(tmp_path):
    out_dir = tmp_path / "lora"
    _run("sft", str(_recipe(tmp_path, "lora", train={"output_dir": str(out_dir), "max_steps": 3}, optim={"lr": 1e-2},
                            lora={"enabled": True, "r": 4, "alpha": 8})))
    assert (out_dir / "final" / "adapter" / "adapter_config.json").exists()
    merged = _weights(out_dir / "final")
    base = _weights_of_tiny()
    assert "model.layers.0.self_attn.q_b_proj.weight" in merged  # plain names: LoRA merged in
    o_proj = "model.layers.0.self_attn.o_proj.weight"
    assert not torch.equal(merged[o_proj], base[o_proj])
    for frozen in ("model.layers.1.mlp.experts.gate_up_proj", "model.layers.1.mlp.gate.weight", "lm_head.weight"):
        assert torch.equal(merged[frozen], base[frozen]), frozen


def test_lora_on_experts_with_fsdp2_over_two_processes_equals_one(tmp_path):
    from safetensors.torch import load_file

    lora = {"enabled": True, "r": 4, "alpha": 8, "routed_experts": True}
    one, two = tmp_path / "one", tmp_path / "two"
    _run("sft", str(_recipe(tmp_path, "one", train={"output_dir": str(one), "max_steps": 3, "grad_accum": 2},
                            optim={"lr": 1e-2}, lora=lora)))
    _run("sft", str(_recipe(tmp_path, "two", train={"output_dir": str(two), "max_steps": 3, "grad_accum": 1},
                            optim={"lr": 1e-2}, lora=lora)), torchrun=2)
    a, b = (load_file(d / "final" / "adapter" / "adapter_model.safetensors") for d in (one, two))
    assert a.keys() == b.keys() and any("experts" in k for k in a)
    for key in a:  # Adam turns float-order noise in near-zero gradients into small steps: atol 1e-4 at lr 1e-2
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4, msg=key)
    merged, base = _weights(two / "final"), _weights_of_tiny()
    assert not torch.equal(merged["model.layers.1.mlp.experts.gate_up_proj"],
                           base["model.layers.1.mlp.experts.gate_up_proj"])


def test_bad_recipe_is_rejected_before_training(tmp_path):
    recipe = _recipe(tmp_path, "bad", optim={"lr": "fast"})
    proc = _cli("sft", str(recipe))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert out.strip().endswith("key 'optim.lr' expects a number, got str ('fast')")
