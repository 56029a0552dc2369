#!/usr/bin/env python3
"""Generates the miniature TinyGPT-V model fixtures and their float64 references.

Writes everything under tests/fixtures/ except tests/fixtures/tokenizer/ (input, made by
scripts/gen_tokenizer_fixture.py). Deterministic: numpy PCG64 streams with fixed seeds.
Run: /work/venv/bin/python scripts/gen_model_fixtures.py   (needs torch, transformers 5.x,
safetensors, tokenizers, pillow, numpy; ~1 min on 2 cores). CI never runs it: the outputs are
committed. See tests/fixtures/README.md for what every file is.

Every reference is computed from the files AS RE-READ FROM DISK (torch.load / safetensors), and
each one by two independent float64 implementations (own re-implementation vs transformers),
which must agree to 1e-9.
"""

import hashlib
import json
import math
import shutil
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures import images as img  # noqa: E402
from fixtures import phi  # noqa: E402
from fixtures import vision  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
TOK_DIR = FIX / "tokenizer"
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json"]
F64 = torch.float64
AGREE = 1e-9  # own float64 implementation vs transformers float64

PHI = {
    "hidden_size": 256,
    "num_attention_heads": 4,
    "head_dim": 64,
    "partial_rotary_factor": 0.5,
    "rotary_dims": 32,
    "intermediate_size": 1024,
    "num_hidden_layers": 2,
    "max_position_embeddings": 256,
    "layer_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "gelu_new",
}
TINY = {"lora_r": 8, "lora_alpha": 16, "lora_scaling": 2.0, "post_rms_eps": 1e-6, "qk_norm_eps": 1e-5}
VISION = {
    "patch_size": 14,
    "width": 64,
    "heads": 4,
    "mlp_hidden": 256,
    "blocks_in_file": 3,
    "blocks_used": 2,
    "eps": 1e-6,
    "native_image_size": 28,
    "ln_vision_eps": 1e-5,
}
QFORMER = {"hidden_size": 64, "num_layers": 4, "heads": 4, "intermediate_size": 128, "eps": 1e-12, "cross_attention_freq": 2, "num_queries": 8}
PROJ = {"llama_proj": [128, 64], "llama_proj2": [256, 128]}
STAGE_IMAGE_SIZE = {3: 28, 4: 56}

SYSTEM_STAGE3 = (
    "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it to you. "
    "Please answer my questions."
)
PROMPT_STAGE3 = SYSTEM_STAGE3 + "###Human: <Img><ImageHere></Img> {question}###Assistant: "
PROMPT_STAGE4 = "<s>[INST] <Img><ImageHere></Img> {question} [/INST]"
QUESTION_STAGE3 = "Where is the red square?"  # picked among 6 candidates: varied greedy output, margins >= 0.3
QUESTION_STAGE4 = "[vqa] What color is the square?"

LLM_TEXTS = {
    "one": "The",
    "short": "Hello world, this is a tiny test.",
    "long": (
        "The quick brown fox jumps over the lazy dog. It's John's book; they'll read it at 10:30 tomorrow, "
        "won't they? Numbers like 12345 and 3.14159 appear too, along with some punctuation!? And then "
        "the story continues for a while, because this sequence has to be long enough: one hundred tokens "
        "is the target, and a few more words never hurt anybody who is testing a tokenizer or a model."
    ),
}
LONG_LEN = 100
PHI_INIT_NOTE = (
    "scaled like a trained model (scripts/fixtures/phi.py make_base_weights): embeddings N(0,1); q/k std 1.4/sqrt(E) "
    "(attention scores std ~2), v 1/sqrt(E); dense 0.5/sqrt(E), fc2 0.5/sqrt(F) (each residual branch ~0.2-0.4 of the "
    "residual norm); lm_head = N(0, 2/sqrt(E)) + bigram part: row succ[t] (fixed random permutation of the tokenizer ids) "
    "+= unit embedding of token t, so argmax = succ[current token] with margins 0.5-10 at every text row of every "
    "reference: greedy ids do not depend on context (check logits); Q8_0 weights+activations keep the argmax at 100 %"
)
TINY_INIT_NOTE = (
    "LoRA A std 1/sqrt(E), B std 0.03 (2*B*A ~13 % of W_qkv; LoRA on vs off moves logits by 10-17 % of the row max); "
    "q/k LayerNorm weight 1 +- 0.2; input/final LayerNorm weight 1 +- 0.1; post-attention RMSNorm weight 0.4 +- 0.04 "
    "(attention branch ~0.4 of the residual); stage 4 = stage 3 + 0.15 x mean|value| centred noise per LLM tensor"
)
VISION_INIT_NOTE = (
    "scaled like a trained model (scripts/fixtures/vision.py): low-rank residual streams - ViT in a fixed 16-dim subspace "
    "of its 64 channels, Q-Former in an 8-dim one, llama_proj maps it into an 8-dim subspace of its 128 outputs that "
    "llama_proj2 reads; stream writers (patch embedding, CLS/position/query tokens, attn.proj, fc2, Q-Former output denses) "
    "write into the subspace, readers read only it (block-quantization error is spread over all directions, so it is "
    "sqrt(width/rank) smaller relative to the signal); gains as for N(0, gain^2/fan_in) on generic inputs: patch 2, "
    "ViT q/k 1.2, attn.proj/fc2 0.5 (branches 0.1-0.25 of the stream), Q-Former self/FFN outputs 0.2 (0.12-0.19), "
    "cross-attention q/k 1.4 (logits std ~2), output 0.9 (0.4-0.9: the image's way in); visual tokens |t| ~ 14; "
    "Q4_0 weights + Q8_0 activations keep cosine >= 0.997 to the reference, two different test images give "
    "token cosine <= 0.97"
)
N_GREEDY_LLM = 20
N_GREEDY_E2E = 10


