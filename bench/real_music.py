"""Real, freely licensed music for the benchmarks: Debian's game-music packages, fetched with
`apt-get download` and unpacked without installing anything.

Two sets that share no package: SCAN_PACKAGES build scan_speed's library; HELD_OUT_PACKAGES give an
independent second sample for bench/excerpt_agreement.py, so a choice tuned on one set is checked on the
other.

    python bench/real_music.py OUT_DIR [--packages ufoai-music ...] [--min-seconds 90] [--per-package 40]

links the distinct tracks (at least --min-seconds long, at most --per-package per package) into OUT_DIR.
"""

from __future__ import annotations

import argparse
import json
import itertools
import subprocess
import sys
import zipfile
from pathlib import Path

SCAN_PACKAGES = ("warzone2100-music", "wesnoth-1.16-music")
HELD_OUT_PACKAGES = ("ufoai-music", "nexuiz-music", "drascula-music", "singularity-music",
                     "planetblupi-music-ogg", "hyperrogue-music", "asc-music")
# The unlabelled music the shipped model is distilled on (scripts/train_shipped_model.sh): the held-out set
# of the excerpt benchmark, so SCAN_PACKAGES stay music the model never heard (teacher agreement, the
# soundtrack table). Debian packages reserved for independent checks (../shared/docs/teachers.md) are in
# neither set.
DISTILL_PACKAGES = HELD_OUT_PACKAGES
# Games' data packages with a music folder among their sound effects and voices: more of the styles the
# music-only packages lack (0ad-data: music of ancient cultures, Celtic, Egyptian, Indian, Japanese...;
# widelands-data: folk and medieval; naev-data: electronic and ambient). Only files under a folder named
# "music" are taken. Distilled on beside DISTILL_PACKAGES, never used for calibration.
GAME_DATA_PACKAGES = ("0ad-data", "widelands-data", "naev-data")
AUDIO_SUFFIXES = (".ogg", ".opus", ".mp3", ".flac")


def fetch_package(package: str, build_dir: Path) -> list[Path]:
    """The audio files of one package, downloaded and unpacked once under build_dir/deb/PACKAGE;
    [] when apt cannot fetch it. Game data archives (.pk3 and .zip files) are unpacked too; of a
    GAME_DATA_PACKAGES package, only its music folders."""
    target = build_dir / "deb" / package
    target.mkdir(parents=True, exist_ok=True)
    if not list(target.glob("*.deb")):
        try:
            subprocess.run(["apt-get", "download", package], cwd=target, check=True, capture_output=True,
                           timeout=300)
        except (OSError, subprocess.SubprocessError):
            return []
    extracted = target / "x"
    if not extracted.exists():
        subprocess.run(["dpkg-deb", "-x", str(next(target.glob("*.deb"))), str(extracted)], check=True)
        for archive in [*extracted.rglob("*.pk3"), *extracted.rglob("*.zip")]:
            with zipfile.ZipFile(archive) as z:
                z.extractall(archive.with_name(archive.name + ".d"),
                             [m for m in z.namelist() if m.lower().endswith(AUDIO_SUFFIXES)
                              and (package not in GAME_DATA_PACKAGES or "music" in m.split("/")[:-1])])
    return sorted(p for p in extracted.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES
                  and (package not in GAME_DATA_PACKAGES or "music" in p.parts[:-1]))


def fetch_tracks(packages: tuple[str, ...], build_dir: Path, min_seconds: float = 90.0,
                 per_package: int | None = None) -> list[Path]:
    """Distinct full-length tracks (a duration seen before is a copy in another format or folder),
    alternating between the packages."""
    from musictag.model.audio import probe_duration
    from musictag.errors import AudioDecodeError

    seen, per = set(), []
    for package in packages:
        kept = []
        for path in fetch_package(package, build_dir):
            try:
                seconds = round(probe_duration(path), 1)
            except AudioDecodeError:
                continue
            if seconds >= min_seconds and seconds not in seen:
                seen.add(seconds)
                kept.append(path)
        per.append(kept[:per_package])
    return [track for group in itertools.zip_longest(*per) for track in group if track]


def licences(package: str, build_dir: Path) -> list[str]:
    """The distinct License: names of the package's Debian copyright file (of a GAME_DATA_PACKAGES
    package, only those of its default stanza and of the stanzas that name music files)."""
    found = sorted((build_dir / "deb" / package / "x").glob("usr/share/doc/*/copyright"))
    if not found:
        return []
    text = found[0].read_text(errors="replace")
    names = {name for stanza in text.split("\n\n") if _covers_music(package, stanza)
             for name in _field(stanza, "License")} - {""}
    if not names:  # a copyright file not in Debian's machine-readable format: name the licence it quotes
        names = {name for pattern, name in (("GNU General Public License", "GPL"),
                                            ("CREATIVE COMMONS", "Creative Commons")) if pattern in text}
    return sorted(names) or ["see the package's copyright file"]


def _field(stanza: str, name: str) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in stanza.splitlines() if line.startswith(name + ":")]


def _covers_music(package: str, stanza: str) -> bool:
    files = " ".join(_field(stanza, "Files"))
    return package not in GAME_DATA_PACKAGES or files == "*" or "music" in files


def describe(tracks: list[Path], build_dir: Path) -> list[dict]:
    """Per package: how many of the tracks and hours come from it, and its licences."""
    from musictag.model.audio import probe_duration

    rows: dict[str, dict] = {}
    for track in tracks:
        package = Path(track).resolve().relative_to((build_dir / "deb").resolve()).parts[0]
        row = rows.setdefault(package, {"package": package, "tracks": 0, "hours": 0.0,
                                        "licences": licences(package, build_dir)})
        row["tracks"] += 1
        row["hours"] += min(probe_duration(track), 600.0) / 3600  # training and the teacher hear 10 min at most
    return [{**r, "hours": round(r["hours"], 2)} for r in rows.values()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--packages", nargs="+", default=list(HELD_OUT_PACKAGES))
    parser.add_argument("--build-dir", default=None, help="where packages are unpacked (default: OUT/..)")
    parser.add_argument("--min-seconds", type=float, default=90.0)
    parser.add_argument("--per-package", type=int, default=40)
    parser.add_argument("--describe", help="also write per-package tracks, hours and licences to this JSON file")
    args = parser.parse_args()
    out = Path(args.out)
    tracks = fetch_tracks(tuple(args.packages), Path(args.build_dir) if args.build_dir else out.parent,
                          args.min_seconds, args.per_package)
    if not tracks:
        sys.exit("no tracks: apt-get download failed for every package")
    out.mkdir(parents=True, exist_ok=True)
    for i, track in enumerate(tracks):
        link = out / f"{i:04d}{track.suffix.lower()}"
        if not link.exists():
            link.symlink_to(track.resolve())
    print(f"{len(tracks)} tracks from {len(args.packages)} packages linked into {out}")
    if args.describe:
        build_dir = Path(args.build_dir) if args.build_dir else out.parent
        Path(args.describe).write_text(json.dumps(describe(tracks, build_dir), indent=1))


if __name__ == "__main__":
    main()
