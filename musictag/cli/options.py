"""Options several commands share, how option text is parsed, and how the config file fills in what the
command line left out."""

from __future__ import annotations

import re

import typer

from ..config import ALL_FIELDS, RANKED_FIELDS
from ..defaults import DEVICE_HELP, DEVICES, ENGINES, FOLDER_FIELD, ID3_VERSIONS, MODE, MODES, PRECISION_TARGET, THRESHOLD
from ..defaults import WRITE_MODE, WRITE_MODE_HELP, WRITE_MODES
from .app import _check_choice, _fail


FIELD_OPTION = typer.Option(FOLDER_FIELD, "--field", help="With a folder per class (DATA/<label>/*.mp3): the head "
                            "its labels train, and so the tag field a scan writes them to: genre, mood, or a name "
                            "of your own (a custom field MUSICTAG_<NAME>).")
DB_OPTION = typer.Option(None, "--db", help="Database file (default: in the user data dir).")


MODEL_OPTION = typer.Option(None, "--model", help="Checkpoint to use (default: the shipped model, CP-ResNet + musicnn; "
                                                  "fast: the shipped CP-ResNet alone, several times faster).")


THRESHOLD_OPTION = typer.Option(
    None, show_default=False, help="Minimum score for a tag to be written (default: the model's own threshold per "
    "tag, chosen on validation for a precision of " + ", ".join(f"{p:.0%} ({name})" for name, p in PRECISION_TARGET.items())
    + f"; models without them: {THRESHOLD} for tags after the first). A value the model could not calibrate "
    "is not written at any threshold.")


MODE_OPTION = typer.Option(MODE, help="One of " + ", ".join(MODES) + ". merge: keep the genres and moods already "
                           "there; replace: ours only; skip-tagged: leave files with genres or moods musictag did not "
                           "write alone.")


def _install_hint(extra: str) -> str:
    """pip install 'musictag[EXTRA]' for a help text: Typer's Rich help reads [ray] as markup, and drops it."""
    bracket = "\\[" if typer.core.DEFAULT_MARKUP_MODE == "rich" else "["
    return f"pip install 'musictag{bracket}{extra}]'"


ENGINE_OPTION = typer.Option("local", help="Where tracks are decoded and scored: " + " or ".join(ENGINES) + ". ray: "
                             f"on a Ray cluster ({_install_hint('ray')}); tags and the database are written here "
                             "as results come back.")


RAY_ADDRESS_OPTION = typer.Option(None, "--ray-address", show_default=False, help="With --engine ray: the cluster to "
                                  "join (default: $RAY_ADDRESS, else a Ray started on this machine for the scan).")


PARQUET_OPTION = typer.Option(None, "--parquet", show_default=False, help="Also write DIR/tracks.parquet: per track "
                              f"its path, model, every label score and its embedding ({_install_hint('parquet')}).")


def _id3_version_choice(value: str) -> str:
    _check_choice("--id3-version", value, ID3_VERSIONS)
    return value


def _write_mode_choice(value: str) -> str:
    _check_choice("--write-mode", value, WRITE_MODES)
    return value


WRITE_MODE_OPTION = typer.Option(WRITE_MODE, "--write-mode", help=WRITE_MODE_HELP, callback=_write_mode_choice)


def _check_device(device: str) -> None:
    """One line naming the choices, before anything loads (torch's own error lists a dozen device types)."""
    if device not in DEVICES and not re.fullmatch(r"cuda:\d+", device):
        _fail(f"--device must be one of {', '.join(DEVICES)} or cuda:N (got {device!r})")


def _parse_top_k(text: str) -> tuple[dict[str, int], int | None]:
    """"3" -> ({}, 3): every field 3; "genre=2,mood=4" -> ({...}, None): those fields (others keep the default)."""
    if text.strip().isdigit():
        return {}, _at_least_one(int(text))
    per_field = {}
    for part in filter(None, text.split(",")):
        name, _, n = (s.strip() for s in part.partition("="))
        if not n.isdigit():
            _fail(f"--top-k: expected N or FIELD=N[,FIELD=N], got {text!r}")
        if name not in RANKED_FIELDS:
            _fail(f"--top-k: unknown field {name!r} (valid: {', '.join(RANKED_FIELDS)})")
        per_field[name] = _at_least_one(int(n))
    return per_field, None


def _at_least_one(n: int) -> int:
    if n < 1:
        _fail("--top-k: a field gets at least 1 tag (--fields chooses which fields are written)")
    return n


def _parse_fields(text: str) -> tuple[str, ...] | None:
    """--fields as a tuple; None when not given (the default fields)."""
    names = _split_list(text)
    unknown = [name for name in names if name not in ALL_FIELDS]
    if unknown:
        _fail(f"--fields: unknown field {', '.join(unknown)} (valid: {', '.join(ALL_FIELDS)})")
    return names or None


# scan options the config file sets too
CONFIGURABLE = ("fields", "top_k", "threshold", "mode", "id3_version", "write_mode")


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option `name` was given (command line or environment), not left at its default."""
    # by the name: typer may carry its own copy of click's enum
    return getattr(ctx.get_parameter_source(name), "name", "") in ("COMMANDLINE", "ENVIRONMENT")


def _with_config(ctx: typer.Context, options):
    """The scan's options with the config file's values for those not given on the command line."""
    from .. import api

    return api.apply_config(options, _config(), {name for name in CONFIGURABLE if _given(ctx, name)})


def _configured(ctx: typer.Context, name: str, value):
    """One option's value: the command line's when given, else the config file's, else the default."""
    return value if _given(ctx, name) else _config().value(name)


def _config():
    from ..config import ConfigError, load_config

    try:
        return load_config()
    except ConfigError as e:
        _fail(str(e))


QUIET_HELP = "No progress bars."


TRAIN_DEVICE_HELP = DEVICE_HELP + " On a GPU: bf16 mixed precision (fp16 with a gradient scaler where bf16 is missing)."


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())
