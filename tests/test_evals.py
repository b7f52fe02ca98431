"""Evaluation and comparison: estimators by hand, the HumanEval harness with a stub model, the
report for two tiny checkpoints, the cache, and bad input."""

import json
import shutil

import pytest

from deepalign.cli import main
from evals.data import EvalError, math_rows
from evals.metrics import delta_interval, distinct_n, mean_interval, pass_at_k, win_rate
from evals.runner import EvalSettings, evaluate_checkpoint
from evals.suites import run_code

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


def test_pass_at_k_by_hand():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # 2 of 5
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0  # n - c = 2 < k: every draw of 3 holds a pass
    assert pass_at_k(10, 1, 5) == pytest.approx(0.5)  # 1 - C(9,5)/C(10,5) = 1 - 126/252
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_intervals_win_rate_and_distinct_by_hand():
    mean, low, high = mean_interval([0.0, 1.0, 1.0, 0.0])
    # std (unbiased) = sqrt(1/3); half width = 1.96 * 0.57735 / 2 = 0.5658
    assert (mean, low, high) == pytest.approx((0.5, 0.5 - 0.56580, 0.5 + 0.56580), abs=1e-4)
    assert delta_interval([1, 1, 0], [1, 1, 1])[0] == pytest.approx(1 / 3)
    w = win_rate([0.1, 0.5, 0.3, 0.9], [0.2, 0.5, 0.1, 1.0])  # B wins 2, ties 1, loses 1
    assert (w["wins"], w["ties"], w["losses"]) == (2, 1, 1) and w["rate"] == pytest.approx(2.5 / 4)
    assert distinct_n(["a b a b", "a b"], 2) == pytest.approx(2 / 4)  # (a b),(b a),(a b),(a b): 2 unique of 4


@needs_bwrap
def test_humaneval_canonical_solutions_score_164_through_the_harness():
    from evals.data import humaneval_rows
    from evals.suites import humaneval_chat_prompt

    problems = humaneval_rows()
    canonical = {humaneval_chat_prompt(p): p["prompt"] + p["canonical_solution"] for p in problems}

    def stub(prompts, n):  # a "model" that answers with the canonical solution in a code block
        return [[f"Here it is:\n```python\n{canonical[p]}```"] * n for p in prompts]

    result = run_code(stub, problems, samples=2, ks=(1, 2))
    assert len(result.items) == 164 and result.metrics["pass@1"] == 1.0 and result.metrics["pass@2"] == 1.0

    def broken(prompts, n):
        return [["```python\ndef f(:\n```"] * n for _ in prompts]

    assert run_code(broken, problems[:5], samples=1).score == 0.0
    prompts = {humaneval_chat_prompt(p): p["prompt"] for p in problems}
    for wrong_body in ("    raise NotImplementedError\n", "    return None\nimport sys\nsys.exit(0)\n"):
        def corrupted(chat_prompts, n, body=wrong_body):  # the second exits 0 before the tests (it passed 20/20 once)
            return [[f"```python\n{prompts[p]}{body}```"] * n for p in chat_prompts]

        result = run_code(corrupted, problems, samples=1)
        assert len(result.items) == 164 and result.metrics["pass@1"] == 0.0


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    from transformers import DeepseekV2ForSequenceClassification

    from policy.load import load_policy

    root = tmp_path_factory.mktemp("ckpts")
    paths = []
    for seed in (0, 1):
        model, tok = load_policy("tiny", seed=seed)
        model.save_pretrained(root / f"tiny{seed}")
        tok.save_pretrained(root / f"tiny{seed}")
        paths.append(str(root / f"tiny{seed}"))
    rm = DeepseekV2ForSequenceClassification(model.config.__class__(**{**model.config.to_dict(), "num_labels": 1}))
    rm.config.pad_token_id = tok.pad_token_id
    rm.save_pretrained(root / "rm")
    tok.save_pretrained(root / "rm")
    return paths, str(root / "rm")


