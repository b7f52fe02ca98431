"""The rollout engine: decoders equal the model's own forward; the log-probs it stores equal the
learner's; stop strings, seeding, weight loading with checksums; dense experts equal the loop."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from data_tools.chat import encode_prompts
from grpo.batch import build_batch
from policy.experts import dense_experts_forward, loop_experts_forward
from policy.load import load_policy
from policy.logprobs import completion_logprobs
from policy.packed_linear import MIN_PACKED_ELEMENTS, PackedLinear
from rollout.engine import Rollout, SamplingConfig, weights_checksum
from rollout.kv_decode import LlamaDecoder
from rollout.local import MIN_SHARED_PREFIX, LocalEngine, _common_prefix, left_pad
from rollout.sampling import BLOCK, inverse_cdf, sample_with_logprob


def _small_llama(hidden: int = 64, intermediate: int = 96):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("hidden, intermediate", [(64, 96), (256, 512)])  # the second packs its gate/up matrices
def test_llama_decoder_matches_model_forward_with_left_padding(hidden, intermediate):
    model = _small_llama(hidden, intermediate)
    rows = [[5, 6, 7, 8, 9], [11, 12]]
    ids, valid = left_pad(rows, 0)
    decoder = LlamaDecoder(model)
    packed = [p.packed is not None for p in decoder.layers[0]]
    assert packed == ([False] * 4 if hidden == 64 else [False, False, True, False])
    cache = decoder.allocate(2, 12)
    logits = decoder.forward(ids, cache, valid)
    step = decoder.forward(torch.tensor([[3], [4]]), cache)[:, -1]
    for i, row in enumerate(rows):
        full = model(torch.tensor([row + [3 + i]])).logits[0]
        assert torch.allclose(logits[i, -1], full[-2], atol=1e-5)
        assert torch.allclose(step[i], full[-1], atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(64, 32), (800, 256)])
def test_packed_linear_equals_f_linear(shape, dtype):
    torch.manual_seed(0)
    weight, bias = torch.randn(shape, dtype=dtype), torch.randn(shape[0], dtype=dtype)
    layer = PackedLinear(weight, bias)
    # bf16 is packed only where oneDNN has a bf16 path; on AVX2-only CPUs its reorder raises
    has_path = dtype == torch.float32 or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert (layer.packed is not None) == (weight.numel() >= MIN_PACKED_ELEMENTS and has_path)
    for x in (torch.randn(16, shape[1], dtype=dtype), torch.randn(3, 5, shape[1], dtype=dtype),
              torch.randn(16, 2 * shape[1], dtype=dtype)[:, ::2]):
        expected = torch.nn.functional.linear(x.double(), weight.double(), bias.double())
        tolerance = 1e-5 if dtype == torch.float32 else 2e-2
        assert torch.allclose(layer(x).double(), expected, rtol=tolerance, atol=tolerance * shape[1] ** 0.5)
    weight += 1  # a snapshot: the packed copy does not follow the weight
    if layer.packed is not None:
        assert not torch.allclose(layer(x).double(), torch.nn.functional.linear(x, weight, bias).double(), atol=1)


def test_common_prefix_keeps_a_token_per_row():
    assert _common_prefix([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert _common_prefix([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the first row keeps its last token
    assert _common_prefix([[7, 2], [1, 2]]) == 0


@pytest.mark.parametrize("kind", ["tiny", "llama"])
def test_shared_prefix_prefill_gives_the_same_rollout(kind, monkeypatch):
    """Prefilling the prompts' common prefix once gives the tokens and log-probs of prefilling
    every prompt whole."""
    if kind == "tiny":
        model, tokenizer = load_policy("tiny")
    else:
        from policy.tokenizer import byte_chat_tokenizer

        tokenizer, model = byte_chat_tokenizer(), _small_llama(256, 512)
        model.resize_token_embeddings(len(tokenizer))
    engine = LocalEngine(model, tokenizer)
    prompts = encode_prompts(tokenizer, ["What is 2 + 3?", "What is 10 - 4?", "What is 7 + 18?"])
    assert _common_prefix(prompts) >= 8 >= MIN_SHARED_PREFIX  # the chat header and "What is " are shared
    sampling = SamplingConfig(max_new_tokens=12, temperature=0.8)
    shared = engine.generate(prompts, 2, sampling)
    monkeypatch.setattr("rollout.local.MIN_SHARED_PREFIX", 10**6)
    whole = engine.generate(prompts, 2, sampling)
    assert shared.completion_ids == whole.completion_ids
    for a, b in zip(shared.logprobs, whole.logprobs, strict=True):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)


@pytest.mark.parametrize("kind", ["tiny", "llama"])
def test_engine_logprobs_equal_learner_logprobs(kind):
    if kind == "tiny":
        model, tokenizer = load_policy("tiny")
        learner_model, _ = load_policy("tiny")
        prompts = encode_prompts(tokenizer, ["What is 2 + 3?", "What is 10 - 4?"])
    else:
        from policy.tokenizer import byte_chat_tokenizer

        tokenizer = byte_chat_tokenizer()
        model, learner_model = _small_llama(), _small_llama()
        model.resize_token_embeddings(len(tokenizer))
        learner_model.resize_token_embeddings(len(tokenizer))
        learner_model.load_state_dict(model.state_dict())
        prompts = encode_prompts(tokenizer, ["hi", "a longer prompt"])
    engine = LocalEngine(model, tokenizer)
    rollout = engine.generate(prompts, 3, SamplingConfig(max_new_tokens=12, temperature=0.8), seed=1)
    assert len(rollout.texts) == 6 and rollout.prompt_ids[0] == prompts[0] and rollout.prompt_ids[3] == prompts[1]
    batch = build_batch(rollout, torch.zeros(6), tokenizer.pad_token_id)
    with torch.no_grad():
        logp, _ = completion_logprobs(learner_model.eval(), batch.input_ids, batch.attention_mask,
                                      batch.completion_width, 0.8)
    mask = batch.completion_mask
    assert torch.allclose(logp[mask], batch.rollout_logp[mask], atol=1e-4)


def test_stop_strings_seeds_and_finish_reasons():
    model, tokenizer = load_policy("tiny")
    engine = LocalEngine(model, tokenizer)
    prompts = encode_prompts(tokenizer, ["What is 2 + 3?"])
    a = engine.generate(prompts, 4, SamplingConfig(max_new_tokens=10), seed=3)
    b = engine.generate(prompts, 4, SamplingConfig(max_new_tokens=10), seed=3)
    c = engine.generate(prompts, 4, SamplingConfig(max_new_tokens=10), seed=4)
    assert a.completion_ids == b.completion_ids and a.completion_ids != c.completion_ids
    assert all(r == "length" for r, ids in zip(a.finish_reasons, a.completion_ids, strict=True) if len(ids) == 10
               and ids[-1] != tokenizer.eos_token_id)
    letter = a.texts[0][0]  # stop at a character the untrained model certainly emits
    stopped = engine.generate(prompts, 4, SamplingConfig(max_new_tokens=10, stop=[letter]), seed=3)
    assert stopped.texts[0] == letter and stopped.finish_reasons[0] == "stop"


def test_weights_load_and_checksum():
    model, tokenizer = load_policy("tiny")
    other, _ = load_policy("tiny", seed=5)
    engine = LocalEngine(model, tokenizer)
    state = {k: v.clone() for k, v in other.state_dict().items()}
    digest = weights_checksum(state)
    engine.load_weights(state, version=7)
    assert engine.version == 7 and weights_checksum(engine.model.state_dict()) == digest
    state["lm_head.weight"][0, 0] += 1.0
    assert weights_checksum(state) != digest

    from grpo.workers import RolloutWorker, WorkerError

    worker = RolloutWorker.__new__(RolloutWorker)
    worker.index, worker.engine, worker.version = 0, engine, 7
    with pytest.raises(WorkerError, match="checksum"):
        worker.load_weights({"state": state, "checksum": digest}, 8)
    assert worker.version == 7


def test_dense_experts_equal_loop_experts():
    torch.manual_seed(0)
    x = torch.randn(10, 32)
    gate_up, down = torch.randn(8, 32, 32), torch.randn(8, 32, 16)
    indices = torch.stack([torch.randperm(8)[:3] for _ in range(10)])
    weights, keep = torch.rand(10, 3), torch.rand(10, 3) > 0.3
    act = torch.nn.functional.silu
    assert torch.allclose(dense_experts_forward(x, indices, weights, keep, gate_up, down, act),
                          loop_experts_forward(x, indices, weights, keep, gate_up, down, act), atol=1e-4)


@pytest.mark.parametrize("kind", ["tiny", "llama"])
def test_shared_prompt_logprobs_and_gradients_equal_one_forward(kind):
    """Running each distinct prompt once and repeating its KV cache gives the log-probs and the
    gradients of one forward over the whole rows (left-padded prompts, right-padded completions)."""
    torch.manual_seed(0)
    model = load_policy("tiny")[0] if kind == "tiny" else _small_llama()
    model.train()
    vocab = model.config.vocab_size
    prompts = [[5, 6, 7, 8, 9], [11, 12]]
    completions = [[20, 21, 22, 2], [23, 24], [25], [26, 27, 28, 29], [30, 31, 32], [33]]
    rollout = Rollout(prompt_ids=[prompts[i // 3] for i in range(6)], completion_ids=completions,
                      logprobs=[[0.0] * len(x) for x in completions], texts=[""] * 6, finish_reasons=["stop"] * 6)
    batch = build_batch(rollout, torch.randn(6), pad_id=vocab - 1)
    results = []
    for share in (False, True):
        model.zero_grad()
        logp, out = completion_logprobs(model, batch.input_ids, batch.attention_mask,
                                        batch.completion_width, 0.7, entropy=True, share_prompts=share)
        (logp * batch.completion_mask).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((logp, out.token_entropy, grads))
    mask = batch.completion_mask
    (lp_a, ent_a, g_a), (lp_b, ent_b, g_b) = results
    assert torch.allclose(lp_a[mask], lp_b[mask], atol=1e-5)
    assert torch.allclose(ent_a[mask], ent_b[mask], atol=1e-5)
    assert g_a.shape == g_b.shape and torch.allclose(g_a, g_b, atol=1e-5)


def test_sampler_draws_follow_the_distribution_and_report_their_logprob():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20000, 1)
    generator = torch.Generator().manual_seed(0)
    token, logp = sample_with_logprob(logits, 0.7, 0, 1.0, generator)
    expected = (logits[0] / 0.7).softmax(-1)
    frequency = torch.bincount(token, minlength=4).float() / token.numel()
    assert torch.allclose(frequency, expected, atol=0.01)  # 20,000 draws: standard error <= 0.0035
    assert torch.allclose(logp, (logits / 0.7).log_softmax(-1).gather(1, token.unsqueeze(1)).squeeze(1))
    # a filter (top-k) changes the draw, not the reported log-probability (under logits / T)
    token, logp = sample_with_logprob(logits[:3], 0.7, 1, 1.0, generator)
    assert token.tolist() == [0, 0, 0] and torch.allclose(logp, expected[0].log().expand(3))
    token, logp = sample_with_logprob(logits[:2], 0.0, 0, 1.0, generator)
    assert token.tolist() == [0, 0] and torch.allclose(logp, logits[0].log_softmax(-1)[0].expand(2))


def test_two_level_inverse_cdf_draws_the_token_a_full_cumsum_draws():
    """The blocked draw lands on the token a float64 cumulative sum over the whole vocabulary gives for
    the same uniform: a vocabulary that is no multiple of the block, peaked rows, zero weights, and
    uniforms that fall on the first and last token."""
    torch.manual_seed(0)
    vocab = 3 * BLOCK + 17
    logits = torch.randn(512, vocab) * 4
    logits[:8, :5] = 30.0  # nearly all mass in the first tokens
    logits[8:16, -3:] = 30.0  # ... and in the last ones, inside the padded block
    weights = (logits - logits.amax(-1, keepdim=True)).exp()
    weights[16:32, BLOCK:2 * BLOCK] = 0.0  # a whole block that cannot be drawn
    token, total = inverse_cdf(weights, torch.Generator().manual_seed(1))
    u = torch.rand(512, 1, generator=torch.Generator().manual_seed(1)).double() * total.double().unsqueeze(1)
    reference = torch.searchsorted(weights.double().cumsum(-1), u, right=True).squeeze(1)
    assert torch.allclose(total.double(), weights.double().sum(-1), rtol=1e-5)
    assert torch.equal(token, reference)
    assert weights.gather(1, token.unsqueeze(1)).min() > 0  # never a zero-weight token
    assert token[:8].max() < 5 and token[8:16].min() >= vocab - 3


def test_shared_prompt_balance_losses_cover_the_completion_tokens():
    """With shared prompts the MoE balance losses are the completion tokens' alone: equal to one
    forward over the whole rows in which only completion tokens belong to a sequence (one per row).
    The last column is no input there (it is only predicted), so it is left out too."""
    torch.manual_seed(0)
    model = load_policy("tiny")[0].train()
    prompts = [[5, 6, 7, 8, 9], [11, 12]]
    completions = [[20, 21, 22, 2], [23, 24], [25], [26, 27, 28, 29], [30, 31, 32], [33]]
    rollout = Rollout(prompt_ids=[prompts[i // 3] for i in range(6)], completion_ids=completions,
                      logprobs=[[0.0] * len(x) for x in completions], texts=[""] * 6, finish_reasons=["stop"] * 6)
    batch = build_batch(rollout, torch.randn(6), pad_id=model.config.vocab_size - 1)
    _, shared = completion_logprobs(model, batch.input_ids, batch.attention_mask, batch.completion_width, 1.0)
    ids, attention, c = batch.input_ids, batch.attention_mask, batch.completion_width
    sequence_ids = torch.full_like(ids, -1)
    sequence_ids[:, -c:-1] = torch.where(batch.completion_mask[:, :-1], 0, -1)
    positions = (attention.long().cumsum(1) - 1).clamp(min=0)
    full = model(input_ids=ids, attention_mask=attention.long(), position_ids=positions, sequence_ids=sequence_ids,
                 token_dropping=False, use_cache=False)
    assert set(shared.balance_losses) == set(full.balance_losses) == {"expert", "device", "communication"}
    for name, value in full.balance_losses.items():
        assert value > 0 and torch.allclose(shared.balance_losses[name], value, rtol=1e-5), name
    assert torch.allclose(shared.aux_loss, full.aux_loss, rtol=1e-5)


def test_fallback_decoder_for_other_architectures():
    """A causal LM that is neither DeepSeek-V2 nor Llama-family (GPT-2) decodes through its own
    forward: greedy tokens equal transformers' `generate`, sampled log-probs equal the learner's."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from policy.tokenizer import byte_chat_tokenizer

    tokenizer = byte_chat_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=256,
                        initializer_range=0.3, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config).eval()
    engine = LocalEngine(model, tokenizer)
    assert engine.engine == "hf-forward"
    prompts = encode_prompts(tokenizer, ["hi", "a longer prompt"])
    greedy = engine.generate(prompts, 2, SamplingConfig(max_new_tokens=6, temperature=0.0))
    for i, prompt in enumerate(prompts):
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=6, min_new_tokens=6, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
        assert greedy.completion_ids[2 * i] == greedy.completion_ids[2 * i + 1] == expected
    assert len(set(map(tuple, greedy.completion_ids))) == 2  # the two prompts differ
    sampled = engine.generate(prompts, 3, SamplingConfig(max_new_tokens=8, temperature=0.8), seed=1)
    batch = build_batch(sampled, torch.zeros(6), tokenizer.pad_token_id)
    with torch.no_grad():
        logp, _ = completion_logprobs(model, batch.input_ids, batch.attention_mask, batch.completion_width, 0.8)
    assert torch.allclose(logp[batch.completion_mask], batch.rollout_logp[batch.completion_mask], atol=1e-4)


