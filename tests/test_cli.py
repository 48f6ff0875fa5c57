"""The ``projcomp`` CLI: every subcommand end to end on a tiny model, in subprocesses."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]


def projcomp(*args, cwd=None, fake_hub_log=None, env=None):
    if fake_hub_log is None:
        cmd = [sys.executable, "-m", "hf_projcomp.cli", *map(str, args)]
    else:
        code = (
            "import sys; from tests.fake_hub import install; install(sys.argv[1]); "
            "from hf_projcomp.cli import main; main(sys.argv[2:])"
        )
        cmd = [sys.executable, "-c", code, str(fake_hub_log), *map(str, args)]
    env = {
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)},
        **(env or {}),
    }
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
    run = ok(
        projcomp(
            "compress",
            "--model",
            tiny_base_dir,
            "--calibration",
            tiny_base_dir / "train.txt",
            "--target-params",
            "0.8",
            "--num-sequences",
            "4",
            "--sequence-length",
            "64",
            "--eval-text",
            tiny_base_dir / "train.txt",
            "--eval-chars",
            "2000",
            "--output",
            out,
        )
    )
    return out, run


def test_compress_writes_a_checkpoint_with_card(compressed, tiny_base_dir):
    out, run = compressed
    assert re.search(rf"saved {re.escape(str(out))} in \d+ s \(.* parameters; bits/byte", run.stdout), run.stdout
    assert "| parameters |" in run.stdout and "| `vocab_size` |" in run.stdout  # the card's size table
    assert "Pruning to 80% of" in run.stderr  # the CLI's own info messages show by default
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o666 & ~umask}  # no private (0600) files
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    model = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_base_dir)
    assert model.num_parameters() <= 0.8 * base.num_parameters() * 1.01
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(out))
    card = ModelCard.load(out / "README.md")
    assert "compact" in card.data.to_dict()["tags"] and "Bits per byte" in card.text
    assert "- `intermediate_size`:" in card.text and ": None" not in card.text  # unset settings are left out


def test_compress_without_calibration_samples_the_base(tiny_base_dir, tmp_path):
    run = ok(
        projcomp(
            "compress",
            "--model",
            tiny_base_dir,
            "--samples",
            "4",
            "--sample-tokens",
            "48",
            "--target-params",
            "0.9",
            "--num-sequences",
            "2",
            "--sequence-length",
            "32",
            "--output",
            tmp_path / "out",
        )
    )
    card = (tmp_path / "out" / "README.md").read_text()
    assert "texts sampled from the base model" in card
    assert "saved" in run.stdout
    # No --eval-text: the card's quality is measured on the bundled WikiText-2 test excerpt, base and compressed.
    from hf_projcomp.evaluate import bits_per_byte
    from hf_projcomp.texts import TEST_HEAD, bundled_text

    model, tokenizer = (
        AutoModelForCausalLM.from_pretrained(tmp_path / "out"),
        AutoTokenizer.from_pretrained(tmp_path / "out"),
    )
    expected = bits_per_byte(model, tokenizer, str(bundled_text(TEST_HEAD))[:20_000], progress=False)
    assert "WikiText-2 test" in card and f"| {expected:.4f} |" in card and "not measured" not in card


@pytest.mark.usefixtures("one_thread")  # the subprocess runs with OMP_NUM_THREADS=1: same sums
def test_compress_then_distil_is_the_library_recipe(tmp_path):
    """`--distill-tokens` = compact_prune then distill_pruned on the calibration text (same weights,
    to float tolerance, from another process), and the card names the training. Four steps: the two
    after the warm-up tell a cosine schedule from the default constant one."""
    from hf_projcomp import DistillConfig, compact_prune, distill_pruned, load_model
    from tests.test_compact import model_for
    from tests.tiny_tokenizers import TRAIN, tiny_tokenizer

    base_dir, text = tmp_path / "base", tmp_path / "train.txt"
    tokenizer = tiny_tokenizer("byte_level")
    base = model_for("qwen2", tokenizer)
    base.config.max_position_embeddings = 256  # one distillation block
    base.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    text.write_text("\n".join(TRAIN * 20), encoding="utf-8")
    settings = dict(target_params=0.8, num_sequences=4, sequence_length=64)
    run = ok(
        projcomp(
            "compress",
            "--model",
            base_dir,
            "--calibration",
            text,
            "--output",
            tmp_path / "out",
            "--distill-tokens",
            "8192",
            "--distill-lr",
            "1e-4",
            "--distill-schedule",
            "cosine",
            "--seed",
            "1",
            "-q",
            *(f"--{k.replace('_', '-')}={v}" for k, v in settings.items()),
        )
    )
    assert "Loading weights" not in run.stderr and "it/s" not in run.stderr, run.stderr  # -q: no progress bars
    base, tokenizer = load_model(str(base_dir))  # as the CLI loads it (the reloaded tokenizer is Qwen2's own)
    small, small_tok, selection = compact_prune(base, tokenizer, str(text), progress=False, **settings)
    distill_pruned(
        small,
        base,
        small_tok,
        str(text),
        vocab_indices=selection.kept_token_ids,
        progress=False,
        config=DistillConfig(max_tokens=8192, learning_rate=1e-4, lr_scheduler_type="cosine", seed=1),
    )
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    untrained = compact_prune(base, tokenizer, str(text), progress=False, **settings).model
    for name, value in small.state_dict().items():
        torch.testing.assert_close(saved.state_dict()[name], value, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(v, untrained.state_dict()[k]) for k, v in small.state_dict().items())
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Training: train.txt, distilled from the base (8,192 tokens)" in card
    assert "`distill_learning_rate`: 0.0001" in card and "`distill_lr_scheduler_type`: cosine" in card


def test_eval_json_reports_the_library_numbers(compressed, tiny_base_dir):
    """Each figure of `projcomp eval --json` is what the Python API computes on the same text."""
    from hf_projcomp.evaluate import evaluate_text, load_text

    out, _ = compressed
    run = ok(
        projcomp(
            "eval", out, "--base", tiny_base_dir, "--text", tiny_base_dir / "train.txt", "--chars", "1500", "--json"
        )
    )
    report = json.loads(run.stdout)
    text = load_text(tiny_base_dir / "train.txt", max_chars=1500)
    for path, prefix in ((out, ""), (tiny_base_dir, "base_")):
        model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
        expected = evaluate_text(model, tokenizer, text, progress=False)
        assert report[f"{prefix}parameters"] == model.num_parameters()
        assert report[f"{prefix}bits_per_byte"] == pytest.approx(expected["bits_per_byte"], rel=1e-6)
        assert report[f"{prefix}word_perplexity"] == pytest.approx(expected["word_perplexity"], rel=1e-6)
    assert report["parameters"] < report["base_parameters"] and report["forward_latency_rounds"] == 7
    low, high = report["forward_latency_ratio_range"]
    assert 0 < low <= report["forward_latency_ratio"] <= high
    assert report["text"] == "the first 1,500 characters of train.txt"


def test_train_then_merge(tiny_base_dir, tmp_path):
    """Trained from a Hub cache snapshot: the adapter records the repo id (the path only as a local
    hint) and its training data; both cards name the base model and the training."""
    snapshot = tmp_path / "hub" / "models--me--tiny-base" / "snapshots" / "0123abc"
    shutil.copytree(tiny_base_dir, snapshot)
    out = tmp_path / "run"
    ok(
        projcomp(
            "train",
            "--model_name_or_path",
            snapshot,
            "--train_file",
            snapshot / "train.txt",
            "--hidden_size",
            "48",
            "--intermediate_size",
            "64",
            "--block_size",
            "32",
            "--calibration_sequences",
            "2",
            "--output_dir",
            out,
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "2",
            "--report_to",
            "none",
            "--use_cpu",
        )
    )
    assert (out / "adapter_config.json").is_file() and (out / "merged" / "README.md").is_file()
    recorded = json.loads((out / "adapter_config.json").read_text())
    assert recorded["base_model_name_or_path"] == "me/tiny-base"
    assert recorded["base_model_local_path"] == str(snapshot.resolve())
    assert recorded["training_data"] == "train.txt" and recorded["training_tokens"] == 2 * 2 * 32
    run = ok(projcomp("merge", out, "--output", tmp_path / "merged"))  # the base found from the adapter
    assert "hidden_size 48, intermediate_size 64" in run.stdout
    for card in (ModelCard.load(out / "merged" / "README.md"), ModelCard.load(tmp_path / "merged" / "README.md")):
        assert card.data.to_dict()["base_model"] == "me/tiny-base"
        assert "Training: train.txt (128 tokens)" in card.text and "training-free" not in card.text
        assert 'from_pretrained("merged")' in card.text and "path/to" not in card.text
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    again = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert all((a == b).all() for a, b in zip(merged.state_dict().values(), again.state_dict().values(), strict=True))


def test_push_through_the_hub_api(compressed, tmp_path):
    out, _ = compressed
    log = tmp_path / "hub.jsonl"
    run = ok(projcomp("push", out, "me/tiny-compact", "--private", fake_hub_log=log, env={"HF_TOKEN": "hf_x"}))
    assert "pushed" in run.stdout
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c["call"] for c in calls] == ["create_repo", "create_commit"] and calls[0]["private"] is True
    readme = len((out / "README.md").read_text().replace(f'"{out.name}"', '"me/tiny-compact"').encode())
    assert calls[1]["files"] == {p.name: readme if p.name == "README.md" else p.stat().st_size for p in out.iterdir()}


# Each must fail at argument checking: one line, exit status 2, no torch imported, in well under 2 s.
CHECK_SCRIPT = """
import sys, time
start = time.perf_counter()
from hf_projcomp.cli import main
try:
    main(sys.argv[1:])
