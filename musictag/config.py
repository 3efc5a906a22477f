"""The user's config file: defaults for scan's tagging options, and how genres are canonicalised.

A TOML file in platformdirs' user config dir (`~/.config/musictag/config.toml` on Linux; the environment
variable MUSICTAG_CONFIG names another). Every key is optional; an option given on the command line wins
over the file, the file over musictag's defaults (defaults.py):

    fields = ["genre", "mood", "quadrant", "model"]   # or "genre,mood"
    top_k = {genre = 2, mood = 1}                      # or one number for every field
    threshold = 0.5                                    # or per field: {genre = 0.6, mood = 0.4}
    mode = "merge"                                     # merge, replace, skip-tagged
    id3_version = "keep"                               # keep, 3, 4
    write_mode = "auto"                                # auto, copy, inplace (scan and undo)
    separator = "; "                                   # genres and moods as one joined value
    genre_whitelist = ["Rock", "Hip-Hop", "Jazz"]      # the only genres musictag writes
    [genre_aliases]                                    # another name -> the name written
    "Hip-Hop" = "Hip Hop"

Genres are compared the way beets' lastgenre canonicalises them: case, spaces and punctuation aside
("Hip Hop", "hip-hop" and "HipHop" are one genre), after the aliases. So a merge scan adds no "Hip-Hop"
to a file that has "Hip Hop".

Only the standard library (and platformdirs, for the path): the CLI reads this before any heavy import.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .defaults import FIELDS, ID3_VERSION, ID3_VERSIONS, MODE, MODES, OPT_IN_FIELDS, OTHER_TOP_K, TOP_K
from .defaults import WRITE_MODE, WRITE_MODES
from .errors import MusictagError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ENVIRONMENT = "MUSICTAG_CONFIG"  # another config file than the one in the user config dir
ALL_FIELDS = FIELDS + OPT_IN_FIELDS
RANKED_FIELDS = tuple(name for name in ALL_FIELDS if name != "model")  # the fields top-k applies to
DEFAULTS = {"fields": FIELDS, "top_k": dict(TOP_K), "threshold": None, "mode": MODE, "id3_version": ID3_VERSION,
            "write_mode": WRITE_MODE,
            "separator": "", "genre_aliases": {}, "genre_whitelist": None}
MEANING = {  # what a key's default means, where its value does not say it
    "top_k": f"fields not named: {OTHER_TOP_K}",
    "threshold": "not set: each value's own threshold, chosen on validation",
    "separator": "not set: one tag entry per value",
    "genre_whitelist": "not set: every genre of the model",
}


class ConfigError(MusictagError):
    """The config file is not valid TOML, or a key or its value is not one musictag knows."""


def config_path() -> Path:
    """The config file: $MUSICTAG_CONFIG, else config.toml in the user config dir."""
    if os.environ.get(ENVIRONMENT):
        return Path(os.environ[ENVIRONMENT])
    import platformdirs

    return Path(platformdirs.user_config_dir("musictag")) / "config.toml"


@dataclass
class Config:
    path: Path
    found: bool  # whether the file exists
    file: dict[str, object] = field(default_factory=dict)  # the keys the file sets, checked

    def value(self, key: str):
        """The effective value of `key` (the file's, else the default; top-k per field over the defaults)."""
        if key == "top_k" and isinstance(self.file.get(key), dict):
            return {**DEFAULTS[key], **self.file[key]}
        return self.file.get(key, DEFAULTS[key])

    def source(self, key: str) -> str:
        return "config file" if key in self.file else "default"


def load_config(path: str | os.PathLike | None = None) -> Config:
    """The config file at `path` (default config_path()), checked; a missing file is an empty one, except
    one $MUSICTAG_CONFIG names: a typo there must not quietly run with the defaults."""
    named = path is None and bool(os.environ.get(ENVIRONMENT))
    path = Path(path) if path is not None else config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if named:
            raise ConfigError(f"{path}: no such config file (named by ${ENVIRONMENT})") from None
        return Config(path, False)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config file ({getattr(e, 'strerror', None) or e})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    checked = {}
    for key, value in data.items():
        if key not in CHECKS:
            raise ConfigError(f"{path}: unknown key {key!r} (valid: {', '.join(CHECKS)})")
        try:
            checked[key] = CHECKS[key](value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{path}: {key}: {e}") from None
    return Config(path, True, checked)


def _fields(value) -> tuple[str, ...]:
    names = [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else _strings(value)
    unknown = [name for name in names if name not in ALL_FIELDS]
    if unknown or not names:
        what = f"unknown field {', '.join(unknown)}" if unknown else "no field named"
        raise ValueError(f"{what} (valid: {', '.join(ALL_FIELDS)})")
    return tuple(names)


def _top_k(value) -> int | dict[str, int]:
    if isinstance(value, dict):
        return {name: _count(n, name) for name, n in _field_table(value).items()}
    return _count(value)


def _count(n, field: str = "") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{field + ': ' if field else ''}expected a whole number of at least 1, got {n!r}")
    return n


def _threshold(value) -> float | dict[str, float]:
    if isinstance(value, dict):
        return {name: _score(x) for name, x in _field_table(value).items()}
    return _score(value)


def _score(x) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x <= 1:
        raise ValueError(f"expected a number from 0 to 1, got {x!r}")
    return float(x)


def _field_table(value: dict) -> dict:
    unknown = [name for name in value if name not in RANKED_FIELDS]
    if unknown:
        raise ValueError(f"unknown field {', '.join(unknown)} (valid: {', '.join(RANKED_FIELDS)})")
    return value


def _choice(choices: tuple[str, ...]):
    def check(value) -> str:
        value = str(value) if isinstance(value, int) and not isinstance(value, bool) else value  # id3_version = 3
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def _string(value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _strings(value) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise TypeError(f"expected a list of names, got {value!r}")
    return [v.strip() for v in value]


def _aliases(value) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) and v.strip() for v in value.values()):
        raise TypeError(f"expected a table of names (\"Hip Hop\" = \"Hip-Hop\"), got {value!r}")
    return {alias: name.strip() for alias, name in value.items()}


CHECKS = {"fields": _fields, "top_k": _top_k, "threshold": _threshold, "mode": _choice(MODES),
          "id3_version": _choice(ID3_VERSIONS), "write_mode": _choice(WRITE_MODES), "separator": _string,
          "genre_aliases": _aliases,
          "genre_whitelist": lambda value: tuple(_strings(value))}


def describe(config: Config) -> list[str]:
    """The config file's path and every key's effective value, as TOML with where it comes from."""
    state = "" if config.found else f" (not found: the defaults apply; {ENVIRONMENT} names another file)"
    lines = [f"# config file: {config.path}{state}"]
    for key in DEFAULTS:
        value, source = config.value(key), config.source(key)
        note = MEANING.get(key, "") if source == "default" else ""
        if value is None or value == "" or value == {}:
            lines.append(f"# {key}: {note or 'not set'} ({source})")
        else:
            lines.append(f"{key} = {_toml(value)}  # {source}" + (f"; {note}" if note else ""))
    return lines


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def genre_key(name: str, aliases: dict[str, str] | None = None) -> str:
    """What makes two genre names one genre: the name its alias gives, without case, spaces or
    punctuation ("Hip Hop", "hip-hop", "HipHop" -> "hiphop")."""
    loose = _loose(name)
    for alias, canonical in (aliases or {}).items():
        if _loose(alias) == loose:
            return _loose(canonical)
    return loose


def _loose(name: str) -> str:
    return "".join(ch for ch in name.casefold() if ch.isalnum())


def canonical_genres(names: list[str], aliases: dict[str, str], whitelist: tuple[str, ...] | None) -> list[str]:
    """Genres musictag would write, as the user names them: each through its alias, those outside the
    whitelist (when there is one) left out, one of each genre."""
    out, seen = [], set()
    allowed = None if whitelist is None else {genre_key(name, aliases) for name in whitelist}
    for name in names:
        key = genre_key(name, aliases)
        renamed = next((n for a, n in aliases.items() if _loose(a) == _loose(name)), name)
        if key not in seen and (allowed is None or key in allowed):
            seen.add(key)
            out.append(renamed)
    return out
