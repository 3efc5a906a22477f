"""What the commands print: progress bars, one JSON object a line, summaries, the lines a killed run's
leftovers and moved files get."""

from __future__ import annotations

import json
import os
import sys
import time

import typer


PLAIN_EVERY_S = 30.0  # where stderr is a pipe or a log, a progress line this often (and at the end)


def _bar(total: int, quiet: bool, unit: str = "file"):
    """A progress bar on a terminal; where stderr is not one (a pipe, a log), plain lines now and then."""
    if not quiet and not sys.stderr.isatty():
        return _Lines(total, unit)
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, disable=quiet, dynamic_ncols=True, file=sys.stderr)


class _Lines:
    """What a bar would show, as one plain line every PLAIN_EVERY_S seconds and one at the end (logs
    and pipes get no carriage returns)."""

    def __init__(self, total: int, unit: str):
        self.total, self.unit, self.n, self.desc, self.postfix = total, unit, 0, "", ""
        self.started = self.shown = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        self.refresh()

    def refresh(self) -> None:
        if time.monotonic() - self.shown >= PLAIN_EVERY_S:
            self._line()

    def set_description(self, desc: str) -> None:
        self.desc = f"{desc}: "

    def set_postfix(self, **values) -> None:
        self.postfix = ", " + ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self.n:
            self._line()

    def _line(self) -> None:
        self.shown = time.monotonic()
        share = f" ({self.n / self.total:.0%})" if self.total else ""
        typer.echo(f"{self.desc}{self.n}/{self.total} {self.unit}s{share}, "
                   f"{self.shown - self.started:.0f} s{self.postfix}", err=True)


def _report(result, dry_run: bool, as_json: bool) -> None:
    """The scan's summary: one JSON object (--json), or the text summary."""
    if as_json:
        typer.echo(json.dumps({"summary": _summary(result, dry_run)}))
    else:
        _print_summary(result, dry_run)


def _json_lines(progress):
    """The scan's progress, plus each file's outcome as one JSON object on standard output."""
    def both(event: str, data: dict) -> None:
        progress(event, data)
        if event == "file":
            typer.echo(json.dumps(_json_safe(data)))

    return both


def _json_safe(data: dict) -> dict:
    """A file's outcome as valid JSON: a name that is not UTF-8 (Python holds its bytes as lone surrogates,
    which JSON readers reject or mangle) is given readable, with U+FFFD for those bytes, and exactly, in hex."""
    path = data["path"]
    try:
        path.encode("utf-8")
        return data
    except UnicodeEncodeError:
        raw = os.fsencode(path)
        safe = {**data, "path": raw.decode("utf-8", "replace"), "path_bytes_hex": raw.hex()}
        if "reason" in data:
            safe["reason"] = data["reason"].replace(path, safe["path"])
        return safe


def _summary(result, dry_run: bool) -> dict:
    return {"tagged": result.tagged, "would_change" if dry_run else "scored": result.scored,
            "unchanged": result.unchanged, "skipped": result.skipped, "failed": len(result.failed),
            "failed_before": len(result.failed_before), "unconfident": result.unconfident,
            "moved": len(result.moved), "moved_or_deleted": len(result.gone)}


def _said_leftovers(result):
    """The run's result, once the temporary copies it removed and the files it repaired (an in-place write
    cut short) are named: what a killed run left."""
    for path in result.leftovers:
        typer.echo(f"removed {shown_path(path)}: a temporary copy left by an interrupted run", err=True)
    for path in result.repaired:
        typer.echo(f"repaired {shown_path(path)}: an interrupted run's in-place tag write was cut short; its original tag "
                   "bytes are back", err=True)
    return result