def rel(p):
    return str(Path(p).relative_to(FIX))


def npsave(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)
    back = np.load(path)
    assert back.dtype == arr.dtype and np.array_equal(back, arr), path


def clean_dir(d):
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)


# ---------------------------------------------------------------------------------------------
# Phi-2 HF directories


def phi_config_json(vocab, eos_id, dtype_name, version):
    return OrderedDict(
        [
            ("_name_or_path", "tinygptv-fixtures/phi-2-mini"),
            ("architectures", ["PhiForCausalLM"]),
            ("attention_dropout", 0.0),
            ("bos_token_id", eos_id),
            ("embd_pdrop", 0.0),
            ("eos_token_id", eos_id),
            ("hidden_act", PHI["hidden_act"]),
            ("hidden_size", PHI["hidden_size"]),
            ("initializer_range", 0.02),
            ("intermediate_size", PHI["intermediate_size"]),
            ("layer_norm_eps", PHI["layer_norm_eps"]),
            ("max_position_embeddings", PHI["max_position_embeddings"]),
            ("model_type", "phi"),
            ("num_attention_heads", PHI["num_attention_heads"]),
            ("num_hidden_layers", PHI["num_hidden_layers"]),
            ("num_key_value_heads", PHI["num_attention_heads"]),
            ("partial_rotary_factor", PHI["partial_rotary_factor"]),
            ("qk_layernorm", False),
            ("resid_pdrop", 0.1),
            ("rope_scaling", None),
            ("rope_theta", PHI["rope_theta"]),
            ("tie_word_embeddings", False),
            ("torch_dtype", dtype_name),
            ("transformers_version", version),
            ("use_cache", True),
            ("vocab_size", vocab),
        ]
    )


def msft_config_json(vocab):
    return OrderedDict(
        [
            ("_name_or_path", "tinygptv-fixtures/phi-2-mini-msft"),
            ("activation_function", "gelu_new"),
            ("architectures", ["PhiForCausalLM"]),
            ("attn_pdrop", 0.0),
            ("auto_map", {"AutoConfig": "configuration_phi.PhiConfig", "AutoModelForCausalLM": "modeling_phi.PhiForCausalLM"}),
            ("embd_pdrop", 0.0),
            ("flash_attn", False),
            ("flash_rotary", False),
            ("fused_dense", False),
            ("img_processor", None),
            ("initializer_range", 0.02),
            ("layer_norm_epsilon", PHI["layer_norm_eps"]),
            ("model_type", "phi-msft"),
            ("n_embd", PHI["hidden_size"]),
            ("n_head", PHI["num_attention_heads"]),
            ("n_head_kv", None),
            ("n_inner", None),
            ("n_layer", PHI["num_hidden_layers"]),
            ("n_positions", PHI["max_position_embeddings"]),
            ("resid_pdrop", 0.1),
            ("rotary_dim", PHI["rotary_dims"]),
            ("tie_word_embeddings", False),
            ("torch_dtype", "float16"),
            ("transformers_version", "4.35.2"),
            ("vocab_size", vocab),
        ]
    )


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def write_hf_dir(d, config, eos_id):
    write_json(d / "config.json", config)
    write_json(d / "generation_config.json", OrderedDict([("_from_model_config", True), ("bos_token_id", eos_id), ("eos_token_id", eos_id), ("transformers_version", config.get("transformers_version"))]))
    for name in TOKENIZER_FILES:
        if (TOK_DIR / name).exists():
            shutil.copyfile(TOK_DIR / name, d / name)


def cast(sd, dtype):
    return OrderedDict((k, v.to(dtype).contiguous()) for k, v in sd.items())


def write_phi_dirs(W, vocab, eos_id):
    out = {}
    # 1. current transformers layout, f32, one file
    d = FIX / "phi2-safetensors"
    clean_dir(d)
    write_hf_dir(d, phi_config_json(vocab, eos_id, "float32", "4.37.0"), eos_id)
    save_file(cast(W, torch.float32), d / "model.safetensors", metadata={"format": "pt"})
    out["phi2-safetensors"] = d

    # 2. same, f16, two shards + index
    d = FIX / "phi2-sharded"
    clean_dir(d)
    write_hf_dir(d, phi_config_json(vocab, eos_id, "float16", "4.37.0"), eos_id)
    sd16 = cast(W, torch.float16)
    names = list(sd16.keys())
    # split after layer 0 (embeddings + layer 0 | layer 1 + final norm + lm_head)
    cut = next(i for i, n in enumerate(names) if n.startswith("model.layers.1."))
    shards = [names[:cut], names[cut:]]
    weight_map = OrderedDict()
    total = 0
    for si, shard in enumerate(shards):
        fname = f"model-{si + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(OrderedDict((n, sd16[n]) for n in shard), d / fname, metadata={"format": "pt"})
        for n in shard:
            weight_map[n] = fname
            total += sd16[n].numel() * sd16[n].element_size()
    write_json(d / "model.safetensors.index.json", OrderedDict([("metadata", {"total_size": total}), ("weight_map", OrderedDict(sorted(weight_map.items())))]))
    out["phi2-sharded"] = d

    # 3. same, bf16, torch.save zip pickle
    d = FIX / "phi2-bin"
    clean_dir(d)
    write_hf_dir(d, phi_config_json(vocab, eos_id, "bfloat16", "4.37.0"), eos_id)
    torch.save(cast(W, torch.bfloat16), d / "pytorch_model.bin")
    out["phi2-bin"] = d

    # 4. transformers 4.36 fused query_key_value, f16 safetensors
    d = FIX / "phi2-fused"
    clean_dir(d)
    write_hf_dir(d, phi_config_json(vocab, eos_id, "float16", "4.36.2"), eos_id)
    save_file(cast(phi.to_fused_layout(W, PHI), torch.float16), d / "model.safetensors", metadata={"format": "pt"})
    out["phi2-fused"] = d

    # 5. Microsoft's original remote-code layout, f16 safetensors, derived from the file just
    #    written (scripts/gen_msft_fixture.py runs the same step alone). Not in manifest.json.
    out["phi2-msft"] = write_msft_dir(FIX / "phi2-safetensors")
    return out


