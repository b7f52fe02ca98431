"""`deepalign policy convert` on tiny dense Llamas: exact where the method is exact (MQA, every
expert active, a latent as wide as the model), quantified where it approximates (GQA's extra key
heads lose their rotation; top-k routing), healed by distillation, and saved so that plain
transformers' DeepseekV2ForCausalLM loads it unchanged."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from convert.config import HealConfig
from convert.data import ChatRow
from convert.heal import forward_kl_sum, heal
from convert.run import check_shape
from deepalign.cli import main
from policy.convert import ConvertShape, convert_model
from policy.convert_mla import pair_layout, rope_pca
from policy.convert_moe import MoEShape, balanced_clusters, convert_ffn
from policy.load import load_policy
from policy.tokenizer import byte_chat_tokenizer
from train.recipe import RecipeError


def tiny_llama(kv_heads: int, seed: int = 0, init: float = 0.15) -> LlamaForCausalLM:
    """A random Llama whose weights are large enough (init std 0.15) for sharp attention and logits."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=264, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, head_dim=16,
                         max_position_embeddings=256, initializer_range=init, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def random_rows(n: int, length: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 260, (n, length), generator=g).tolist()


def kl_and_agreement(dense, model, rows) -> tuple[float, float]:
    ids = torch.tensor(rows)
    with torch.no_grad():
        t, s = dense(ids).logits, model(ids).logits
    mask = torch.ones(ids.shape, dtype=torch.bool)
    kl = float(forward_kl_sum(s, t, mask) / mask.sum())
    return kl, float((t.argmax(-1) == s.argmax(-1)).float().mean())


EXACT = ConvertShape(kv_lora_rank=64, moe_intermediate_size=16, n_shared_experts=2, n_routed_experts=4,
                     num_experts_per_tok=4, first_k_dense_replace=1, router_logit_std=0.0)


def test_pair_layout_moves_llama_half_split_pairs_next_to_each_other():
    assert pair_layout(8).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_rope_pca_is_orthogonal_per_frequency_and_puts_the_energy_first():
    torch.manual_seed(0)
    base = torch.randn(500, 1, 8, dtype=torch.float64)
    keys = torch.cat([3 * base, base + 0.1 * torch.randn(500, 1, 8, dtype=torch.float64)], dim=1)  # (T, G=2, D)
    u = rope_pca(keys)  # (D/2, G, G)
    eye = torch.eye(2, dtype=torch.float64).expand_as(u)
    assert torch.allclose(u.transpose(1, 2) @ u, eye, atol=1e-10)
    pairs = keys.view(500, 2, 4, 2)
    mixed = torch.einsum("igj,tgic->tjic", u, pairs)
    energy = mixed.pow(2).sum((0, 2, 3))
    assert energy[0] / energy.sum() > 0.99  # the two heads are nearly parallel: one carries it all


def test_mqa_llama_converts_exactly_with_every_expert_active():
    dense = tiny_llama(kv_heads=1)
    model, layers = convert_model(dense, random_rows(16, 64), EXACT)
    rows = random_rows(4, 48, seed=7)
    with torch.no_grad():
        a, b = dense(torch.tensor(rows)).logits, model(torch.tensor(rows)).logits
    assert (a - b).abs().max() < 2e-4 * a.abs().max()
    assert layers[0]["unrotated_key_share"] == 0.0 and layers[1]["moe_relative_error"] < 1e-5
    assert layers[0]["latent_norm_unmeasured_share"] < 1e-9  # the latent spans all of h^: its norm is exact


def random_ffn(d: int, inter: int, tokens: int):
    """(w_gate, w_up, w_down, calibration inputs x) of a random SwiGLU FFN."""
    torch.manual_seed(0)
    wg, wu, wd = torch.randn(inter, d) * 0.3, torch.randn(inter, d) * 0.3, torch.randn(d, inter) * 0.3
    return wg, wu, wd, torch.randn(tokens, d)


