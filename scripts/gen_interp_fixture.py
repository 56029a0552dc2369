#!/usr/bin/env python3
"""Reference outputs of torch's bicubic resize for the converter's position-table interpolation.

Writes tests/fixtures/interp/bicubic_torch.json: for a few grid sizes (up- and down-sampling,
integer and non-integer ratios, 1 and several channels) the input grid and
`torch.nn.functional.interpolate(mode="bicubic", align_corners=False)` of it, computed in float64.
Layout of `input` / `output`: [h, w, channels] flattened row-major (the layout of the rows of an
EVA position table: token y*w + x, channel innermost). Values are written with repr(), so they
round-trip exactly.

Usage: /work/venv/bin/python scripts/gen_interp_fixture.py  (deterministic; < 1 s)
"""

import json
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "interp" / "bicubic_torch.json"

# (in_h, in_w, out_h, out_w, channels)
CASES = [
    (2, 2, 4, 4, 3),  # the miniature stage-4 case (28 px -> 56 px)
    (3, 3, 5, 5, 2),  # non-integer upsampling
    (5, 5, 3, 3, 2),  # downsampling (no antialias)
    (4, 3, 7, 2, 1),  # rectangular, mixed up/down
    (16, 16, 32, 32, 1),  # the real 224 -> 448 grid
    (1, 1, 3, 3, 1),  # single source pixel: every tap clamps to it
]


def main():
    gen = torch.Generator().manual_seed(1234)
    cases = []
    for in_h, in_w, out_h, out_w, c in CASES:
        grid = torch.randn(in_h, in_w, c, generator=gen, dtype=torch.float64)
        # as LAVIS interpolate_pos_embed: [h, w, C] -> [1, C, h, w] -> resize -> back
        img = grid.permute(2, 0, 1).unsqueeze(0)
        out = F.interpolate(img, size=(out_h, out_w), mode="bicubic", align_corners=False)
        out = out.squeeze(0).permute(1, 2, 0).contiguous()
        cases.append(
            {
                "in_h": in_h,
                "in_w": in_w,
                "out_h": out_h,
                "out_w": out_w,
                "channels": c,
                "input": [float(v) for v in grid.flatten().tolist()],
                "output": [float(v) for v in out.flatten().tolist()],
            }
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "generator": "scripts/gen_interp_fixture.py",
        "torch": torch.__version__,
        "op": "torch.nn.functional.interpolate(mode='bicubic', align_corners=False), float64",
        "layout": "[h, w, channels] row-major",
        "cases": cases,
    }
    OUT.write_text(json.dumps(doc) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