def sha256_file(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def write_msft_dir(src):
    """Writes phi2-msft/ from the split-layout f32 directory `src` (as stored on disk).

    Same numbers (every value is f16-exact), Microsoft's names and config; the tokenizer files
    come from tokenizer/ like every other phi2-* directory. Checks the written file reads back,
    through the independent from_msft_layout, to exactly the weights of `src`.
    """
    src = Path(src)
    config = json.loads((src / "config.json").read_text())
    vocab, eos_id = config["vocab_size"], config["eos_token_id"]
    W = OrderedDict((k, v.to(F64)) for k, v in load_file(src / "model.safetensors").items())
    d = FIX / "phi2-msft"
    clean_dir(d)
    write_hf_dir(d, msft_config_json(vocab), eos_id)
    msft = cast(phi.to_msft_layout(W, PHI), torch.float16)
    for k, v in msft.items():
        assert torch.isfinite(v).all(), k
    save_file(msft, d / "model.safetensors", metadata={"format": "pt"})
    back = phi.from_msft_layout(OrderedDict((k, v.to(F64)) for k, v in load_file(d / "model.safetensors").items()), PHI)
    assert set(back) == set(W), "phi2-msft: tensor names do not map back to phi2-safetensors"
    for k in W:
        assert torch.equal(back[k], W[k]), f"phi2-msft: {k} differs from phi2-safetensors"
    return d


def read_phi_dir(d):
    """Reads any of the phi2-* directories back into float64 split-layout weights."""
    if (d / "model.safetensors.index.json").exists():
        idx = json.loads((d / "model.safetensors.index.json").read_text())
        sd = OrderedDict()
        for f in sorted(set(idx["weight_map"].values())):
            sd.update(load_file(d / f))
        assert set(sd) == set(idx["weight_map"])
    elif (d / "model.safetensors").exists():
        sd = load_file(d / "model.safetensors")
    else:
        sd = torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
    sd = OrderedDict((k, v.to(F64)) for k, v in sd.items())
    if any(k.startswith("transformer.") for k in sd):
        return phi.from_msft_layout(sd, PHI)
    if any(".query_key_value." in k for k in sd):
        return phi.from_fused_layout(sd, PHI)
    return sd


# ---------------------------------------------------------------------------------------------
# TinyGPT-V stage checkpoints

LLM_PREFIX = "llama_model.base_model.model.model."


def make_stage_trainables(seed, base=None, perturb=0.0):
    """Trainable tensors of a stage checkpoint (float64, before the per-file dtype cast).

    Draw order and shapes are fixed: changing an LLM tensor's scale must not move the projection
    draws (they feed the vision references, which other tests pin)."""
    r = phi.Rand(seed)
    E, H, L = PHI["hidden_size"], PHI["num_attention_heads"], PHI["num_hidden_layers"]
    hd, rank = PHI["head_dim"], TINY["lora_r"]
    t = OrderedDict()
    for i in range(L):
        p = f"{LLM_PREFIX}layers.{i}."
        t[p + "self_attn.query_key_value.lora_A.weight"] = r.normal((rank, E), 1.0 / math.sqrt(E))
        # B small but non-zero: 2·B·A is ~13 % of W_qkv (the merge still moves logits by 10-17 %)
        t[p + "self_attn.query_key_value.lora_B.weight"] = r.normal((3 * E, rank), 0.03)  # rows interleaved [heads][3][hd]
        t[p + "self_attn.dense.lora_A.weight"] = r.normal((rank, E), 1.0 / math.sqrt(E))
        t[p + "self_attn.dense.lora_B.weight"] = r.normal((E, rank), 0.03)
        t[p + "input_layernorm.weight"] = r.norm_weight(E)
        t[p + "self_attn.q_layernorm.weight"] = r.normal((hd,), 0.2, 1.0)
        t[p + "self_attn.k_layernorm.weight"] = r.normal((hd,), 0.2, 1.0)
        # the post-attention RMSNorm output has RMS = this weight: 0.4 ± 0.04 makes the attention
        # branch ~0.4 of the residual norm (1 ± 0.1 would make it as large as the residual)
        t[p + "post_layernorm.weight"] = r.normal((E,), 0.04, 0.4)
    t[LLM_PREFIX + "final_layernorm.weight"] = r.norm_weight(E)
    # drawn after every LLM tensor: their structure (scripts/fixtures/vision.py) can change
    # without moving an LLM value
    t.update(vision.make_projections(r, VISION, QFORMER, PROJ))
    if base is not None:  # stage 4 = stage 3 trained further: a move of ~perturb x the tensor's mean |value|
        def step(k, v):
            # LLM tensors: centred noise (the norm weights are drawn around 1 / 0.4, and v/std(v)
            # would shift them by ~10 x perturb). The projections: uncentred (mean ~0 anyway), and
            # v has the projections' low-rank structure, so stage 4 keeps it.
            z = v - v.mean() if k.startswith(LLM_PREFIX) else v
            return base[k].to(F64) + perturb * base[k].to(F64).abs().mean() * z / max(v.std().item(), 1e-12)

        t = OrderedDict((k, step(k, v)) for k, v in t.items())
    return t


def adam_state(params):
    """A real torch AdamW state_dict after two steps over `params` (what runner_base pickles)."""
    ps = [torch.nn.Parameter(v.to(torch.float32).clone()) for v in params.values()]
    opt = torch.optim.AdamW(ps, lr=3e-5, weight_decay=0.05, betas=(0.9, 0.999))
    g = torch.Generator().manual_seed(7)
    for _ in range(2):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g) * 1e-3
        opt.step()
    return opt.state_dict()


