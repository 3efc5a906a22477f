"""Extract the joint heads' frozen features for a labelled manifest (musictag.learn.joint_features).

  python scripts/joint_features.py MANIFEST.csv OUT.npz [--model CP_RESNET.pt] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import time

from musictag.learn.joint_features import clip_features, save_features
from musictag.learn.manifest import read_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("out")
    parser.add_argument("--model", default="fast", help="the CP-ResNet checkpoint (default: the shipped fast one)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    paths = [e.path for e in read_manifest(args.manifest).examples]
    start = time.time()

    def progress(kind: str, info: dict) -> None:
        if info["done"] % 20 == 0 or info["done"] == info["total"]:
            print(f"{info['done']}/{info['total']} clips, {time.time() - start:.0f} s", flush=True)

    features, failures = clip_features(paths, args.model, args.workers, progress)
    for failure in failures:
        print("failed:", failure, file=sys.stderr)
    save_features(args.out, paths, features)
    print(f"wrote {args.out}: {len(set(features['clip']))} clips, {len(features['clip'])} windows")


if __name__ == "__main__":
    main()