def _moved_and_published(learner):
    """Move every learner weight a little; return (its state, what the learner publishes of it)."""
    from policy.logprobs import probe_tokens, sequence_logprobs

    with torch.no_grad():
        for p in learner.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    tokens = probe_tokens(learner.config.vocab_size)
    state = {k: v.clone() for k, v in learner.state_dict().items()}
    return state, {"state": state, "checksum": weights_checksum(state), "probe": {
        "tokens": tokens, "logprobs": sequence_logprobs(learner, tokens)}}


def test_a_weight_sync_proves_it_landed_and_a_skipped_one_is_caught():
    import copy

    from grpo.workers import WorkerError, verify_sync

    learner, tokenizer = load_policy("tiny")
    engine = LocalEngine(copy.deepcopy(learner), tokenizer)
    state, published = _moved_and_published(learner)
    with pytest.raises(WorkerError, match=r"weights version 3 did not land: the engine's log-probs of the probe "
                                          r"differ from the learner's by [\d.]+"):
        verify_sync(engine, published, 3, 2e-3, "rollout worker 0")  # the sync was skipped
    engine.load_weights(state, 3)
    assert verify_sync(engine, published, 3, 2e-3, "rollout worker 0") < 1e-4  # decode path and weights agree
    engine.model.lm_head.weight.data[0, 0] += 1e-3  # a stray change the probe barely sees: the checksum does
    with pytest.raises(WorkerError, match="the engine's weights differ from the ones sent"):
        verify_sync(engine, published, 3, 2e-3, "rollout worker 0")