class _FileBar:
    """A progress bar over the files of a scan or undo, made when the library's size is known."""

    def __init__(self, quiet: bool):
        self.quiet, self.bar = quiet, None

    def progress(self, event: str, data: dict) -> None:
        if event == "start":
            self.bar = _bar(data["total"], self.quiet)
        elif event == "file" and self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _print_summary(result, dry_run: bool) -> None:
    for change in result.changes:
        typer.echo(shown_path(change.path))
        for name in change.after:
            before, after = _shown_values(change.before.get(name, []), change.after[name])
            typer.echo(f"  {name}: {before} -> {after}")
    scored_label = "would change" if dry_run else "scored (not written)"
    typer.echo(f"tagged: {result.tagged}, {scored_label}: {result.scored}, unchanged: {result.unchanged}, "
               f"skipped: {result.skipped}, failed: {len(result.failed)}, failed before: {len(result.failed_before)}")
    if result.expected and (result.tagged or (dry_run and result.scored)):
        typer.echo("expected right, as cross-validated (model card): " + ", ".join(
            f"{name} {share:.0%}" for name, share in result.expected.items()))
    if result.unconfident:
        typer.echo("left alone, nothing confident: " + ", ".join(
            f"{name} in {count} file{'s' if count != 1 else ''}" for name, count in result.unconfident.items()))
    if result.failed_before:
        typer.echo("failed before: files that failed in an earlier scan and are unchanged since are not retried "
                   "and do not make the exit code 1 (--force retries them; export-csv lists their errors).")
    for path, reason in result.failed:
        typer.echo(f"failed: {shown_path(path)}: {reason.replace(path, shown_path(path))}", err=True)
    _print_moves(result)


def _shown_values(before: list[str], after: list[str]) -> tuple[str, str]:
    """A field's values before and after, as one line each ("; " between entries); where that reads the
    same for both (entries joined into one, or split), each entry quoted, so the change shows."""
    plain = ("; ".join(before) or "(none)", "; ".join(after) or "(none)")
    if plain[0] != plain[1]:
        return plain
    return " + ".join(json.dumps(v, ensure_ascii=False) for v in before), \
        " + ".join(json.dumps(v, ensure_ascii=False) for v in after)


def shown_path(path: str) -> str:
    """A file name as one printable line, as a shell would show it: one holding a newline, another control
    character or bytes that are not UTF-8 (surrogates) in bash's $'...' quoting, others as they are."""
    if path.isprintable() and not any(0xDC80 <= ord(c) <= 0xDCFF for c in path):
        return path
    out = []
    for char in path:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")  # a byte that is not UTF-8
        elif char in "\\'":
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        else:
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(char, f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"))
    return "$'" + "".join(out) + "'"


def _print_moves(result) -> None:
    """Records that followed their file to its new name, and those whose file is gone (said once)."""
    for old, new in result.moved:
        typer.echo(f"moved: {shown_path(old)} -> {shown_path(new)} (recognised by its audio; not decoded again)")
    for path in result.gone:
        typer.echo(f"moved or deleted: {shown_path(path)} (its record is kept: a scan that finds the file elsewhere takes it "
                   "along)")


def _train_progress(quiet: bool = False):
    bars = {}

    def progress(event: str, data: dict) -> None:
        if event == "cache":
            bar = bars.get("cache") or bars.setdefault("cache", _bar(data["total"], quiet, "clip"))
            bar.n = data["done"]
            bar.refresh()
            if data["done"] >= data["total"]:
                bar.close()
                bars.pop("cache")
        elif event == "step":
            bar = bars.get("epoch")
            if bar is None:
                bar = bars["epoch"] = _bar(data["steps"], quiet, "batch")
                bar.set_description(f"epoch {data['epoch'] + 1}")
            bar.update(1)
            bar.set_postfix(loss=f"{data['loss']:.3f}")
        elif event in ("epoch", "final"):  # one JSON object a line, the final model's validation last
            if "epoch" in bars:
                bars.pop("epoch").close()
            typer.echo(json.dumps(data))
        elif event == "message":
            typer.echo(data["text"])
        elif event == "file":
            bar = bars.get("files") or bars.setdefault("files", _bar(data["total"], quiet))
            bar.update(1)
            if data["done"] >= data["total"]:
                bars.pop("files").close()

    return progress