def test_compare_report_holds_every_table_and_plot(two_checkpoints, tmp_path, capsys):
    (a, b), rm = two_checkpoints
    out = tmp_path / "cmp"
    args = ["compare", a, b, "--suites", "math,code,preference,safety,stats", "--out", str(out),
            "--max-new-tokens", "8", "--math-limit", "6", "--humaneval-limit", "2", "--reward-model", rm]
    if shutil.which("bwrap") is None:
        args[4] = "math,preference,safety,stats"
    assert main(args) == 0
    page = (out / "report.html").read_text()
    for title in ("Scores", "Alignment tax", "Reward-model win rate", "KL of B from A", "Routing drift of B from A",
                  "Where they disagree most"):
        assert title in page, title
    assert page.count("<img") == 4 and "data:image/png;base64," in page and (out / "routing_drift.png").exists()
    content = json.loads((out / "report.json").read_text())
    (drift,) = content["routing_agreement"].values()  # two unrelated random inits: routing far apart
    assert len(drift) == 3 and all(0.0 <= x < 0.2 for x in drift)  # tiny: 3 MoE layers, top-4 of 16 experts
    assert {t["suite"] for t in content["tax"]} == set(content["suites"])
    assert content["win_rates"][0]["wins"] + content["win_rates"][0]["ties"] + content["win_rates"][0]["losses"] == 20
    assert "## Alignment tax" in (out / "report.md").read_text()
    assert "report:" in capsys.readouterr().out
    # a second comparison reads every suite from the cache
    assert main(args) == 0
    assert capsys.readouterr().out.count("from cache") == 2 * len(content["suites"])


def test_finished_suites_survive_a_failing_one(two_checkpoints, tmp_path):
    (a, _), _ = two_checkpoints
    settings = EvalSettings(suites=["math", "preference"], max_new_tokens=4, math_limit=3, output_dir=str(tmp_path))
    with pytest.raises(EvalError, match="--reward-model"):
        evaluate_checkpoint(a, settings, log=lambda *_: None)
    assert len(list(tmp_path.glob("cache/*/math-*.json"))) == 1


def test_bad_input_is_one_line(two_checkpoints, tmp_path, capsys):
    (a, _), _ = two_checkpoints
    assert main(["eval", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "no such preset or directory" in capsys.readouterr().err
    assert main(["eval", a, "--suites", "math,poetry", "--out", str(tmp_path)]) == 2
    assert "unknown ['poetry']" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(EvalError, match="no rows"):
        math_rows(str(empty))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1 + 1?"}\n')
    assert main(["eval", a, "--suites", "math", "--math-data", str(bad), "--out", str(tmp_path)]) == 2
    assert "bad.jsonl:1: missing answer" in capsys.readouterr().err
    no_template = tmp_path / "plain"
    shutil.copytree(a, no_template)
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    (no_template / "chat_template.jinja").unlink(missing_ok=True)
    assert main(["eval", str(no_template), "--suites", "math", "--out", str(tmp_path)]) == 2
    assert "no chat template" in capsys.readouterr().err


def test_lora_adapter_directory_is_evaluated_on_its_base(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from evals.runner import load_checkpoint
    from policy.load import load_policy

    base, _ = load_policy("tiny")
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_a_proj", "o_proj"], init_lora_weights=False))
    peft_model.peft_config["default"].base_model_name_or_path = "tiny"
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    model, tokenizer = load_checkpoint(str(tmp_path / "adapter"))
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, expected, atol=1e-5)
    assert tokenizer.chat_template


def test_compare_scores_with_the_users_own_reward_file(two_checkpoints, tmp_path, capsys):
    """`compare --reward file.py:fn --reward-data FILE`: TRL's rules (columns by name, conversational
    completions for conversational prompts), the reward's mean as the suite's score."""
    (a, b), _ = two_checkpoints
    rewards = tmp_path / "my_rewards.py"
    rewards.write_text("def graded(prompts, completions, credit, **_):\n"
                       "    return [c * float(m[0]['role'] == 'assistant') for m, c in zip(completions, credit)]\n")
    data = tmp_path / "conv.jsonl"
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"Say {i}."}], "credit": i / 4}) + "\n"
                            for i in range(4)))
    out = tmp_path / "cmp"
    assert main(["compare", a, b, "--suites", "stats", "--reward", f"{rewards}:graded", "--reward-data", str(data),
                 "--max-new-tokens", "4", "--out", str(out)]) == 0
    content = json.loads((out / "report.json").read_text())
    assert "reward" in content["suites"]
    tax = next(t for t in content["tax"] if t["suite"] == "reward")
    assert tax["score_a"] == tax["score_b"] == pytest.approx((0 + 0.25 + 0.5 + 0.75) / 4)
    assert main(["eval", a, "--suites", "reward", "--out", str(tmp_path)]) == 2
    assert "suite reward needs --reward" in capsys.readouterr().err
