"""The ``projcomp`` CLI: every subcommand end to end on a tiny model, in subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]


def projcomp(*args, cwd=None, fake_hub_log=None):
    if fake_hub_log is None:
        cmd = [sys.executable, "-m", "hf_projcomp.cli", *map(str, args)]
    else:
        code = ("import sys; from tests.fake_hub import install; install(sys.argv[1]); "
                "from hf_projcomp.cli import main; main(sys.argv[2:])")
        cmd = [sys.executable, "-c", code, str(fake_hub_log), *map(str, args)]
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **{k: v for k, v in __import__("os").environ.items()
                                                                  if k not in ("PYTHONPATH",)}}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd or ROOT, env=env)


def ok(run):
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_console_script_is_registered():
    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "projcomp"]
    assert script.value == "hf_projcomp.cli:main"


@pytest.fixture(scope="module")
def compressed(tiny_base_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "compressed"
    run = ok(projcomp("compress", "--model", tiny_base_dir, "--calibration", tiny_base_dir / "train.txt",
                      "--target-params", "0.8", "--num-sequences", "4", "--sequence-length", "64",
                      "--eval-text", tiny_base_dir / "train.txt", "--eval-chars", "2000", "--output", out))
    return out, run


def test_compress_writes_a_checkpoint_with_card(compressed, tiny_base_dir):
    out, run = compressed
    assert f"saved {out}" in run.stdout and "bits/byte" in run.stdout
    model = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_base_dir)
    assert model.num_parameters() <= 0.8 * base.num_parameters() * 1.01
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(out))
    card = ModelCard.load(out / "README.md")
    assert "compact" in card.data.to_dict()["tags"] and "Bits per byte" in card.text


def test_compress_without_calibration_samples_the_base(tiny_base_dir, tmp_path):
    run = ok(projcomp("compress", "--model", tiny_base_dir, "--samples", "4", "--sample-tokens", "48",
                      "--target-params", "0.9", "--num-sequences", "2", "--sequence-length", "32",
                      "--output", tmp_path / "out"))
    assert "texts sampled from the base model" in (tmp_path / "out" / "README.md").read_text()
    assert "saved" in run.stdout


def test_eval_json_reports_the_library_numbers(compressed, tiny_base_dir):
    """Each figure of `projcomp eval --json` is what the Python API computes on the same text."""
    from hf_projcomp.evaluate import evaluate_text, load_text

    out, _ = compressed
    run = ok(projcomp("eval", out, "--base", tiny_base_dir, "--text", tiny_base_dir / "train.txt",
                      "--chars", "1500", "--json"))
    report = json.loads(run.stdout)
    text = load_text(tiny_base_dir / "train.txt", max_chars=1500)
    for path, prefix in ((out, ""), (tiny_base_dir, "base_")):
        model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
        expected = evaluate_text(model, tokenizer, text, progress=False)
        assert report[f"{prefix}parameters"] == model.num_parameters()
        assert report[f"{prefix}bits_per_byte"] == pytest.approx(expected["bits_per_byte"], rel=1e-6)
        assert report[f"{prefix}word_perplexity"] == pytest.approx(expected["word_perplexity"], rel=1e-6)
    assert report["parameters"] < report["base_parameters"] and report["forward_latency_ratio"] > 0
    assert report["text"] == "the first 1,500 characters of train.txt"


def test_train_then_merge(tiny_base_dir, tmp_path):
    out = tmp_path / "run"
    ok(projcomp("train", "--model_name_or_path", tiny_base_dir, "--train_file", tiny_base_dir / "train.txt",
                "--hidden_size", "48", "--intermediate_size", "64", "--block_size", "32",
                "--calibration_sequences", "2", "--output_dir", out, "--max_steps", "2",
                "--per_device_train_batch_size", "2", "--report_to", "none", "--use_cpu"))
    assert (out / "adapter_config.json").is_file() and (out / "merged" / "README.md").is_file()
    run = ok(projcomp("merge", out, "--model", tiny_base_dir, "--output", tmp_path / "merged"))
    assert "hidden_size 48, intermediate_size 64" in run.stdout
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    again = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert all((a == b).all() for a, b in zip(merged.state_dict().values(), again.state_dict().values()))


def test_push_through_the_hub_api(compressed, tmp_path):
    out, _ = compressed
    log = tmp_path / "hub.jsonl"
    run = ok(projcomp("push", out, "me/tiny-compact", "--private", fake_hub_log=log))
    assert "pushed" in run.stdout
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c["call"] for c in calls] == ["create_repo", "create_commit"] and calls[0]["private"] is True
    assert calls[1]["files"] == {p.name: p.stat().st_size for p in out.iterdir()}


@pytest.mark.parametrize("args, message", [
    (["compress", "--target-params", "abc"], "argument --target-params"),
    (["compress", "--model", "/nonexistent/model"], "projcomp compress: error:"),
    (["eval"], "the following arguments are required: model"),
    (["merge", "/nonexistent/adapter", "--output", "x"], "projcomp merge: error: no adapter_config.json"),
    (["push", "/nonexistent", "me/x"], "is not a saved compressed model"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_exit_non_zero_with_one_line(args, message, tmp_path):
    run = projcomp(*args, cwd=tmp_path)
    assert run.returncode != 0
    assert run.stderr.count("\n") == 1 and message in run.stderr, run.stderr


def test_bugs_keep_their_traceback(monkeypatch, capsys):
    """Only mistakes in the user's input end as one line; a TypeError or an OSError from a bug does not."""
    from hf_projcomp import cli

    for error in (TypeError("unsupported operand"), OSError("[Errno 5] Input/output error")):
        def broken(args, error=error):
            raise error

        monkeypatch.setattr(cli, "compress", broken)
        with pytest.raises(type(error)):
            cli.main(["compress"])
    monkeypatch.setattr(cli, "compress", lambda args: (_ for _ in ()).throw(FileNotFoundError("no such file: x.txt")))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compress"])
    assert exit_info.value.code == 1 and capsys.readouterr().err == "projcomp compress: error: no such file: x.txt\n"
