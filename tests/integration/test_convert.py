"""Converter in one process: HF -> megatron (laid out for TP=2 x PP=2) -> HF round trip,
and bad inputs (exit code 2, a clear message, no output directory left behind)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # tests.support (pytest does not put the root on sys.path)

from maestro_megatron.weights.cli import main  # noqa: E402
from maestro_megatron.weights.hf_io import HFCheckpoint  # noqa: E402
from maestro_megatron.weights.output import atomic_output  # noqa: E402
from tests.support.tiny_hf import build_tiny_hf, hf_logits  # noqa: E402

pytestmark = pytest.mark.integration

MODELS = {"llama": False, "qwen2": True, "qwen3": True}  # arch -> tied embeddings


def convert_in_subprocess(*commands: list[str]) -> None:
    """Run converter commands in one fresh process.

    hf-to-megatron initialises torch.distributed and megatron's CPU shims, which must not
    leak into the pytest process (megatron-to-hf and the input checks need neither).
    """
    code = ("import sys; from maestro_megatron.weights.cli import main; "
            "sys.exit(max(main(c) for c in " + repr([list(map(str, c)) for c in commands]) + "))")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    # Llama in several safetensors files + index: the reader follows the index.
    return {arch: build_tiny_hf(root / arch, arch, tied=tied,
                                max_shard_size="100KB" if arch == "llama" else None)
            for arch, tied in MODELS.items()}


def assert_same_tensors(a: Path, b: Path) -> None:
    """Same names, dtypes, shapes and bytes."""
    ca, cb = HFCheckpoint(a), HFCheckpoint(b)
    assert ca.names() == cb.names()
    for name in sorted(ca.names()):
        ta, tb = ca.read(name), cb.read(name)
        assert ta.dtype == tb.dtype and ta.shape == tb.shape, name
        assert ta.numpy().tobytes() == tb.numpy().tobytes(), name


@pytest.fixture(scope="module")
def megatron_dirs(hf_dirs, tmp_path_factory):
    """Each model converted by one process for TP=2 x PP=2 (vocab padded to 256)."""
    root = tmp_path_factory.mktemp("mg")
    convert_in_subprocess(*[["hf-to-megatron", "--hf", hf_dirs[a], "--out", root / a,
                             "--tp", "2", "--pp", "2", "--no-progress"] for a in MODELS])
    return {arch: root / arch for arch in MODELS}


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_round_trip_is_byte_identical(hf_dirs, megatron_dirs, arch, tmp_path):
    mg, back = megatron_dirs[arch], tmp_path / "back"
    meta = json.loads((mg / "maestro_weights.json").read_text())
    assert meta["padded_vocab_size"] == 256 and meta["tensor_parallel"] == 2
    assert (mg / "hf_assets" / "tokenizer_config.json").is_file()
    assert main(["megatron-to-hf", "--megatron", str(mg), "--out", str(back),
                 "--max-shard-size", "60KB", "--no-progress"]) == 0
    assert_same_tensors(hf_dirs[arch], back)
    assert (back / "model.safetensors.index.json").is_file()  # > 1 shard at 60KB
    assert (back / "tokenizer_config.json").read_bytes() == (
        hf_dirs[arch] / "tokenizer_config.json").read_bytes()
    src, out = (json.loads((d / "config.json").read_text()) for d in (hf_dirs[arch], back))
    for key in ("architectures", "hidden_size", "num_key_value_heads", "head_dim",
                "tie_word_embeddings", "vocab_size", "rms_norm_eps", "bos_token_id"):
        assert out.get(key) == src.get(key), key
    assert ("lm_head.weight" in HFCheckpoint(back).names()) == (not MODELS[arch])
    tokens = torch.randint(0, 250, (2, 9), generator=torch.Generator().manual_seed(0))
    assert torch.equal(hf_logits(back, tokens), hf_logits(hf_dirs[arch], tokens))
    assert not list(tmp_path.glob(".*partial")) and not list(mg.parent.glob(".*partial"))



def _dcp_index(ckpt: Path):
    """A torch_dist checkpoint's index without its per-save id (storage_meta)."""
    from maestro_megatron.weights.dcp_read import read_metadata

    md = read_metadata(ckpt)
    return md.state_dict_metadata, md.storage_data, md.planner_data