def test_ffn_with_every_expert_and_a_flat_router_is_the_dense_ffn():
    d = 32
    wg, wu, wd, x = random_ffn(d, 48, 200)
    w = convert_ffn(wg, wu, wd, x, MoEShape(8, 2, 4, 4, router_logit_std=0.0))
    assert w.relative_error < 1e-6
    neurons = torch.cat([w.shared_gate, w.gate_up_proj[:, :8].reshape(-1, d)])
    assert sorted(map(tuple, neurons.tolist())) == sorted(map(tuple, wg.tolist()))  # a partition of the neurons
    assert torch.allclose((x @ w.router.T).std(), torch.tensor(0.0))


def test_router_is_fit_to_expert_output_sizes_and_beats_chance():
    wg, wu, wd, x = random_ffn(32, 96, 400)
    w = convert_ffn(wg, wu, wd, x, MoEShape(8, 2, 10, 2, router_logit_std=0.1))
    assert w.router_recall > 0.2 + 0.25  # chance is 2/10; measured 0.6
    assert torch.allclose((x @ w.router.T).std(), torch.tensor(0.1), rtol=1e-4)


def test_balanced_clusters_are_a_balanced_partition():
    groups = balanced_clusters(torch.randn(24, 50), 4)
    assert groups.shape == (4, 6) and sorted(groups.reshape(-1).tolist()) == list(range(24))


def correlated_llama(correlation: float) -> LlamaForCausalLM:
    """A GQA tiny Llama whose second key head is `correlation` * the first + noise: pretrained key heads
    share most of their energy per frequency (SmolLM2: 64-83% in the first principal head)."""
    dense = tiny_llama(kv_heads=2)
    with torch.no_grad():
        for layer in dense.model.layers:
            k = layer.self_attn.k_proj.weight.view(2, 16, 64)
            k[1] = correlation * k[0] + (1 - correlation**2) ** 0.5 * k[1]
    return dense


def kl_to_uniform(dense, rows) -> float:
    """KL(dense || uniform): what a model that knows nothing scores, the scale for the others."""
    with torch.no_grad():
        logp = dense(torch.tensor(rows)).logits.log_softmax(-1)
    return float((logp.exp() * (logp + torch.log(torch.tensor(264.0)))).sum(-1).mean())


ROUTED = ConvertShape(**{**EXACT.__dict__, "num_experts_per_tok": 2, "router_logit_std": 0.1})


def test_gqa_llama_converts_close_and_the_error_follows_the_unrotated_key_energy():
    """Two key heads: the second principal head loses its rotation (the one approximation of the
    attention); top-2 of 4 routing drops experts. Quantified against KL(dense || uniform)."""
    rows, held_out = random_rows(16, 64), random_rows(8, 64, seed=9)
    kls, shares = [], []
    for correlation in (0.0, 0.8, 0.95):
        dense = correlated_llama(correlation)
        model, layers = convert_model(dense, rows, EXACT)  # every expert active: attention error only
        kls.append(kl_and_agreement(dense, model, held_out)[0] / kl_to_uniform(dense, held_out))
        shares.append(layers[0]["unrotated_key_share"])
    assert shares[0] > 0.35 and 0.05 < shares[1] < 0.2 and shares[2] < 0.05  # measured 0.45, 0.10, 0.03
    assert kls[2] < kls[1] < kls[0] and kls[1] < 0.3 and kls[2] < 0.1  # measured 0.67, 0.2, 0.06 of uniform's
    dense = correlated_llama(0.8)
    model, _ = convert_model(dense, rows, ROUTED)
    kl_routed = kl_and_agreement(dense, model, held_out)[0] / kl_to_uniform(dense, held_out)
    assert kls[1] < kl_routed < 0.4  # measured 0.29


def test_heal_distils_the_converted_model_towards_the_dense_one():
    dense = correlated_llama(0.8)
    rows, held_out = random_rows(128, 64), random_rows(8, 64, seed=9)
    model, _ = convert_model(dense, rows[:16], ROUTED)
    kl_before = kl_and_agreement(dense, model, held_out)[0]
    cfg = HealConfig(steps=30, batch_size=8, lr=1e-3, warmup_steps=3, mixed_precision="no")
    log = heal(model, dense, [ChatRow(r, 1) for r in rows[16:]], cfg)
    kl_after = kl_and_agreement(dense, model, held_out)[0]
    assert [e["step"] for e in log] == list(range(1, 31)) and log[-1]["lr"] < log[5]["lr"]  # warm-up, then cosine
    assert log[-1]["kl"] < 0.75 * log[0]["kl"]  # measured 0.22 -> 0.14 nats/token on the training chats
    assert kl_after < 0.85 * kl_before  # and on held-out rows: measured 0.21 -> 0.16
    assert all(e["aux"] > 0 for e in log)  # the expert balance loss is part of the objective