def stage_config(stage):
    s3 = stage == 3
    size = STAGE_IMAGE_SIZE[stage]
    model = OrderedDict(
        [
            ("arch", "minigpt4" if s3 else "minigpt_v2"),
            ("model_type", "pretrain_vicuna0" if s3 else "pretrain"),
            ("max_txt_len", 160 if s3 else 1024),
            ("image_size", size),
            ("end_sym", "###"),
            ("llama_model", "/mnt/share/zhengqing/phi-2"),
            ("ckpt", "output/tinygptv_stage2/checkpoint_2.pth" if s3 else "output/tinygptv_stage3/checkpoint_4.pth"),
            ("use_grad_checkpoint", True),
            ("chat_template", not s3),
            ("lora_r", TINY["lora_r"]),
            ("lora_alpha", TINY["lora_alpha"]),
            ("freeze_vit", True),
            ("freeze_qformer", True),
            ("num_query_token", QFORMER["num_queries"]),
            ("vit_precision", "fp16"),
            ("drop_path_rate", 0),
            ("prompt_template", "###Human: {} ###Assistant: " if s3 else "[INST] {} [/INST]"),
        ]
    )
    dataset = "cc_sbu_align" if s3 else "multitask_conversation"
    datasets = {
        dataset: {
            "batch_size": 4,
            "vis_processor": {"train": {"name": "blip2_image_train", "image_size": size}},
            "text_processor": {"train": {"name": "blip_caption"}},
            "sample_ratio": 10,
        }
    }
    run = OrderedDict(
        [
            ("task", "image_text_pretrain"),
            ("lr_sched", "linear_warmup_cosine_lr"),
            ("init_lr", 3e-5),
            ("min_lr", 1e-5),
            ("warmup_lr", 1e-6),
            ("weight_decay", 0.05),
            ("max_epoch", 5 if s3 else 50),
            ("iters_per_epoch", 200 if s3 else 1000),
            ("num_workers", 4),
            ("warmup_steps", 200 if s3 else 1000),
            ("seed", 42),
            ("output_dir", f"output/tinygptv_stage{stage}"),
            ("amp", True),
            ("resume_ckpt_path", None),
            ("evaluate", False),
            ("train_splits", ["train"]),
            ("device", "cuda"),
            ("world_size", 1),
            ("dist_url", "env://"),
            ("distributed", True),
            ("wandb_log", False),
            ("job_name", f"tinygptv_stage{stage}"),
        ]
    )
    return {"model": model, "datasets": datasets, "run": run}


def save_stage(path, stage, model_sd):
    ckpt = {
        "model": model_sd,
        "optimizer": adam_state(model_sd),
        "config": stage_config(stage),
        "scaler": {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 17},
        "epoch": 3,
    }
    torch.save(ckpt, path)


def stage_model_dicts(blip2_sd):
    """Returns ({3: sd, 4: sd}) as stored (OrderedDicts with the final dtypes)."""
    t3 = make_stage_trainables(seed=20240604)
    # Stage 3 mimics the pre-v1 code: norm weights stored f16 (§19), LoRA / projections f32.
    sd3 = OrderedDict()
    for k, v in t3.items():
        is_norm = k.endswith("layernorm.weight")
        sd3[k] = v.to(torch.float16 if is_norm else torch.float32)
    # Stage 4: everything f32, values moved a little from stage 3, plus Q-Former overrides
    # (only the pre-v1 code saved them; the loader must apply whatever is present).
    t4 = make_stage_trainables(seed=20240605, base=sd3, perturb=0.15)
    sd4 = OrderedDict((k, v.to(torch.float32)) for k, v in t4.items())
    r = phi.Rand(20240606)
    b = "Qformer.bert."
    override = ["query_tokens", b + "embeddings.LayerNorm.weight", b + "embeddings.LayerNorm.bias"]
    override += [k for k in blip2_sd if k.startswith(b + "encoder.layer.1.output_query.")]
    override += [k for k in blip2_sd if k.startswith(b + "encoder.layer.0.crossattention.self.key.")]
    for k in override:
        v = blip2_sd[k].to(F64)
        sd4[k] = (v + 0.1 * r.normal(tuple(v.shape), 1.0) * v.abs().mean()).to(torch.float32)
    return {3: sd3, 4: sd4}, override


# ---------------------------------------------------------------------------------------------
# Building the float64 pipelines from the files as re-read


def tiny_from_stage(base_split, stage_sd):
    """Applies a stage checkpoint to the base Phi weights.

    Returns (fused_base_with_norm_overrides, tiny dict for ref_forward (unmerged LoRA),
             split weights with LoRA merged, tiny norms for hf_model)."""
    fused = phi.to_fused_layout(base_split, PHI)
    L, hd = PHI["num_hidden_layers"], PHI["head_dim"]
    scaling = TINY["lora_alpha"] / TINY["lora_r"]
    tiny = {"q_ln_w": [], "q_ln_b": [], "k_ln_w": [], "k_ln_b": [], "post_w": [], "lora": (scaling, {})}
    g = lambda k: stage_sd[LLM_PREFIX + k].to(F64)  # noqa: E731
    for i in range(L):
        p = f"layers.{i}."
        fused["model." + p + "input_layernorm.weight"] = g(p + "input_layernorm.weight")
        tiny["q_ln_w"].append(g(p + "self_attn.q_layernorm.weight"))
        tiny["k_ln_w"].append(g(p + "self_attn.k_layernorm.weight"))
        tiny["q_ln_b"].append(torch.zeros(hd, dtype=F64))  # not trained, not in the file: init 0
        tiny["k_ln_b"].append(torch.zeros(hd, dtype=F64))
        tiny["post_w"].append(g(p + "post_layernorm.weight"))
        for tgt in ("self_attn.query_key_value", "self_attn.dense"):
            tiny["lora"][1]["model." + p + tgt] = (g(p + tgt + ".lora_A.weight"), g(p + tgt + ".lora_B.weight"))
    fused["model.final_layernorm.weight"] = g("final_layernorm.weight")
    merged = OrderedDict(fused)
    for name, (a, b) in tiny["lora"][1].items():
        merged[name + ".weight"] = fused[name + ".weight"] + scaling * (b @ a)
    split_merged = phi.from_fused_layout(merged, PHI)
    norms = {k: tiny[k] for k in ("q_ln_w", "q_ln_b", "k_ln_w", "k_ln_b", "post_w")}
    return fused, tiny, split_merged, norms


