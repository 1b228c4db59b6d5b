#!/usr/bin/env python3
"""Export scikit-learn's 8x8 handwritten digits to data/digits.npz.

Arrays:
  x      1797 x 64 float64, pixel intensities (0..16) divided by 16, so each entry is in [0, 1]
  label  1797 int64, the digit 0..9

The archive is written uncompressed (np.savez) because the Rust loader
(ndarray-npy with the "npz" feature only) reads stored, not deflated, members.

Usage: python3 scripts/export_digits.py [output path, default data/digits.npz]
"""

import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "data" / "digits.npz"
    digits = load_digits()
    x = np.ascontiguousarray(digits.data, dtype=np.float64) / 16.0
    label = np.ascontiguousarray(digits.target, dtype=np.int64)
    assert x.shape == (1797, 64), x.shape
    assert label.shape == (1797,), label.shape
    assert 0.0 <= x.min() and x.max() <= 1.0
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, x=x, label=label)
    print(f"wrote {out}: x {x.shape} {x.dtype}, label {label.shape} {label.dtype}")


if __name__ == "__main__":
    main()
