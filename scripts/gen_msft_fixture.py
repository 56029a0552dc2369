#!/usr/bin/env python3
"""Writes tests/fixtures/phi2-msft/: the miniature Phi-2 of tests/fixtures/phi2-safetensors in
Microsoft's original remote-code checkpoint layout (phi-2 before transformers 4.37), float16.

Names: `transformer.embd.wte.weight`, `transformer.h.N.ln.{weight,bias}`,
`transformer.h.N.mixer.Wqkv.{weight,bias}` (rows [q; k; v], i.e. [3][heads][head_dim]),
`transformer.h.N.mixer.out_proj.*`, `transformer.h.N.mlp.fc1/fc2.*`, `lm_head.ln.*`,
`lm_head.linear.*`; config.json in the `phi-msft` style (`n_embd`, `n_head`, `n_layer`,
`rotary_dim`, `layer_norm_epsilon`, `n_positions`, ...). Every value of phi2-safetensors is exact in
f16, so this directory holds the SAME numbers and the references under reference/llm/ apply.

It derives the directory FROM the committed phi2-safetensors/model.safetensors and touches nothing
else (scripts/gen_model_fixtures.py calls the same function after writing phi2-safetensors).
Deterministic; run with the project venv:

    /work/venv/bin/python scripts/gen_msft_fixture.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_model_fixtures as gen  # noqa: E402


def main():
    d = gen.write_msft_dir(gen.FIX / "phi2-safetensors")
    for p in sorted(d.iterdir()):
        print(f"{gen.rel(p)}: {p.stat().st_size} bytes, sha256 {gen.sha256_file(p)}")


if __name__ == "__main__":
    main()
