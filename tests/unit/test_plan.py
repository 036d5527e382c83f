"""`maestro plan`: parameter counts, hand-worked bytes per item, the recipes' verdicts,
the refusal of `maestro train`, and the command line (maestro_megatron/plan/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from maestro_megatron.cli import main
from maestro_megatron.config import load_recipe
from maestro_megatron.config.schema import (
    GRPOConfig,
    MemoryConfig,
    ModelConfig,
    ParallelConfig,
    PrecisionConfig,
    Recipe,
    RewardsConfig,
    RolloutConfig,
)
from maestro_megatron.errors import UserError
from maestro_megatron.plan import check_train_memory, plan_memory, plan_recipe
from maestro_megatron.plan.activations import (
    ActivationShape,
    forward_activations,
    inflight_forwards,
    layer_bytes_per_token,
    logits_bytes,
    train_activations,
)
from maestro_megatron.plan.build import launch_world, train_gate
from maestro_megatron.plan.params import (
    engine_parameters_per_gpu,
    hf_parameters,
    model_parameters,
    padded_vocab_size,
    stage_parameters,
)
from maestro_megatron.plan.roles import engine_shards, make_layout, num_engines

ROOT = Path(__file__).resolve().parents[2]
R8 = str(ROOT / "recipes" / "qwen3_8b_maestro.yaml")
R70 = str(ROOT / "recipes" / "llama70b_maestro.yaml")
GB = 10**9

# The small config every golden number below is worked out for: L 2, h 64, f 128, a 4,
# g 2, d 16 (q = 64, kv = 32), vocab 250 -> 256 padded (multiple of 128 x TP 2), TP 2
# with sequence parallelism (p = 2), bf16 (y = 2), micro-batch 2 x 32 tokens (N = 64).
SMALL = Recipe(
    model=ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                      num_query_groups=2, kv_channels=16, vocab_size=250, seq_length=32,
                      tie_embeddings=False),
    parallel=ParallelConfig(tensor_parallel=2, sequence_parallel=True),
    precision=PrecisionConfig(dtype="bf16"),
    memory=MemoryConfig(logprob_chunk_tokens=16),
    grpo=GRPOConfig(num_prompts_per_step=4, group_size=2, micro_batch_size=2),
    rewards=RewardsConfig(components=("fmt", "len")),
    rollout=RolloutConfig(gpu_memory_utilization=0.5, tensor_parallel=2, placement="replica",
                          enable_sleep_mode=True, refit_bucket_mb=1),
)
TE = ActivationShape(micro_batch=2, seq=32, hidden=64, ffn=128, heads=4, groups=2,
                     head_dim=16, tp=2, sequence_parallel=True, qk_layernorm=False, bytes=2,
                     spec="transformer_engine")
# Per TE layer and token, bytes: MLP 5f/t y = 640, norms 4h/p y = 256, QKV output
# (q + 2kv)/t y = 128, RoPE'd q, k (q + kv)/t y = 96, attention output q/t y = 64.
TE_LAYER = 640 + 256 + 128 + 96 + 64
HEAD = (2 * 64 // 2 * 2 + 64 * 2) * 64  # final norm 2h/p y + gathered h capture h y, x N


def _small_plan(recipe: Recipe = SMALL, world: int = 4):
    return plan_memory(recipe, make_layout(recipe, world, 4), 80 * GB,
                       transformer_impl="transformer_engine", reward_model=None)


def _replace(recipe: Recipe, section: str, **fields) -> Recipe:
    import dataclasses

    return dataclasses.replace(recipe, **{section: dataclasses.replace(
        getattr(recipe, section), **fields)})


def test_parameter_counts_of_qwen3_8b_and_llama_70b():
    qwen, llama = load_recipe(R8).model, load_recipe(R70).model
    assert model_parameters(qwen) == 8_190_735_360
    assert model_parameters(llama) == 70_553_706_496
    # Per GPU: Qwen3-8B at TP 2 (vocab 151936 -> 152064); Llama at TP 8 x PP 4 (128256 ->
    # 129024): 20 layers of 106,971,136, + the embedding / output layer 132,120,576.
    assert stage_parameters(qwen, 2, 1, 0).total == 4_096_046_080
    assert [stage_parameters(llama, 8, 4, p).total for p in range(4)] == [
        2_271_543_296, 2_139_422_720, 2_139_422_720, 2_271_551_488]


def test_padded_vocab_is_megatrons():
    from maestro_megatron.megatron.model import padded_vocab_size as megatron_padded

    for vocab, tp in [(250, 1), (250, 2), (250, 4), (151936, 2), (128256, 8), (256, 2)]:
        cfg = ModelConfig(vocab_size=vocab, make_vocab_size_divisible_by=128)
        assert padded_vocab_size(vocab, 128, tp) == megatron_padded(cfg, tp)


def test_hf_reward_model_counts():
    skywork = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
               "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
               "vocab_size": 128256, "id2label": {"0": "LABEL_0"}}
    assert hf_parameters(skywork) == 7_504_928_768  # Llama-3.1-8B - lm_head + 1 x 4096
    qwen = load_recipe(R8).model
    qwen_cls = {"model_type": "qwen3", "hidden_size": 4096, "intermediate_size": 12288,
                "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
                "head_dim": 128, "vocab_size": 151936, "num_labels": 1}
    assert hf_parameters(qwen_cls) == model_parameters(qwen) - 151936 * 4096 + 4096
    assert hf_parameters({"model_type": "gpt2", "hidden_size": 8}) is None


def test_small_config_weights_gradients_optimizer():
    # Per GPU: per layer (h (a + 2g) d + a d h + 2hf + fh) / t + 2h = 36864 / 2 + 128,
    # x 2 layers = 37120; embedding and output layer 256 x 64 / 2 each; final norm 64.
    assert stage_parameters(SMALL.model, 2, 1, 0).total == 37120 + 2 * 8192 + 64 == 53568
    train = _small_plan().worst("train").items
    assert train["weights"] == 53568 * 2
    assert train["gradients"] == 53568 * 4  # grad_reduce_in_fp32
    assert train["optimizer"] == 12 * 53568 // 2  # fp32 main + m + v, sharded over DP 2
    bf16_grads = _small_plan(_replace(SMALL, "memory", grad_reduce_in_fp32=False))
    assert bf16_grads.worst("train").items["gradients"] == 53568 * 2
    unsharded = _small_plan(_replace(SMALL, "parallel", use_distributed_optimizer=False))
    assert unsharded.worst("train").items["optimizer"] == 12 * 53568
    fp32 = _small_plan(_replace(SMALL, "precision", dtype="fp32"))
    assert fp32.worst("train").items["optimizer"] == 8 * 53568 // 2  # no main copy


def test_activations_per_recompute_setting():
    assert layer_bytes_per_token(TE, "none") == TE_LAYER == 1184
    assert layer_bytes_per_token(TE, "selective") == TE_LAYER  # flash: nothing to drop
    kw = dict(recompute_num_layers=1, chunk_layers=2, inflight=1, pipelined=False,
              last_stage=True)
    assert train_activations(TE, recompute="none", **kw) == 2 * TE_LAYER * 64 + HEAD
    assert train_activations(TE, recompute="selective", **kw) == 2 * TE_LAYER * 64 + HEAD
    # full: each layer's input y h/p (64 bytes per token), plus one layer recomputed.
    assert train_activations(TE, recompute="full", **kw) == 2 * 64 * 64 + TE_LAYER * 64 + HEAD
    kw["recompute_num_layers"] = 2  # one group of 2 layers: one input, 2 layers recomputed
    assert train_activations(TE, recompute="full", **kw) == 64 * 64 + 2 * TE_LAYER * 64 + HEAD
    # A first pipeline stage with 4 micro-batches in flight keeps 4 outputs [s/p, b, h].
    assert train_activations(TE, recompute="none", recompute_num_layers=1, chunk_layers=2,
                             inflight=4, pipelined=True, last_stage=False) \
        == 4 * 2 * TE_LAYER * 64 + 4 * 64 * 64
    assert _small_plan().worst("train").items["activations"] == 2 * TE_LAYER * 64 + HEAD


def test_local_spec_activations_and_the_score_matrix():
    local = ActivationShape(micro_batch=2, seq=32, hidden=64, ffn=128, heads=4, groups=2,
                            head_dim=16, tp=1, sequence_parallel=False, qk_layernorm=False,
                            bytes=4, spec="local")
    # fp32: MLP 5f y 2560, norms 2h (8 + y) 1536, RoPE'd q 256, context 256, repeated k, v
    # 2q y 512, softmax s a 4 = 512.
    assert layer_bytes_per_token(local, "none") == 2560 + 1536 + 256 + 256 + 512 + 512
    # selective: no repeated k, v and no scores; the RoPE'd k (128) and QKV output (512).
    assert layer_bytes_per_token(local, "selective") == 2560 + 1536 + 256 + 256 + 128 + 512
    import dataclasses

    bf16 = dataclasses.replace(local, bytes=2)  # norms h (8 + 2); scores s a (4 + 2)
    assert layer_bytes_per_token(bf16, "none") == 1280 + 1280 + 128 + 128 + 256 + 32 * 4 * 6


def test_local_spec_matches_what_megatron_saves():
    """The local spec's formula against autograd's saved tensors of real megatron-core
    layers on CPU (fp32); the rest (rsqrt, RoPE tables, the causal mask) is < 3 % here."""
    proc = subprocess.run([sys.executable, str(ROOT / "tests/support/saved_activations.py")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cases = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(cases) == 5
    for case in cases:
        measured = case["bytes_per_token"]
        if case["recompute"] == "full":
            assert measured == 64 * 4  # only the layer's input, h x 4 bytes
            continue
        shape = ActivationShape(micro_batch=2, seq=32, hidden=64, ffn=160, heads=4,
                                groups=case["groups"], head_dim=16, tp=1,
                                sequence_parallel=False, qk_layernorm=case["qk_layernorm"],
                                bytes=4, spec="local")
        planned = layer_bytes_per_token(shape, case["recompute"])
        assert planned <= measured <= 1.03 * planned, case


def test_forward_activations_and_inflight_micro_batches():
    # MLP working set: h/p + h + 5f/t = 32 + 64 + 320 elements (> attention's 336), x y N.
    assert forward_activations(TE, pipelined=False, last_stage=True) == 416 * 2 * 64 + HEAD
    assert forward_activations(TE, pipelined=True, last_stage=False) \
        == 416 * 2 * 64 + 2 * 2 * 32 * 64
    assert inflight_forwards(1, None, 0, 16) == 1
    assert [inflight_forwards(4, None, r, 16) for r in range(4)] == [4, 3, 2, 1]
    assert inflight_forwards(4, None, 0, 2) == 2
    assert inflight_forwards(4, 2, 0, 128) == 2 * 3 + 4 + 1 == 11
    assert inflight_forwards(4, 2, 3, 128) == 5
    assert inflight_forwards(4, 2, 0, 1) == 2  # capped at n x v chunk forwards
    # megatron's interleaving penalty: L (1 + (P - 1) / (P v)) layers on the first stage.
    assert 11 * 80 // 8 == 80 * (1 + 3 / 8)


def test_logits_with_and_without_chunking():
    shard = 256 // 2  # padded vocab / TP
    chunked = logits_bytes(TE, 256, chunk_tokens=16, train=True)
    assert chunked == {"logits": 64 * shard * 2, "logits_grad": 2 * 64 * shard * 2,
                       "logprob_fp32": 16 * shard * 12}  # bf16 block.float(), z, exp(z)
    whole = logits_bytes(TE, 256, chunk_tokens=0, train=False)
    assert whole == {"logits": 64 * shard * 2, "logits_grad": 0,
                     "logprob_fp32": 64 * shard * 12}
    assert logits_bytes(TE, 256, chunk_tokens=4096, train=False)["logprob_fp32"] \
        == 64 * shard * 12  # a chunk larger than the micro-batch: the micro-batch
    items = _small_plan().worst("train").items
    assert (items["logits"], items["logits_grad"], items["logprob_fp32"]) == \
        (16384, 32768, 24576)


def test_small_config_engine_kv_and_phases():
    plan = _small_plan()
    eng = plan.engine
    assert eng.kv_bytes_per_token == 2 * 2 * 1 * 16 * 2  # 2 L (g / engine TP) d 2 bytes
    # engine weights per GPU: L [h (a/2 + 2) d + (a d h + 3 h f) / 2 + 2h] + 2 V h / 2 + h
    assert eng.weights == (2 * (4096 + 14336 + 128) + 16000 + 64) * 2
    assert eng.num_engines == 2 and eng.budget == 40 * GB
    assert eng.kv_cache == 40 * GB - eng.weights - int(1.5 * GB)
    assert eng.max_length_sequences == eng.kv_cache // 128 // 32
    resident = 53568 * 2 + 53568 * 4 + 12 * 53568 // 2 + 53568 * 2 + int(2.5 * GB)
    assert eng.startup_free == 80 * GB - resident - int(0.5 * GB)
    rollout = plan.worst("rollout").items
    assert rollout["rollout_engine"] == 40 * GB + int(0.5 * GB)  # awake: budget + context
    assert rollout["refit_buckets"] == 2 * 2**20
    assert sum(rollout.values()) == resident + 40 * GB + int(0.5 * GB) + 2 * 2**20
    train = plan.worst("train").items
    assert train["rollout_engine"] == GB  # asleep: context + CUDA-graph pool
    assert train["step_tensors"] == 4 * 32 * (12 + 32)  # 4 rows of 32 tokens per DP rank
    assert list(plan.phases) == ["rollout", "forwards", "train"]  # no reward model
    offloaded = _small_plan(_replace(SMALL, "memory", offload_reference=True))
    assert "reference" not in offloaded.worst("train").items
    assert offloaded.worst("forwards").items["reference"] == 53568 * 2


def test_engine_placement_and_reward_model_roles():
    recipe = load_recipe(R8)
    layout = make_layout(recipe, 8, 8)
    assert engine_shards(recipe, layout) == {r: 1 for r in range(8)}  # 4 engines x TP 2
    leader = _replace(recipe, "rollout", placement="leader")
    assert engine_shards(leader, layout) == {0: 1, 1: 1}
    wide = _replace(recipe, "rollout", tensor_parallel=4)  # one engine per two replicas
    assert engine_shards(wide, layout) == {r: 1 for r in range(8)}
    assert num_engines(wide, layout) == 2 and num_engines(recipe, layout) == 4
    for width in (3, 16):  # not whole replicas' GPUs; wider than a node
        with pytest.raises(UserError, match="rollout.tensor_parallel"):
            engine_shards(_replace(recipe, "rollout", tensor_parallel=width), layout)
    plan = plan_recipe(load_recipe(R8, ["rewards.pref.placement=tp_leader",
                                        "memory.offload_reward_model=false"]))
    rows = {r.role.reward_model: r for r in plan.phases["train"]}
    assert rows[True].num_gpus == 4 and rows[False].num_gpus == 4
    assert rows[True].items["reward_model"] == 2 * 7_504_928_768
    assert "reward_model" not in rows[False].items


def test_reward_model_from_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "vocab_size": 128256, "max_position_embeddings": 131072, "num_labels": 1}))
    plan = plan_recipe(load_recipe(R8, [f"rewards.pref.model_path={tmp_path}"]))
    assert plan.reward_model.num_parameters == 7_504_928_768
    scoring = plan.worst("scoring").items
    # 16 x 4096 tokens: MLP halves + residual 2 (3f + 3h), its KV cache 2 L g d 2 =
    # 131072 bytes per token (use_cache), and the boolean mask b s^2.
    tokens = 16 * 4096
    assert scoring["reward_model_activations"] == tokens * (2 * (3 * 14336 + 3 * 4096)
                                                            + 131072) + 16 * 4096 ** 2
    assert scoring["reward_model"] == 2 * 7_504_928_768
    with pytest.raises(UserError, match="rewards.pref.num_parameters"):
        plan_recipe(load_recipe(R8, ["rewards.pref.num_parameters=null",
                                     f"rewards.pref.model_path={tmp_path / 'none'}"]))


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "recipes").glob("qwen3_8b_*.yaml")))
def test_the_8b_recipes_fit_one_node(name):
    plan = plan_recipe(load_recipe(ROOT / "recipes" / name), nodes=1, gpus_per_node=8,
                       gpu_memory_gb=80)
    assert plan.fits, name
    assert plan.peak[1].total <= 76 * GB


def test_the_70b_recipe_fits_four_nodes():
    plan = plan_recipe(load_recipe(R70), nodes=4, gpus_per_node=8, gpu_memory_gb=80)
    assert plan.fits and plan.layout.dp == 1
    assert plan.engine.num_engines == 4 and plan.engine.tensor_parallel == 8  # one a node
    assert plan.engine.startup_ok and plan.engine.max_length_sequences >= 32
    rollout = plan.phases["rollout"]
    assert {r.role.engines for r in rollout} == {1} and sum(r.num_gpus for r in rollout) == 32
    assert plan.peak[0] == "rollout"


def test_train_gate_decides_from_world_and_gpu_memory():
    recipe = load_recipe(R8)
    line = check_train_memory(recipe, world_size=8, gpus_per_node=8, gpu_memory_bytes=80 * GB)
    assert line.startswith("plan: fits: peak ") and "of 80.0 GB per GPU" in line
    with pytest.raises(UserError, match=r"does not fit: .*train phase.*largest item: "
                                        r"activations"):
        check_train_memory(recipe, world_size=8, gpus_per_node=8, gpu_memory_bytes=40 * GB)
    with pytest.raises(UserError, match="not divisible"):
        check_train_memory(recipe, world_size=7, gpus_per_node=8, gpu_memory_bytes=80 * GB)
    assert check_train_memory(recipe, world_size=8, gpus_per_node=8,
                              gpu_memory_bytes=None) is None  # no CUDA: never refuses
    import torch

    tiny = train_gate(load_recipe(ROOT / "recipes" / "tiny_cpu.yaml"))
    if torch.cuda.is_available():  # one process on one GPU: the tiny recipe fits
        assert tiny.startswith("plan: fits: ")
    else:
        assert tiny is None  # no CUDA: no plan, no refusal


def test_launch_world_from_torchrun_and_slurm():
    assert launch_world({"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}, 8) == (16, 8)
    assert launch_world({"SLURM_NTASKS": "32", "SLURM_NTASKS_PER_NODE": "8(x4)"}, 8) == (32, 8)
    assert launch_world({"WORLD_SIZE": "4"}, 8) == (4, 4)
    assert launch_world({}, 0) == (1, 1)


def test_cli_plan_fits_and_json(capsys):
    assert main(["plan", R8]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("plan: fits: peak ") and out[-1].endswith(
        "GB per GPU (train phase, TP rank 0 (reward model))")
    assert any(line.startswith("activations") for line in out)
    assert main(["plan", R8, "--json", "--gpus-per-node", "8"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fits"] and data["layout"]["dp"] == 4
    assert data["phases"]["train"][0]["items"]["weights"] == 2 * 4_096_046_080
    assert main(["plan", R70, "--nodes", "4"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("plan: fits: peak ")


def test_cli_variant_that_cannot_fit_exits_2_with_one_line(capsys):
    assert main(["plan", R8, "memory.recompute=none", "memory.offload_reference=false",
                 "rollout.gpu_memory_utilization=0.9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: ") and "does not fit" in err[0]
    assert ("(rollout phase, TP rank 0 (reward model)); largest item: rollout engine 72.5 GB"
            in err[0])
    # flags after the overrides; 40 GB GPUs: the train phase, its activations
    assert main(["plan", R8, "memory.recompute=selective", "--gpu-memory", "40"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "of 40.0 GB per GPU (train phase" in err[0]
    assert "largest item: activations" in err[0]


def test_engine_kv_cache_too_small_is_refused():
    plan = plan_recipe(load_recipe(R8, ["rollout.gpu_memory_utilization=0.05"]))
    assert not plan.fits  # 4 GB budget < 8.2 GB weights + 1.5 GB runtime
    from maestro_megatron.plan import verdict

    assert "holds no 4096-token sequence" in verdict(plan)
    assert engine_parameters_per_gpu(load_recipe(R8).model, 2) * 2 == plan.engine.weights


def test_host_memory_for_what_leaves_the_gpus():
    """8B on 8 GPUs: engine TP 2 at sleep level 1 keeps each GPU's half of the bf16
    weights on the host (8 x 8.19 GB), the offloaded reference its TP half (8 x 8.19 GB),
    the offloaded 7.5B reward model 15 GB on each of the 4 TP-rank-0 GPUs; level 2 and
    resident copies need no host memory."""
    plan = plan_recipe(load_recipe(R8), 1, 8, 80.0)
    half = 8_190_185_472 // 2 * 2  # the policy's parameters / TP 2, bf16
    host = plan.host_per_node
    assert host["engine_weights"] == pytest.approx(8 * half, rel=0.01)
    assert host["reference"] == pytest.approx(8 * half, rel=0.01)
    assert host["reward_model"] == 4 * 2 * plan.reward_model.num_parameters
    level2 = plan_recipe(load_recipe(R8, ["rollout.sleep_level=2",
                                          "memory.offload_reference=false"]), 1, 8, 80.0)
    assert set(level2.host_per_node) == {"reward_model"}


def test_async_save_stages_the_checkpoint_in_host_memory():
    """run.async_save: megatron copies every rank's state to the host before its writer
    forks: the whole checkpoint (14 bytes per bf16 parameter) over the job's nodes."""
    from maestro_megatron.plan.memory import checkpoint_bytes

    sync = plan_recipe(load_recipe(R8), 1, 8, 80.0)
    background = plan_recipe(load_recipe(R8, ["run.async_save=true"]), 1, 8, 80.0)
    assert "checkpoint_staging" not in sync.host_per_node
    assert background.host_per_node["checkpoint_staging"] == \
        checkpoint_bytes(background.model_parameters, 2)
