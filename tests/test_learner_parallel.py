"""Learner parallelism over two gloo processes.

- Expert parallelism equals one process holding every expert: the same logits, the same
  gradients (after FSDP2's averaging and the learners' loss scaling), the same weights after an
  AdamW step, and whole tensors in the full state dict.
- Under FSDP2, the learner's shared-prompt forward (two forwards, one backward) gives the
  gradients of one forward over the whole rows."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp

from tests.conftest import small_config

WORLD = 2


def _model():
    from policy.model import DeepseekV2Policy
    from policy.moe import MoEOptions

    torch.manual_seed(0)
    # 8 experts, top-2 of 4 groups: each rank holds 4; no balance losses (they are per rank by design)
    return DeepseekV2Policy(small_config(), MoEOptions(token_dropping=False))


def _loss(model, ids):
    logits = model(input_ids=ids, token_dropping=False).logits.float()
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum")


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK="0")
    torch.set_num_threads(1)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from train.distributed import apply_fsdp, init_distributed, shutdown
    from train.expert_parallel import apply_expert_parallel

    info = init_distributed()
    ids = torch.randint(0, 128, (4, 12), generator=torch.Generator().manual_seed(1))
    mine = ids[rank * 2 : rank * 2 + 2]

    reference = _model()  # every expert on one process, the whole batch
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    with torch.no_grad():
        ref_logits = reference(input_ids=mine, token_dropping=False).logits
    _loss(reference, ids).backward()
    ref_grads = {n: p.grad.clone() for n, p in reference.named_parameters()}
    ref_opt.step()

    model = _model()
    experts = apply_expert_parallel(model, info)
    model = apply_fsdp(model, ignored_params=experts)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with torch.no_grad():
        logits = model(input_ids=mine, token_dropping=False).logits
    (_loss(model, mine) * WORLD).backward()  # FSDP2 averages over ranks; learners scale by W
    grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad) for n, p in
             model.named_parameters()}
    opt.step()
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    shared = _shared_prompt_grads()
    if rank == 0:
        torch.save({"shared": shared, "logits": (logits, ref_logits), "grads": (grads, ref_grads),
                    "experts": len(experts), "local_shape": tuple(next(iter(experts)).to_local().shape),
                    "state": state, "ref_state": reference.state_dict()}, os.path.join(out_dir, "result.pt"))
    shutdown(info)


def _shared_prompt_grads() -> tuple[torch.Tensor, torch.Tensor]:
    """Full gradients of an FSDP2 Llama's completion log-probs, with and without shared prompts."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from grpo.batch import build_batch
    from policy.logprobs import completion_logprobs
    from rollout.engine import Rollout
    from train.distributed import apply_fsdp

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = apply_fsdp(LlamaForCausalLM(config))
    model.set_attn_implementation("eager")
    prompts, completions = [[5, 6, 7, 8, 9], [11, 12]], [[20, 21, 22, 2], [23, 24], [25], [26, 27, 28], [30, 31], [33]]
    rollout = Rollout([prompts[i // 3] for i in range(6)], completions, [[0.0] * len(c) for c in completions],
                      ["stop"] * 6, [""] * 6)
    batch = build_batch(rollout, torch.zeros(6), pad_id=96)
    grads = []
    for share in (False, True):
        model.zero_grad()
        logp, _ = completion_logprobs(model, batch.input_ids, batch.attention_mask,
                                      batch.completion_width, 1.0, share_prompts=share)
        (logp * batch.completion_mask).sum().backward()
        grads.append(torch.cat([p.grad.full_tensor().flatten() for p in model.parameters()]))
    return grads[0], grads[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_learners_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    r = torch.load(tmp_path / "result.pt", weights_only=False)
    assert r["experts"] == 2  # gate_up and down of the one MoE layer
    assert r["local_shape"][0] == 4  # half of the 8 routed experts
    logits, ref_logits = r["logits"]
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    grads, ref_grads = r["grads"]
    assert set(grads) == set(ref_grads)
    assert any("experts.gate_up_proj" in n for n in grads)
    for name, ref in ref_grads.items():
        torch.testing.assert_close(grads[name], ref, rtol=1e-4, atol=1e-6, msg=name)
    for name, ref in r["ref_state"].items():  # whole tensors after one AdamW step, equal to one process's
        assert r["state"][name].shape == ref.shape, name
        torch.testing.assert_close(r["state"][name], ref, rtol=1e-4, atol=1e-6, msg=name)
    full_rows, shared = r["shared"]
    assert full_rows.abs().max() > 0.1
    torch.testing.assert_close(shared, full_rows, rtol=1e-4, atol=1e-5)
