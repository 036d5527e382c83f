"""Bad inputs a new user makes: each ends in ONE line `error: <what> (<where>)` and exit
code 2, with no traceback, before any expensive work (DESIGN.md section 9). The table
in the README ("Bad input") lists these cases.

Most cases fail at recipe load or in the pre-flight checks and run in-process
(`maestro_megatron.cli.main`); those that need the run's tokenizer run the CLI in a
subprocess. `--debug` shows the traceback of the same error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maestro_megatron.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "recipes" / "tiny_cpu.yaml")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")

    def write(name, text):
        (d / name).write_text(text)
        return str(d / name)

    paths = {
        "empty": write("empty.jsonl", ""),
        "badjson": write("bad.jsonl", '{"prompt": "a"}\n{"prompt": "b",\n'),
        "noprompt": write("noprompt.jsonl", '{"question_text": "a"}\n'),
        "badcsv": write("bad.csv", "text,answer\nhello,1\n"),
        "txt": write("prompts.txt", "hello\n"),
        "numprompt": write("num.jsonl", '{"prompt": 17}\n'),
        "blankprompt": write("blank.jsonl", '{"prompt": "   "}\n'),
        "listref": write("listref.jsonl", '{"prompt": "a", "reference": ["x"]}\n'),
        "splits": write("splits.csv", "prompt,reference,split\na,1,train\nb,2,test\n"),
        "sft_noresp": write("sft.jsonl", '{"prompt": "a"}\n'),
        "a_file": write("a_file", "not a directory"),
        "long": write("long.jsonl", '{"prompt": "short"}\n'
                      + json.dumps({"prompt": "word " * 400}) + "\n"),
        "pairs_bad": write("pairs.jsonl", '{"prompt": "a", "response": 3}\n'),
    }
    (d / "not_a_model").mkdir()
    paths["not_a_model"] = str(d / "not_a_model")
    paths["dir"] = str(d)
    return paths


# (id, argv as a function of the fixture's paths, text the one error line must contain)
CASES = [
    ("recipe-missing", lambda f: ["train", "no/such.yaml"], "recipe file no/such.yaml not found"),
    ("unknown-key", lambda f: ["train", TINY, "grpo.bogus=1"],
     "grpo.bogus: unknown key"),
    ("override-named", lambda f: ["train", TINY, "grpo.group_size=1"],
     "command-line override 'grpo.group_size=1'"),
    ("wrong-type", lambda f: ["train", TINY, "grpo.lr=fast"], "grpo.lr: expected a number"),
    ("override-no-equals", lambda f: ["train", TINY, "grpo.lr"], "override must look like"),
    ("override-bad-yaml", lambda f: ["train", TINY, "grpo.lr=[1,"], "cannot parse value"),
    ("group-size-1", lambda f: ["train", TINY, "grpo.group_size=1"],
     "grpo.group_size: must be >= 2"),
    ("num-steps-0", lambda f: ["train", TINY, "run.num_steps=0"], "run.num_steps: must be >= 1"),
    ("num-steps-negative", lambda f: ["train", TINY, "run.num_steps=-5"], "run.num_steps"),
    ("tp-not-dividing-heads", lambda f: ["train", TINY, "parallel.tensor_parallel=3"],
     "parallel.tensor_parallel: 3 does not divide"),
    ("unknown-component", lambda f: ["train", TINY, "rewards.components=[ppl,bogus]"],
     "rewards.components: 'bogus'"),
    ("unknown-scalarizer", lambda f: ["train", TINY, "scalarizer.name=magic"],
     "scalarizer.name: 'magic'"),
    ("single-without-component", lambda f: ["train", TINY, "scalarizer.name=single"],
     "scalarizer.component"),
    ("templates-off-simplex", lambda f: ["train", TINY,
                                         "conductor.templates=[[0.5,0.6,0,0,0]]"],
     "not on the simplex"),
    ("unknown-engine", lambda f: ["train", TINY, "rollout.engine=sglang"],
     "rollout.engine: 'sglang'"),
    ("unknown-scorer", lambda f: ["train", TINY, "rewards.pref.scorer=nope"],
     "rewards.pref.scorer: 'nope'"),
    ("unknown-prompt-format", lambda f: ["train", TINY, "data.prompt_format=html"],
     "data.prompt_format"),
    ("unknown-proxy", lambda f: ["train", TINY, "rewards.ppl.proxy=judge"], "rewards.ppl.proxy"),
    ("unknown-advantage", lambda f: ["train", TINY, "grpo.advantage_estimator=ppo"],
     "grpo.advantage_estimator"),
    ("unknown-nonfinite-mode", lambda f: ["train", TINY, "rewards.on_nonfinite=maybe"],
     "rewards.on_nonfinite"),
    ("minibatches-not-dividing", lambda f: ["train", TINY, "grpo.num_minibatches=3"],
     "grpo.num_minibatches: 3 does not divide"),
    ("no-room-for-prompt", lambda f: ["train", TINY, "rollout.max_new_tokens=128"],
     "leaves no room for a prompt"),
    ("data-missing", lambda f: ["train", TINY, "data.path=/no/such.jsonl"], "file not found"),
    ("data-empty", lambda f: ["train", TINY, f"data.path={f['empty']}"], "empty file"),
    ("data-bad-json-line", lambda f: ["train", TINY, f"data.path={f['badjson']}"],
     "line 2: invalid JSON"),
    ("data-no-prompt-key", lambda f: ["train", TINY, f"data.path={f['noprompt']}"],
     "missing prompt key 'prompt'"),
    ("data-wrong-csv-header", lambda f: ["train", TINY, f"data.path={f['badcsv']}"],
     "line 2: missing prompt key"),
    ("data-unknown-extension", lambda f: ["train", TINY, f"data.path={f['txt']}"],
     "unknown prompt file extension '.txt'"),
    ("data-prompt-not-string", lambda f: ["train", TINY, f"data.path={f['numprompt']}"],
     "must be a string, got int"),
    ("data-prompt-blank", lambda f: ["train", TINY, f"data.path={f['blankprompt']}"],
     "key 'prompt' is empty"),
    ("data-reference-list", lambda f: ["train", TINY, f"data.path={f['listref']}"],
     "key 'reference' must be a string or null"),
    ("data-split-absent", lambda f: ["train", TINY, f"data.path={f['splits']}",
                                     "data.split=validation"],
     "no rows of split 'validation'"),
    ("warmup-file-missing", lambda f: ["train", TINY, "warmup.path=/no/warmup.jsonl"],
     "file not found"),
    ("warmup-row-no-response", lambda f: ["train", TINY, f"warmup.path={f['sft_noresp']}"],
     "missing key 'response'"),
    ("output-dir-is-a-file", lambda f: ["train", TINY, f"run.output_dir={f['a_file']}"],
     "exists and is not a directory"),
    ("output-dir-under-a-file", lambda f: ["train", TINY, f"run.output_dir={f['a_file']}/run"],
     "is not writable"),
    ("hf-path-missing", lambda f: ["train", TINY, "model.hf_path=/no/such/model"],
     "model.hf_path: /no/such/model is not a directory"),
    ("hf-path-not-a-model", lambda f: ["train", TINY, f"model.hf_path={f['not_a_model']}"],
     "has no config.json"),
    ("rm-without-path", lambda f: ["train", TINY, "rewards.pref.scorer=sequence_classifier"],
     "the sequence_classifier scorer needs"),
    ("rm-path-missing", lambda f: ["train", TINY, "rewards.pref.model_path=/no/rm"],
     "rewards.pref.model_path: /no/rm is not a model directory"),
    ("check-recipe-missing", lambda f: ["check-recipe", "nope.yaml"], "nope.yaml not found"),
    ("explain-not-a-run", lambda f: ["explain", f["dir"]], "a finished run"),
    ("explain-bad-pairs", lambda f: ["explain", f["dir"], "--pairs", f["pairs_bad"]],
     "key 'response' must be a non-empty string"),
    ("bandit-steps-0", lambda f: ["bandit", "--steps", "0"], "--steps must be >= 1, got 0"),
    ("bandit-steps-negative", lambda f: ["bandit", "--steps", "-5"], "--steps must be >= 1"),
]


@pytest.mark.parametrize("argv,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_one_line_error_and_exit_2(files, argv, expected, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(argv(files)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert expected in err[0], err[0]


def test_the_table_covers_at_least_40_cases():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


def test_debug_shows_the_traceback(files):
    from maestro_megatron.data.prompts import DataError

    with pytest.raises(DataError, match="empty file"):
        main(["--debug", "train", TINY, f"data.path={files['empty']}"])


def test_seq_length_beyond_the_checkpoint_is_named_before_any_model(tmp_path, capsys,
                                                                    monkeypatch):
    """A recipe's model.seq_length (the trainer's and vLLM's context) longer than the
    checkpoint's positions: one line naming the key and both numbers, before anything
    (here the model directory has nothing but its config.json)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"],
                                                   "max_position_embeddings": 64}))
    monkeypatch.chdir(ROOT)
    assert main(["train", TINY, f"model.hf_path={model}",
                 f"run.output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: model.seq_length: 128 exceeds "
                                               "max_position_embeddings in "), err
    assert f"{model / 'config.json'} = 64" in err[0], err[0]
    assert not (tmp_path / "run").exists()


def _cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "maestro_megatron.cli", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.integration
def test_a_prompt_longer_than_the_context_is_named_before_any_model(files, tmp_path):
    """Found with the run's tokenizer before the models, the warm-up and vLLM start
    (the landed code: a VLLMValidationError in the middle of step 1)."""
    run_dir = tmp_path / "run"
    proc = _cli("train", TINY, f"data.path={files['long']}", f"run.output_dir={run_dir}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith(f"error: {files['long']}: line 2: prompt is "), lines[-1]
    assert "model.seq_length 128 - rollout.max_new_tokens 48 leaves 80" in lines[-1]
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "hf_random_init").exists()  # nothing expensive was built


def test_the_docs_table_lists_every_case():
    table = (ROOT / "docs" / "bad_inputs.md").read_text()
    missing = [c[0] for c in CASES if f"| {c[0]} |" not in table]
    assert not missing, missing