def test_forward_kl_sum_by_hand():
    t = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])
    s = torch.tensor([[[0.0, 1.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, False]])
    p = torch.tensor([0.5, 0.5])
    q = torch.softmax(torch.tensor([0.0, 1.0]), 0)
    assert torch.allclose(forward_kl_sum(s, t, mask), (p * (p.log() - q.log())).sum())


def test_check_shape_names_the_key():
    config = tiny_llama(kv_heads=2).config
    check_shape(config, EXACT)
    with pytest.raises(RecipeError, match="shape.kv_lora_rank: 32 cannot hold the 48"):
        check_shape(config, ConvertShape(**{**EXACT.__dict__, "kv_lora_rank": 32}))
    with pytest.raises(RecipeError, match="must equal the dense intermediate_size 96"):
        check_shape(config, ConvertShape(**{**EXACT.__dict__, "moe_intermediate_size": 8}))
    with pytest.raises(RecipeError, match="shape.num_experts_per_tok: 5"):
        check_shape(config, ConvertShape(**{**EXACT.__dict__, "num_experts_per_tok": 5}))


@pytest.fixture
def dense_dir(tmp_path):
    path = tmp_path / "dense"
    tiny_llama(kv_heads=2).save_pretrained(path)
    byte_chat_tokenizer().save_pretrained(path)
    return path


SMALL = ["shape.kv_lora_rank=64", "shape.moe_intermediate_size=16", "shape.n_shared_experts=2",
         "shape.n_routed_experts=4", "shape.num_experts_per_tok=2", "data.calibration=4", "data.heal=8",
         "data.eval=4", "data.arithmetic=4", "data.max_new_tokens=12", "heal.steps=3", "heal.batch_size=4",
         "heal.mixed_precision='no'"]


def test_cli_converts_heals_and_plain_transformers_loads_the_result(dense_dir, tmp_path, capsys):
    out = tmp_path / "converted"
    assert main(["policy", "convert", str(dense_dir), *SMALL, "--to", "deepseek-v2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "healed" in printed and "KV/token/layer" in printed
    report = json.loads((out / "conversion.json").read_text())
    assert set(report["results"]) == {"dense", "converted", "healed"} and len(report["heal"]) == 3
    assert report["results"]["dense"]["kv_elements_per_token_per_layer"] == 2 * 2 * 16
    assert report["results"]["healed"]["kv_elements_per_token_per_layer"] == 64 + 16
    assert list(out.glob("logs/events.out.tfevents*")) and not list(tmp_path.glob(".converted*"))
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(plain).__name__ == "DeepseekV2ForCausalLM"
    ours, _ = load_policy(str(out))
    ids = torch.tensor(random_rows(2, 20, seed=3))
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, ours(ids).logits, atol=1e-5)
    # deterministic: a second run writes the same weights, and replaces the first atomically
    first = {k: v.clone() for k, v in ours.state_dict().items()}
    assert main(["policy", "convert", str(dense_dir), *SMALL, "--out", str(out)]) == 0
    again, _ = load_policy(str(out))
    assert all(torch.equal(first[k], v) for k, v in again.state_dict().items())


def test_cli_bad_shape_is_one_line_naming_the_key(dense_dir, tmp_path, capsys):
    bad = ["policy", "convert", str(dense_dir), "shape.moe_intermediate_size=7", "--out", str(tmp_path / "x")]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "shape: (n_shared_experts + n_routed_experts)" in err
    assert not (tmp_path / "x").exists()


def test_cli_heal_without_heal_chats_is_one_line(dense_dir, tmp_path, capsys):
    assert main(["policy", "convert", str(dense_dir), "data.heal=0", "--out", str(tmp_path / "x")]) == 2
    assert "data.heal: 0 chats to heal on" in capsys.readouterr().err