def vision_pipeline(eva_sd, blip2_sd, stage_sd, stage):
    """Float64 image -> visual tokens, own implementation and transformers; returns dict of arrays."""
    size = STAGE_IMAGE_SIZE[stage]
    grid = size // VISION["patch_size"]
    q_sd = OrderedDict((k, v) for k, v in blip2_sd.items())
    for k, v in stage_sd.items():  # later writes win (spec §8 load order)
        if k.startswith("Qformer.") or k == "query_tokens" or k.startswith("ln_vision."):
            q_sd[k] = v
    q_sd = OrderedDict((k, v.to(F64) if v.is_floating_point() else v) for k, v in q_sd.items())
    e_sd = OrderedDict((k, v.to(F64)) for k, v in eva_sd.items())
    native_grid = VISION["native_image_size"] // VISION["patch_size"]
    pos = e_sd["pos_embed"] if grid == native_grid else vision.interpolate_pos_embed(e_sd["pos_embed"], grid)

    u8 = img.resize_u8(img.load_rgb(FIX / "images" / "rgb_37x23.png"), size)
    pixels = torch.from_numpy(img.normalize_f64(u8))
    vit = vision.eva_forward(e_sd, pixels, VISION, pos, VISION["blocks_used"])
    lnv = phi.layer_norm(vit, q_sd["ln_vision.weight"], q_sd["ln_vision.bias"], VISION["ln_vision_eps"])
    qf = vision.qformer_forward(q_sd, lnv, QFORMER)
    p1 = qf @ stage_sd["llama_proj.weight"].to(F64).T + stage_sd["llama_proj.bias"].to(F64)
    tokens = p1 @ stage_sd["llama_proj2.weight"].to(F64).T + stage_sd["llama_proj2.bias"].to(F64)

    # transformers cross-check
    with torch.no_grad():
        hv = vision.hf_vision(e_sd, pos, VISION, size, VISION["blocks_used"], q_sd["ln_vision.weight"], q_sd["ln_vision.bias"])
        hv_out = hv(pixel_values=pixels[None]).last_hidden_state[0]
        hv_vit = hv.encoder(inputs_embeds=hv.embeddings(pixels[None])).last_hidden_state[0]
        hq = vision.hf_qformer(q_sd, VISION, QFORMER)
        hq_out = hq(query_embeds=q_sd["query_tokens"], encoder_hidden_states=lnv[None]).last_hidden_state[0]
    diffs = {
        "vit": (hv_vit - vit).abs().max().item(),
        "ln_vision": (hv_out - lnv).abs().max().item(),
        "qformer": (hq_out - qf).abs().max().item(),
    }
    for k, v in diffs.items():
        assert v < AGREE, (stage, k, v)
    return {
        "u8": u8,
        "pixels": pixels.numpy(),
        "pos_embed": pos[0].numpy(),
        "vit": vit.numpy(),
        "ln_vision": lnv.numpy(),
        "qformer": qf.numpy(),
        "llama_proj": p1.numpy(),
        "tokens": tokens.numpy(),
        "own_vs_hf_max_abs": diffs,
    }


# ---------------------------------------------------------------------------------------------