def test_in_process_save_writes_what_megatron_core_writes(hf_dirs, tmp_path):
    """The converter's torch_dist output (a model on the meta device, each tensor read
    from HF as it is written, by weights/dist_save.py's writer in this process) is the
    checkpoint megatron-core's default strategy writes for the same model built in
    memory and filled from HF, byte for byte."""
    from maestro_megatron.weights.convert import hf_to_megatron

    ours, default = tmp_path / "ours", tmp_path / "default"
    hf_to_megatron(hf_dirs["llama"], ours, progress=False)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "tests.support.default_save",
                           str(hf_dirs["llama"]), str(default)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    files = sorted(p.relative_to(default) for p in default.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(ours) for p in ours.rglob("*") if p.is_file()
                           and p.relative_to(ours).parts[0] not in ("maestro_weights.json",
                                                                     "hf_assets"))
    assert len([f for f in files if f.suffix == ".distcp"]) == 2  # 2 files per rank, as before
    for name in files:
        if name.name != ".metadata":
            assert (ours / name).read_bytes() == (default / name).read_bytes(), name
    assert _dcp_index(ours) == _dcp_index(default)


def _edit_config(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _missing_shard(hf_dirs, tmp):
    bad = shutil.copytree(hf_dirs["llama"], tmp / "bad")
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    gone = sorted(set(index["weight_map"].values()))[1]
    (bad / gone).unlink()
    return ["--hf", str(bad)], f"names shard {gone}, which does not exist"


def _unsupported(hf_dirs, tmp):
    bad = _edit_config(hf_dirs["qwen2"], tmp / "bad", architectures=["GPT2LMHeadModel"])
    return ["--hf", str(bad)], "unsupported architecture 'GPT2LMHeadModel'"


def _shape_mismatch(hf_dirs, tmp):
    bad = _edit_config(hf_dirs["qwen3"], tmp / "bad", intermediate_size=128)
    return (["--hf", str(bad)], "tensor model.layers.0.mlp.gate_proj.weight has shape "
            "[96, 64] but config.json implies [128, 64]")


def _tp_not_dividing(hf_dirs, tmp):
    return ["--hf", str(hf_dirs["llama"]), "--tp", "3"], "--tp 3 does not divide"


def _truncated_shard(hf_dirs, tmp):
    bad = shutil.copytree(hf_dirs["llama"], tmp / "bad")
    shard = sorted(bad.glob("model-*.safetensors"))[1]
    os.truncate(shard, shard.stat().st_size - 100)
    return ["--hf", str(bad)], f"{shard}: not a readable safetensors file"


def _corrupt_header(hf_dirs, tmp):
    bad = shutil.copytree(hf_dirs["qwen2"], tmp / "bad")
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[8:40] = b"\0" * 32  # the JSON header after its 8-byte length
    (bad / "model.safetensors").write_bytes(bytes(data))
    return ["--hf", str(bad)], f"{bad / 'model.safetensors'}: not a readable safetensors file"


BAD_INPUTS = {"missing-shard": _missing_shard, "unsupported-arch": _unsupported,
              "shape-mismatch": _shape_mismatch, "tp-not-dividing-heads": _tp_not_dividing,
              "truncated-safetensors": _truncated_shard, "corrupt-safetensors-header":
              _corrupt_header}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_hf_input_fails_cleanly(hf_dirs, case, tmp_path, capsys):
    args, message = BAD_INPUTS[case](hf_dirs, tmp_path)
    out = tmp_path / "out"
    assert main(["hf-to-megatron", *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


def _record(ckpt: Path, key: str):
    """(file, offset) of ``key``'s first stored record in a torch_dist checkpoint."""
    from maestro_megatron.weights.dcp_read import read_metadata

    info = next(i for k, i in read_metadata(ckpt).storage_data.items() if k.fqn == key)
    return ckpt / info.relative_path, info.offset


def _truncated_distcp(ckpt: Path):
    file, _ = _record(ckpt, "decoder.final_layernorm.weight")
    os.truncate(file, file.stat().st_size // 2)
    return f"{file}: truncated ({file.stat().st_size} bytes, the checkpoint's index needs"


def _damaged_record(ckpt: Path):
    file, offset = _record(ckpt, "embedding.word_embeddings.weight")
    data = bytearray(file.read_bytes())
    data[offset:offset + 64] = b"\xff" * 64  # the record's pickle header; length unchanged
    file.write_bytes(bytes(data))
    return f"{file}: damaged, a tensor record does not load"


def _missing_distcp(ckpt: Path):
    file, _ = _record(ckpt, "embedding.word_embeddings.weight")
    file.unlink()
    return f"{file}: missing (the checkpoint's index names it)"


def _torn_index(ckpt: Path):
    (ckpt / ".metadata").write_bytes(b"\x80\x04garbage")
    return f"{ckpt / '.metadata'}: cannot read the checkpoint's index"


BAD_MEGATRON = {"truncated-shard": _truncated_distcp, "damaged-record": _damaged_record,
                "missing-shard": _missing_distcp, "torn-index": _torn_index}


@pytest.mark.parametrize("case", sorted(BAD_MEGATRON))
def test_bad_megatron_input_fails_cleanly(megatron_dirs, case, tmp_path, capsys):
    bad = shutil.copytree(megatron_dirs["llama"], tmp_path / "bad")
    message = BAD_MEGATRON[case](bad)
    out = tmp_path / "out"
    assert main(["megatron-to-hf", "--megatron", str(bad), "--out", str(out),
                 "--no-progress"]) == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


def test_nonempty_output_and_non_checkpoint_input_fail(hf_dirs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["hf-to-megatron", "--hf", str(hf_dirs["llama"]), "--out", str(out)]) == 2
    assert f"output directory {out} is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    fresh = tmp_path / "fresh"
    assert main(["megatron-to-hf", "--megatron", str(hf_dirs["llama"]), "--out",
                 str(fresh)]) == 2
    assert "is not a megatron dist checkpoint" in capsys.readouterr().err
    assert not fresh.exists()


def test_cli_exit_code_in_a_real_process(hf_dirs, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_checkpoint.py"),
                           "hf-to-megatron", "--hf", str(hf_dirs["llama"]), "--out", str(out),
                           "--tp", "3"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "error: --tp 3 does not divide num_attention_heads=4" in proc.stderr
    assert not out.exists()


def test_default_progress_bar_counts_every_written_tensor(hf_dirs, tmp_path):
    """`maestro convert` as a user runs it (the progress bar on): the bar advances once
    per tensor written and ends at its total; the checkpoint is whole."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "maestro_megatron.cli", "convert",
                           "hf-to-megatron", "--hf", str(hf_dirs["llama"]), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bars = [line for line in proc.stderr.replace("\r", "\n").splitlines()
            if line.startswith("hf->megatron:")]
    done, total = bars[-1].split("|")[2].split()[0].split("/")
    assert done == total and int(total) > 0, bars[-1]
    assert (out / "metadata.json").is_file()


@pytest.mark.parametrize("direction", ["hf-to-megatron", "megatron-to-hf"])
def test_damaged_file_is_one_line_in_a_real_process(hf_dirs, megatron_dirs, direction,
                                                     tmp_path):
    """A truncated input file: exit 2 and one `error:` line naming it, no traceback."""
    if direction == "hf-to-megatron":
        args, message = _truncated_shard(hf_dirs, tmp_path)
    else:
        bad = shutil.copytree(megatron_dirs["llama"], tmp_path / "bad")
        args, message = ["--megatron", str(bad)], _truncated_distcp(bad)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_checkpoint.py"),
                           direction, *args, "--out", str(out)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
    assert proc.stderr.startswith(f"error: {message}"), proc.stderr
    assert not out.exists()


def test_atomic_output_removes_everything_on_error(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_output(out) as tmp:
        (tmp / "half-written.safetensors").write_bytes(b"x")
        raise RuntimeError("disk full")
    assert not out.exists() and not list(tmp_path.iterdir())
