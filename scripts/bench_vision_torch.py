#!/usr/bin/env python3
"""PyTorch reference timing for the vision tower at the real shapes (issue #5's comparison):
EVA ViT-g (39 blocks, 1408 wide, 16 heads, MLP 6144) + BLIP-2 Q-Former (12 layers, 768, 32
queries) + the two projections, random weights, one image, fp32 and bf16, N threads.

usage: bench_vision_torch.py [--threads 2] [--sizes 224,448] [--dtypes float32,bfloat16] [--reps 3]
Prints one markdown row per (size, dtype): seconds per image (best and mean of reps) and the
process's peak RSS so far (run one size and dtype per process for a per-configuration peak).
"""
import resource, sys, time
import torch
from transformers import Blip2QFormerConfig, Blip2QFormerModel, Blip2VisionConfig, Blip2VisionModel

def arg(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default

threads = int(arg("--threads", "2"))
sizes = [int(s) for s in arg("--sizes", "224,448").split(",")]
dtypes = [getattr(torch, d) for d in arg("--dtypes", "float32,bfloat16").split(",")]
reps = int(arg("--reps", "3"))
torch.set_num_threads(threads)
torch.manual_seed(0)

print(f"torch {torch.__version__}, threads {threads}")
print("| size | dtype | s/image (best) | s/image (mean) | peak RSS MiB |")
print("|---|---|---:|---:|---:|")
for size in sizes:
    vcfg = Blip2VisionConfig(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39,
                             num_attention_heads=16, image_size=size, patch_size=14,
                             layer_norm_eps=1e-6, hidden_act="gelu", qkv_bias=True)
    qcfg = Blip2QFormerConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                              intermediate_size=3072, encoder_hidden_size=1408, cross_attention_frequency=2)
    vision = Blip2VisionModel(vcfg).eval()
    qformer = Blip2QFormerModel(qcfg).eval()
    query = torch.randn(1, 32, 768)
    proj1 = torch.nn.Linear(768, 4096)
    proj2 = torch.nn.Linear(4096, 2560)
    pixels = torch.randn(1, 3, size, size)
    for dtype in dtypes:
        for m in (vision, qformer, proj1, proj2):
            m.to(dtype)
        def encode():
            with torch.inference_mode():
                feats = vision(pixel_values=pixels.to(dtype)).last_hidden_state
                q = qformer(query_embeds=query.to(dtype), encoder_hidden_states=feats).last_hidden_state
                return proj2(proj1(q))
        encode()  # warm-up
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            encode()
            times.append(time.perf_counter() - t)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"| {size} | {str(dtype).replace('torch.', '')} | {min(times):.2f} | {sum(times) / len(times):.2f} | {rss:.0f} |", flush=True)