def main():
    torch.set_num_threads(2)
    tok = Tokenizer.from_file(str(TOK_DIR / "tokenizer.json"))
    tok_vocab = tok.get_vocab_size(with_added_tokens=True)
    vocab = ((tok_vocab + 63) // 64) * 64
    if vocab == tok_vocab:
        vocab += 64  # keep padding rows, like phi-2 (51200 > 50295)
    eos_id = tok.token_to_id("<|endoftext|>")
    sep_id = tok.token_to_id("###")
    assert eos_id is not None and sep_id is not None
    cfg = dict(PHI, vocab_size=vocab)
    print(f"tokenizer vocab {tok_vocab} -> model vocab {vocab}; eos {eos_id}; '###' {sep_id}")

    # ---- Phi-2 base checkpoints
    W = phi.make_base_weights(cfg, tok_vocab)
    dirs = write_phi_dirs(W, vocab, eos_id)
    W = read_phi_dir(dirs["phi2-safetensors"])
    for name, d in dirs.items():
        back = read_phi_dir(d)
        assert list(back) == list(W) or set(back) == set(W), name
        for k in W:
            assert torch.equal(back[k], W[k]), (name, k)
    print("phi2 dirs: all layouts/dtypes re-read to identical weights")

    # ---- vision checkpoints
    ck = FIX / "checkpoints"
    clean_dir(ck)
    eva = vision.make_eva_weights(VISION, QFORMER, PROJ)
    torch.save(OrderedDict((k, v.to(torch.float16)) for k, v in eva.items()), ck / "eva_vit_g.pth")
    blip2 = vision.make_qformer_weights(VISION, QFORMER, PROJ)
    torch.save({"model": OrderedDict((k, v.to(torch.float32) if v.is_floating_point() else v) for k, v in blip2.items())}, ck / "blip2_pretrained.pth")
    eva = torch.load(ck / "eva_vit_g.pth", map_location="cpu", weights_only=True)
    blip2 = torch.load(ck / "blip2_pretrained.pth", map_location="cpu", weights_only=True)["model"]

    # ---- stage checkpoints
    stage_sds, s4_override = stage_model_dicts(blip2)
    for s in (3, 4):
        save_stage(ck / f"tinygptv_stage{s}.pth", s, stage_sds[s])
    stages = {}
    for s in (3, 4):
        c = torch.load(ck / f"tinygptv_stage{s}.pth", map_location="cpu", weights_only=True)
        assert set(c) == {"model", "optimizer", "config", "scaler", "epoch"}
        for k, v in stage_sds[s].items():
            assert torch.equal(c["model"][k], v) and c["model"][k].dtype == v.dtype, (s, k)
        stages[s] = c["model"]
    print("checkpoints re-read OK")

    # ---- images + preprocessing references
    im_dir = FIX / "images"
    clean_dir(im_dir)
    image_desc = img.make_test_images(im_dir)
    pre_dir = FIX / "reference" / "preprocess"
    if (FIX / "reference").exists():
        shutil.rmtree(FIX / "reference")
    pre_dir.mkdir(parents=True)
    pre_index = OrderedDict()
    for name in image_desc:
        rgb = img.load_rgb(im_dir / name)
        stem = name.replace(".", "_")
        sizes = [28, 56] + ([224, 448] if name in ("rgb_37x23.png", "gray_19x25.png") else [])
        entry = OrderedDict([("source_size_wh", list(rgb.size)), ("resized_u8", {}), ("normalized_f32", {})])
        for S in sizes:
            u8 = img.resize_u8(rgb, S)
            # lossless PNG (RGB8) instead of .npy: 5-10x smaller for the 224/448 ones
            out_png = pre_dir / f"{stem}_{S}.png"
            img.Image.fromarray(u8, "RGB").save(out_png, optimize=True)
            assert np.array_equal(np.asarray(img.Image.open(out_png).convert("RGB")), u8)
            entry["resized_u8"][str(S)] = rel(out_png)
            if S in (28, 56):
                npsave(pre_dir / f"{stem}_{S}_norm_f32.npy", img.normalize_f32(u8))
                entry["normalized_f32"][str(S)] = rel(pre_dir / f"{stem}_{S}_norm_f32.npy")
        pre_index[name] = entry

    ref = FIX / "reference"
    summary = OrderedDict()

    # ---- LLM references
    base_fused = phi.to_fused_layout(W, cfg)
    hf_stock = phi.hf_model(dirs["phi2-safetensors"], W, F64)
    hf_stock32 = phi.hf_model(dirs["phi2-safetensors"], W, torch.float32)
    variants = {"stock": (base_fused, None, hf_stock)}
    tiny_parts = {}
    for s in (3, 4):
        fused_s, tiny_s, split_merged_s, norms_s = tiny_from_stage(W, stages[s])
        hf_s = phi.hf_model(dirs["phi2-safetensors"], split_merged_s, F64, tiny_norms=norms_s)
        variants[f"tinygptv_stage{s}"] = (fused_s, tiny_s, hf_s)
        tiny_parts[s] = (fused_s, tiny_s, hf_s, split_merged_s, norms_s)

    # layout cross-check: fused and msft files, re-ordered by the independent readers, through transformers
    probe = tok.encode(LLM_TEXTS["short"], add_special_tokens=False).ids
    want = phi.hf_logits(hf_stock, probe)
    for name, d in dirs.items():
        got = phi.hf_logits(phi.hf_model(dirs["phi2-safetensors"], read_phi_dir(d), F64), probe)
        assert torch.equal(got, want), name
    # the split-layout dirs are valid HF model dirs: stock from_pretrained gives the same logits
    from transformers import PhiForCausalLM

    for name in ("phi2-safetensors", "phi2-sharded", "phi2-bin"):
        m = PhiForCausalLM.from_pretrained(dirs[name], dtype=F64, attn_implementation="eager").eval()
        assert torch.equal(phi.hf_logits(m, probe), want), name
    # and the msft layout once more in memory, without the file round trip
    msft_back = phi.from_msft_layout(phi.to_msft_layout(W, PHI), PHI)
    assert torch.equal(phi.hf_logits(phi.hf_model(dirs["phi2-safetensors"], msft_back, F64), probe), want)
    print("layout check: every phi2-* dir (and the msft layout) gives bit-identical float64 logits in transformers")

    seqs = OrderedDict()
    for k, text in LLM_TEXTS.items():
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.encode(text, add_special_tokens=True).ids == ids
        if k == "one":
            ids = ids[:1]
        if k == "long":
            assert len(ids) >= LONG_LEN, len(ids)
            ids = ids[:LONG_LEN]
        seqs[k] = ids

    llm_index = OrderedDict()
    margins_all = []
    f32_err = 0.0
    for vname, (fw, tiny, hfm) in variants.items():
        emb = fw["model.embed_tokens.weight"]
        which = list(seqs) if vname != "tinygptv_stage4" else ["short"]
        for sname in which:
            ids = seqs[sname]
            own_fn = lambda e, fw=fw, tiny=tiny: phi.ref_forward(fw, cfg, e, tiny)  # noqa: E731
            new, logits = phi.greedy(own_fn, lambda i, emb=emb: emb[i], emb[ids], N_GREEDY_LLM)
            full = ids + new[:-1]
            hf_l = phi.hf_logits(hfm, full)
            d = (hf_l - logits).abs().max().item()
            assert d < AGREE, (vname, sname, d)
            if vname == "stock":
                f32_err = max(f32_err, (phi.hf_logits(hf_stock32, full).to(F64) - logits).abs().max().item())
            m = phi.top2_margin(logits)
            m_prompt = m[: len(ids)].min().item()
            m_greedy = m[len(ids) - 1 :].min().item()
            margins_all.append((vname, sname, m_prompt, m_greedy))
            f = ref / "llm" / f"{vname}_{sname}_logits_f32.npy"
            npsave(f, logits.to(torch.float32).numpy())
            entry = OrderedDict(
                [
                    ("text", LLM_TEXTS[sname]),
                    ("prompt_ids", ids),
                    ("greedy_ids", new),
                    ("logits", rel(f)),
                    ("logits_shape", list(logits.shape)),
                    ("logits_rows", f"row t = logits after token t of prompt_ids + greedy_ids[:-1]; argmax(row len(prompt_ids)-1+j) = greedy_ids[j]"),
                    ("min_top2_margin_prompt_positions", m_prompt),
                    ("min_top2_margin_greedy_steps", m_greedy),
                    ("greedy_step_margins", [round(x, 6) for x in m[len(ids) - 1 :].tolist()]),
                    ("max_abs_logit", logits.abs().max().item()),
                    ("own_vs_transformers_max_abs", d),
                ]
            )
            if sname == "short" and vname != "tinygptv_stage4":
                hs = []
                phi.ref_forward(fw, cfg, emb[ids], tiny, hidden_out=hs)
                f = ref / "llm" / f"{vname}_{sname}_hidden_f64.npy"
                npsave(f, torch.stack(hs).numpy())
                entry["hidden"] = rel(f)
                entry["hidden_desc"] = "[n_layers + 1, T, 256] float64: residual stream after each layer, then the final LayerNorm output (prompt only)"
            llm_index.setdefault(vname, OrderedDict())[sname] = entry
    summary["llm_f32_transformers_vs_f64_max_abs_logit_diff"] = f32_err

    # unmerged-LoRA reference (own) == merged weights: also through own forward without LoRA
    for s in (3, 4):
        fused_s, tiny_s, hf_s, split_merged_s, norms_s = tiny_parts[s]
        merged_fused = phi.to_fused_layout(split_merged_s, cfg)
        tiny_nolora = dict(tiny_s, lora=(0.0, {}))
        e = merged_fused["model.embed_tokens.weight"][seqs["long"]]
        a = phi.ref_forward(merged_fused, cfg, e, tiny_nolora)
        b = phi.ref_forward(fused_s, cfg, e, tiny_s)
        assert (a - b).abs().max().item() < AGREE
    print("LLM references done; own == transformers, merged == unmerged LoRA")

    # ---- vision + end-to-end references
    vis_index = OrderedDict()
    e2e_index = OrderedDict()
    for s in (3, 4):
        v = vision_pipeline(eva, blip2, stages[s], s)
        vd = OrderedDict()
        for key in ("pixels", "pos_embed", "vit", "ln_vision", "qformer", "llama_proj", "tokens"):
            f = ref / "vision" / f"stage{s}_{key}_f64.npy"
            npsave(f, v[key])
            vd[key] = OrderedDict([("file", rel(f)), ("shape", list(v[key].shape))])
        vd["image"] = "images/rgb_37x23.png"
        vd["image_size"] = STAGE_IMAGE_SIZE[s]
        vd["own_vs_transformers_max_abs"] = v["own_vs_hf_max_abs"]
        vis_index[f"stage{s}"] = vd

        template = PROMPT_STAGE3 if s == 3 else PROMPT_STAGE4
        question = QUESTION_STAGE3 if s == 3 else QUESTION_STAGE4
        prompt = template.format(question=question)
        pieces = prompt.split("<ImageHere>")
        assert len(pieces) == 2
        piece_ids = [tok.encode(p, add_special_tokens=False).ids for p in pieces]
        fused_s, tiny_s, hf_s, _, _ = tiny_parts[s]
        emb = fused_s["model.embed_tokens.weight"]
        vis = torch.from_numpy(v["tokens"])
        prefix = torch.cat([emb[piece_ids[0]], vis, emb[piece_ids[1]]], dim=0)
        own_fn = lambda e, fw=fused_s, tiny=tiny_s: phi.ref_forward(fw, cfg, e, tiny)  # noqa: E731
        new, logits = phi.greedy(own_fn, lambda i, emb=emb: emb[i], prefix, N_GREEDY_E2E)
        full_embeds = torch.cat([prefix, emb[new[:-1]]], dim=0)
        d = (phi.hf_logits(hf_s, embeds=full_embeds) - logits).abs().max().item()
        assert d < AGREE, d
        m = phi.top2_margin(logits)
        T = prefix.shape[0]
        margins_all.append((f"e2e_stage{s}", "-", m[:T].min().item(), m[T - 1 :].min().item()))
        f = ref / "e2e" / f"stage{s}_logits_f32.npy"
        npsave(f, logits.to(torch.float32).numpy())
        n0 = len(piece_ids[0])
        e2e_index[f"stage{s}"] = OrderedDict(
            [
                ("tinygptv_checkpoint", f"checkpoints/tinygptv_stage{s}.pth"),
                ("image", "images/rgb_37x23.png"),
                ("image_size", STAGE_IMAGE_SIZE[s]),
                ("template", template),
                ("question", question),
                ("prompt", prompt),
                ("pieces", pieces),
                ("piece_ids", piece_ids),
                ("visual_token_rows", [n0, n0 + QFORMER["num_queries"]]),
                ("visual_tokens", vd["tokens"]["file"]),
                ("prompt_len", T),
                ("greedy_ids", new),
                ("greedy_text", tok.decode(new, skip_special_tokens=True)),
                ("stop_id_###", sep_id),
                ("logits", rel(f)),
                ("logits_shape", list(logits.shape)),
                ("logits_rows", "row t = logits after input row t; input rows = embed(piece_ids[0]) ++ visual tokens ++ embed(piece_ids[1]) ++ embed(greedy_ids[:-1])"),
                ("min_top2_margin_prompt_positions", m[:T].min().item()),
                ("min_top2_margin_greedy_steps", m[T - 1 :].min().item()),
                ("greedy_step_margins", [round(x, 6) for x in m[T - 1 :].tolist()]),
                ("own_vs_transformers_max_abs", d),
            ]
        )
    # converter guidance: the same interpolation done in float32 (as LAVIS does at load time)
    pe16 = eva["pos_embed"]
    g4 = STAGE_IMAGE_SIZE[4] // VISION["patch_size"]
    d32 = (vision.interpolate_pos_embed(pe16.to(torch.float32), g4).to(F64) - vision.interpolate_pos_embed(pe16.to(F64), g4)).abs().max().item()
    summary["pos_embed_interp_f32_vs_f64_max_abs"] = d32
    print("vision + e2e references done")

    # ---- manifest
    def fsize(p):
        return p.stat().st_size

    files = OrderedDict()
    # only what this script writes (other generators add folders such as interp/ and python-gguf/)
    # phi2-msft/ (added later, scripts/gen_msft_fixture.py) is left out so this file stays as committed
    ours = ("phi2-", "checkpoints/", "images/", "reference/", "README.md", "manifest.json")
    for p in sorted(FIX.rglob("*")):
        if p.is_file() and rel(p).startswith(ours) and not rel(p).startswith("phi2-msft/"):
            files[rel(p)] = fsize(p)
    manifest = OrderedDict(
        [
            ("generator", "scripts/gen_model_fixtures.py"),
            ("tokenizer", OrderedDict([("dir", "tokenizer"), ("vocab_size_with_added", tok_vocab), ("eos_id", eos_id), ("sep_###_id", sep_id)])),
            ("phi2", OrderedDict(list(cfg.items()) + [("tokenizer_vocab_size", tok_vocab), ("bos_eos_token_id", eos_id), ("lm_head_bias", True), ("tie_word_embeddings", False), ("init", PHI_INIT_NOTE)])),
            ("phi2_dirs", OrderedDict(
                [
                    ("phi2-safetensors", "current transformers split q_proj/k_proj/v_proj/dense, float32, model.safetensors"),
                    ("phi2-sharded", "split layout, float16, model-0000{1,2}-of-00002.safetensors + model.safetensors.index.json"),
                    ("phi2-bin", "split layout, bfloat16, pytorch_model.bin (torch.save zip)"),
                    ("phi2-fused", "transformers 4.36 fused self_attn.query_key_value rows [heads][3][head_dim], float16, model.safetensors"),
                ]
            )),
            ("tinygptv", OrderedDict(
                [
                    ("lora_r", TINY["lora_r"]), ("lora_alpha", TINY["lora_alpha"]), ("lora_scaling", TINY["lora_alpha"] / TINY["lora_r"]),
                    ("lora_targets", ["self_attn.query_key_value", "self_attn.dense"]),
                    ("key_prefix", LLM_PREFIX), ("qk_norm_eps", TINY["qk_norm_eps"]), ("qk_norm_bias", "absent in the files -> zeros"),
                    ("post_rms_eps", TINY["post_rms_eps"]),
                    ("stage3_dtypes", "norm weights float16, LoRA + projections float32"),
                    ("stage4_dtypes", "all float32"),
                    ("stage4_qformer_override_keys", s4_override),
                    ("image_size", {"stage3": STAGE_IMAGE_SIZE[3], "stage4": STAGE_IMAGE_SIZE[4]}),
                    ("init", TINY_INIT_NOTE),
                ]
            )),
            ("vision", OrderedDict(
                list(VISION.items())
                + [("gelu", "erf"), ("pos_embed_rows_in_file", 1 + (VISION["native_image_size"] // VISION["patch_size"]) ** 2)]
                + [("init", VISION_INIT_NOTE), ("init_params", OrderedDict(vision.VISION_INIT))]
            )),
            ("qformer", OrderedDict(list(QFORMER.items()) + [("cross_attention_layers", [l for l in range(QFORMER["num_layers"]) if l % QFORMER["cross_attention_freq"] == 0]), ("encoder_width", VISION["width"]), ("gelu", "erf")])),
            ("projection", PROJ),
            ("preprocess", OrderedDict([("mean", list(img.BLIP2_MEAN)), ("std", list(img.BLIP2_STD)), ("resize", "PIL convert('RGB').resize((S,S), BICUBIC)")])),
            ("images", image_desc),
            ("preprocess_refs", pre_index),
            ("llm_refs", llm_index),
            ("vision_refs", vis_index),
            ("e2e_refs", e2e_index),
            ("summary", summary),
            ("files", files),
        ]
    )
    summary["min_margins"] = [OrderedDict([("model", a), ("seq", b), ("prompt_positions", c), ("greedy_steps", e)]) for a, b, c, e in margins_all]
    summary["total_bytes"] = sum(files.values())
    summary["tokenizer_json_sha256"] = hashlib.sha256((TOK_DIR / "tokenizer.json").read_bytes()).hexdigest()
    write_json(FIX / "manifest.json", manifest)
    for a, b, c, e in margins_all:
        print(f"margins {a:18s} {b:6s} prompt {c:.4f} greedy {e:.4f}")
    print(f"f32 transformers vs f64: max abs logit diff {f32_err:.3e}")
    print(f"total {summary['total_bytes'] / 1e6:.2f} MB in {len(files)} files")


if __name__ == "__main__":
    main()