except SystemExit as stop:
    print(stop.code, "torch" in sys.modules, round(time.perf_counter() - start, 2))
"""


@pytest.mark.parametrize(
    "args, message",
    [
        (["compress", "--target-params", "abc"], "argument --target-params: expected a fraction in (0, 1)"),
        (["compress", "--target-params", "1.5"], "or a whole parameter count > 1, got '1.5'"),
        (["compress", "--target-params", "0"], "or a whole parameter count > 1, got '0'"),
        (["compress", "--output", "."], "output directory . already exists; pass --overwrite to replace it"),
        (["compress", "--calibration", "missing.txt"], "argument --calibration: missing.txt does not exist"),
        (["compress", "--calibration", "README.md", "--samples", "2", "--output", "new"], "not both"),
        (
            ["compress", "--model", "/nonexistent/model"],
            "argument --model: model path /nonexistent/model does not exist",
        ),
        (["compress", "--model", "./relative-missing"], "model path ./relative-missing does not exist"),
        (["compress", "--distill-tokens", "-1"], "argument --distill-tokens: expected a whole number >= 0, got '-1'"),
        (["compress", "--distill-lr", "0"], "argument --distill-lr: expected a number > 0, got '0'"),
        (
            ["compress", "--distill-schedule", "step"],
            "argument --distill-schedule: invalid choice: 'step' (choose from",
        ),
        (
            ["compress", "--distill-tokens", "100", "--output", "new"],
            "--distill-tokens must be 0 or at least one training step (2,048 tokens), got 100",
        ),
        (["eval"], "the following arguments are required: model"),
        (["eval", "/nonexistent/model"], "model path /nonexistent/model does not exist"),
        (["eval", "x", "--text", "missing.txt"], "argument --text: missing.txt does not exist"),
        (["merge", "/nonexistent/adapter", "--output", "x"], "argument adapter: /nonexistent/adapter does not exist"),
        (["push", "/nonexistent", "me/x"], "argument directory: /nonexistent does not exist"),
        (["push", ".", "me/x"], "no Hugging Face token: pass --token, set HF_TOKEN"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_fail_before_any_work(args, message, tmp_path):
    (tmp_path / "README.md").write_text("x")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_TOKEN")}
    env.update(PYTHONPATH=str(ROOT), HF_HOME=str(tmp_path / "hf-home"))  # no saved login either
    run = subprocess.run(
        [sys.executable, "-c", CHECK_SCRIPT, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env
    )
    code, torch_loaded, seconds = run.stdout.split()
    assert code == "2" and torch_loaded == "False" and float(seconds) < 2, run.stdout
    assert run.stderr.count("\n") == 1 and message in run.stderr, run.stderr


@pytest.mark.parametrize("quiet", [True, False])
def test_quiet_silences_plain_tqdm(quiet):
    """transformers' GGUF reader (the demo model's one-time conversion) draws a plain tqdm bar, outside
    transformers' progress-bar switch: -q must silence it too, and only -q."""
    code = (
        "import argparse; from hf_projcomp.cli import configure_logging\n"
        f"configure_logging(argparse.Namespace(quiet={quiet}, verbose=False))\n"
        "from tqdm import tqdm\nfor _ in tqdm(range(3), desc='converting', mininterval=0): pass"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TQDM_DISABLE")}
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stderr
    assert ("converting" in run.stderr) is not quiet, run.stderr


def test_distill_flags_build_the_library_config(tmp_path):
    """What ``compress`` hands to distill_pruned is the library's own recipe: --distill-tokens alone gives
    DistillConfig's defaults, the parser offers exactly the schedules DistillConfig runs, and the shortest
    run it lets through is one optimizer step."""
    from hf_projcomp.cli import _distill_config, build_parser
    from hf_projcomp.training import DistillConfig
    from hf_projcomp.training.recovery import SCHEDULERS

    parser, parsers = build_parser()
    step = DistillConfig().tokens_per_step

    def parse(*flags: str):
        args = parser.parse_args(["compress", "--output", str(tmp_path / "out"), *flags])
        args.check(parsers["compress"], args)
        return args

    assert _distill_config(parse("--distill-tokens", str(step))) == DistillConfig(max_tokens=step)
    offered = parsers["compress"]._option_string_actions["--distill-schedule"].choices
    assert sorted(offered) == sorted(SCHEDULERS)
    for schedule in offered:
        config = _distill_config(parse("--distill-tokens", str(step), "--distill-schedule", schedule))
        assert config == DistillConfig(max_tokens=step, lr_scheduler_type=schedule)
    with pytest.raises(SystemExit):
        parse("--distill-tokens", str(step - 1))


def test_help_does_not_import_torch():
    start = time.perf_counter()
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from hf_projcomp.cli import main\n"
            "try: main(['--help'])\nexcept SystemExit: print('torch' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert run.stdout.rstrip().endswith("False") and "projcomp compress" in run.stdout
    assert time.perf_counter() - start < 10  # the interpreter's start included; torch alone takes longer


def test_network_errors_are_one_line(compressed, tmp_path):
    out, _ = compressed
    code = (
        "import sys; from huggingface_hub import HfApi\n"
        "def down(*a, **k): raise ConnectionError('[Errno -3] Temporary failure in name resolution')\n"
        "HfApi.create_repo = down\n"
        "from hf_projcomp.cli import main; main(sys.argv[1:])"
    )
    env = {**os.environ, "HF_TOKEN": "hf_x", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", code, "push", str(out), "me/x"], capture_output=True, text=True, timeout=300, env=env
    )
    assert run.returncode == 1
    assert run.stderr == (
        f"projcomp push: error: could not push {out} to me/x: [Errno -3] Temporary failure in name resolution\n"
    ), run.stderr


def test_bugs_keep_their_traceback(monkeypatch, capsys, tmp_path):
    """Only mistakes in the user's input end as one line; a TypeError or an OSError from a bug does not."""
    from hf_projcomp import cli

    for error in (TypeError("unsupported operand"), OSError("[Errno 5] Input/output error")):

        def broken(args, error=error):
            raise error

        monkeypatch.setattr(cli, "compress", broken)
        with pytest.raises(type(error)):
            cli.main(["compress", "--output", str(tmp_path / "out")])
    monkeypatch.setattr(cli, "compress", lambda args: (_ for _ in ()).throw(FileNotFoundError("no such file: x.txt")))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compress", "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 1 and capsys.readouterr().err == "projcomp compress: error: no such file: x.txt\n"