def test_a_bf16_engine_copy_is_proven_bit_for_bit_too():
    """The engine's bf16 copy must hold exactly the sent fp32 weights rounded to bf16: a probe with
    bf16's tolerance could not tell a stray change from rounding."""
    from grpo.workers import WorkerError, verify_sync
    from policy.logprobs import probe_tokens, sequence_logprobs

    learner, tokenizer = load_policy("tiny")
    engine = LocalEngine(load_policy("tiny")[0], tokenizer, dtype=torch.bfloat16)
    tokens = probe_tokens(learner.config.vocab_size)
    state = {k: v.clone() for k, v in learner.state_dict().items()}
    published = {"state": state, "checksum": weights_checksum(state), "probe": {
        "tokens": tokens, "logprobs": sequence_logprobs(learner, tokens)}}
    engine.load_weights(state, 1)
    assert verify_sync(engine, published, 1, 1.0, "rollout worker 0") < 1.0
    weight = engine.model.model.layers[1].mlp.experts.down_proj.data
    weight[0, 0, 0] = weight[0, 0, 0] * 2 + 0.5  # one value of one expert
    with pytest.raises(WorkerError, match="the engine's weights differ from the ones sent"):
        verify_sync(engine, published, 1, 1.0, "rollout worker 0")


@pytest.mark.parametrize("policy", ["tiny", "llama"])
def test_the_probe_catches_a_load_that_left_the_decoder_stale(policy):
    """New parameters under a decoder whose fused/absorbed weights were not rebuilt: the module's
    checksum passes, so the probe must tell. On MLA only its short decode tail runs the absorbed
    weights (with `decode_steps=0` the tiny case passes unnoticed)."""
    import copy

    from grpo.workers import WorkerError, verify_sync
    from policy.tokenizer import byte_chat_tokenizer

    if policy == "tiny":
        learner, tokenizer = load_policy("tiny")
    else:
        tokenizer, learner = byte_chat_tokenizer(), _small_llama(256, 512)
        learner.resize_token_embeddings(len(tokenizer))
    engine = LocalEngine(copy.deepcopy(learner), tokenizer)
    state, published = _moved_and_published(learner)
    engine.model.load_state_dict(state)  # what load_weights does, less the decoder's refresh
    with pytest.raises(WorkerError, match="did not land"):
        verify_sync(engine, published, 2, 2e-3, "rollout worker 0")
    engine.load_weights(state, 2)
    assert verify_sync(engine, published, 2, 2e-3, "rollout worker 0") < 1e-4
