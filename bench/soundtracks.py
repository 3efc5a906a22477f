"""What a default scan writes into real soundtracks the model never trained on: a Markdown table.

    python bench/soundtracks.py FOLDER [--count 20] [--model MODEL.pt]

FOLDER holds the tracks (bench/real_music.py links SCAN_PACKAGES' tracks into one). Each track is scored
through scan's own pipeline (excerpt plan, batched windows) and its fields chosen as `musictag scan`
chooses them with default options; the opt-in instrument and voice fields are shown too. "-" is a field
left alone because nothing was confident.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from musictag.model.checkpoint import load_checkpoint
from musictag.learn.evaluate import predict_files
from musictag.model.inference import Tagger
from musictag.scan import ScanOptions, choose_terms
from musictag.model.vocabulary import available, vocabulary_from_dict

FIELDS = ("genre", "mood", "quadrant", "instrument", "voice")


def track_name(path: str) -> str:
    """The package and file name of a track bench/real_music.py linked (its folder otherwise)."""
    parts = Path(os.path.realpath(path)).parts
    return f"{parts[parts.index('deb') + 1]}: {parts[-1]}" if "deb" in parts else "/".join(parts[-2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.model)
    tagger = Tagger(checkpoint, "cpu")
    vocabulary = available(vocabulary_from_dict(checkpoint.vocabulary), checkpoint.labels)
    paths = sorted(str(p) for p in Path(args.folder).iterdir() if p.is_file())[:args.count]
    probs, failures = predict_files(tagger, paths, workers=2)
    options = ScanOptions(fields=FIELDS)
    print("| track | " + " | ".join(FIELDS) + " |")
    print("|---|" + "---|" * len(FIELDS))
    for row, path in enumerate(paths):
        scores = {head: {label: float(p[row, j]) for j, label in enumerate(checkpoint.labels[head])}
                  for head, p in probs[""].items()}
        if any(v != v for v in scores["genre"].values()):  # NaN: the file failed
            continue
        chosen, _ = choose_terms(vocabulary, scores, checkpoint.model_config.kinds, options)
        print(f"| {track_name(path)} | " + " | ".join("; ".join(chosen.get(f, [])) or "-" for f in FIELDS) + " |")
    for failure in failures:
        print(f"\nfailed: {failure}")


if __name__ == "__main__":
    main()
