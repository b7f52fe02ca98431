"""The `deepalign` command line: figures, the demo, --help, and one-line errors."""

import shutil
import subprocess
import sys

import pytest

from deepalign.cli import main


def _figures(text: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in text.strip().splitlines())


def test_policy_info_published_models(capsys):
    assert main(["policy", "info", "deepseek-v2"]) == 0
    v2 = _figures(capsys.readouterr().out)
    assert v2["kv_cache_elements_per_token_per_layer"] == "576"
    assert abs(int(v2["total_params"].split()[0]) / 236e9 - 1) < 0.03
    assert abs(int(v2["activated_params"].split()[0]) / 21e9 - 1) < 0.03
    assert main(["policy", "info", "deepseek-v2-lite"]) == 0
    lite = _figures(capsys.readouterr().out)
    assert abs(int(lite["total_params"].split()[0]) / 15.7e9 - 1) < 0.03
    assert abs(int(lite["activated_params"].split()[0]) / 2.4e9 - 1) < 0.03
    assert lite["kv_cache_elements_per_token"] == str(576 * 27)


def test_policy_demo_from_recipe(capsys):
    assert main(["policy", "demo", "recipes/demo/policy.yaml", "demo.max_new_tokens=6", "--prompt", "2+2?"]) == 0
    out = _figures(capsys.readouterr().out)
    assert out["prompt"] == "2+2?"
    assert out["engine"] == "absorbed-mla"
    assert int(out["new_tokens"]) == 6
    assert float(out["tokens_per_second"]) > 0
    # 6 new tokens + the prompt, minus the last sampled token (never fed back), x 4 layers x 80 x 4 bytes
    assert int(out["kv_cache_bytes"]) % (4 * 80 * 4) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["policy", "info", "tiny", "polcy.name=x"], "unknown key 'polcy'; valid keys: policy, demo"),
        (["policy", "demo", "recipes/demo/policy.yaml", "demo.max_new_tokens=lots"],
         "key 'demo.max_new_tokens' expects an integer, got str ('lots')"),
        (["policy", "info", "missing.yaml"], "missing.yaml: recipe file not found"),
        (["policy", "info", "/no/such/dir"], "no such preset or directory"),
        (["policy", "demo", "deepseek-v2"], "has no weights here"),
        (["rm", "train", "recipes/demo/rm_safety.yaml", "data.source=builtin:nope"],
         "data.source: unknown built-in preference task 'nope'"),
        (["sft", "recipes/demo/sft.yaml", "lora.enabled=true", "lora.target_modules=[dense]"],
         "lora.target_modules: none of ['dense'] is a Linear module of the policy"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_console_script_help_lists_commands():
    exe = shutil.which("deepalign")
    cmd = [exe] if exe else [sys.executable, "-m", "deepalign.cli"]
    top = subprocess.run(cmd + ["--help"], capture_output=True, text=True, check=True).stdout
    for command in ("policy", "sft", "data", "rm"):
        assert command in top
    for sub in (["policy", "info"], ["policy", "demo"], ["sft"], ["data", "mix"], ["data", "inspect"],
                ["data", "prefs-from-answers"], ["data", "prefs-from-tests"], ["rm", "train"]):
        assert subprocess.run(cmd + sub + ["--help"], capture_output=True, text=True).returncode == 0, sub
    bad = subprocess.run(cmd + ["policy", "info", "nope.yaml"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "deepalign: error: nope.yaml: recipe file not found"
