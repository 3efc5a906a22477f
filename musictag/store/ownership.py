"""Whose value is whose: per field, the values musictag added and the values it removed, kept at every
write relative to what the file held at that moment.

The rule a user can check: a value in a file that musictag did not add is the user's, and no scan removes
it unless asked to (`--mode replace`); undo takes away only musictag's values that are still there and
puts back only values musictag itself removed, and a field the user changed since musictag last wrote it
is left as the user set it.

A field's record (`Owned`) holds the values musictag added (still in the field after its last write), the
values it removed (with their places, for undo to put them back there) and the field as it was before the
first of musictag's writes since the user last set it (`before`: undo gives back exactly those stored
values when what it works out equals them, so a joined "Rock; Pop" or an odd spelling comes back as it was).
When the user changed the field since musictag's last write, the user's state becomes the new start: the
values the user removed are not put back by undo, and musictag's values the user left are still musictag's.
musictag's values the user removed are `declined`: a merge scan never writes them into that field again.

Pure: no I/O. Values are as stored; with a separator (config file) one stored value may join several.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Values = list[str]


@dataclass
class Owned:
    """musictag's part of one field (see the module's docstring)."""

    added: Values = field(default_factory=list)  # values musictag added, still in the field when it wrote it
    removed: list[tuple[int, str]] = field(default_factory=list)  # (place, value) musictag took out
    before: Values = field(default_factory=list)  # the field as stored before musictag's writes began
    separator: str = ""  # what joined several values into one stored value when musictag wrote ("": none)
    declined: Values = field(default_factory=list)  # musictag's values the user took out: not written again

    def to_dict(self) -> dict:
        return {"added": self.added, "removed": [list(r) for r in self.removed], "before": self.before,
                "separator": self.separator, **({"declined": self.declined} if self.declined else {})}

    @classmethod
    def from_dict(cls, data: dict) -> "Owned":
        return cls(list(data.get("added", [])), [(int(i), str(v)) for i, v in data.get("removed", [])],
                   list(data.get("before", [])), data.get("separator", ""), list(data.get("declined", [])))


def split(values: Values, separator: str) -> Values:
    """Values one per entry: a stored value joined by the separator is split (spaces around it dropped)."""
    mark = separator.strip() or separator
    if not mark:
        return list(values)
    return [part.strip() for value in values for part in value.split(mark) if part.strip()]


def joined(values: Values, separator: str) -> Values:
    """Values as stored: with a separator, one value joining them all."""
    return [separator.join(values)] if separator and len(values) > 1 else list(values)


def legacy(previous: Values | None, written: Values, separator: str = "") -> Owned:
    """The record of a field as databases before per-write records kept it: `previous`, the values from
    before musictag first changed the field (None: it never changed them), and `written`, the field as
    musictag last left it."""
    before = list(written if previous is None else previous)
    had, holds = split(before, separator), split(written, separator)
    return Owned([v for v in holds if v not in had], [(i, v) for i, v in enumerate(had) if v not in holds],
                 before, separator)


def restarted(record: Owned | None, current: Values, written: Values | None, separator: str) -> Owned:
    """The record as this write starts from it: a new one when musictag has none; a new start when the
    user changed the field since musictag last wrote it (`written`): the user's state is theirs, musictag's
    values they left are still musictag's, and those they took out are declined."""
    if record is None:
        return Owned([], [], list(current), separator)
    if written is not None and current == written:
        return record
    now = split(current, record.separator)  # as musictag last joined them (the config may have changed since)
    still = [v for v in record.added if v in now]
    declined = record.declined + [v for v in record.added if v not in now and v not in record.declined]
    return Owned(still, [], joined([v for v in now if v not in still], separator) if still else list(current),
                 separator, declined)


def after_write(record: Owned, current: Values, new: Values, separator: str) -> Owned:
    """The record once the field goes from `current` to `new` (both as stored), `record` being restarted's:
    musictag's values are those it keeps and those it adds now; a value of the user's it removes now is
    remembered with its place; one it removed before and writes again is the user's again; a declined one
    it writes again (replace mode) is declined no more. `current` is split as musictag last joined it
    (record.separator), `new` as it is written now (`separator`)."""
    now, then = split(current, record.separator), split(new, separator)
    gone = {v for _, v in record.removed}
    added = [v for v in then if v in record.added or (v not in now and v not in gone)]
    removed = [(i, v) for i, v in record.removed if v not in then]
    removed += [(i, v) for i, v in enumerate(now) if v not in then and v not in record.added
                and v not in {r for _, r in removed}]
    return Owned(added, removed, record.before, separator, [v for v in record.declined if v not in then])


def ours(record: Owned | None, current: Values) -> set[str]:
    """musictag's values among the field's current ones (split as musictag last joined them)."""
    if record is None:
        return set()
    return set(record.added) & set(split(current, record.separator))


def undone(record: Owned, current: Values) -> Values:
    """The field once musictag's values are taken out and the user's values it removed put back, as
    stored; `current` must still be what musictag wrote (else the user's state wins: undo leaves it)."""
    values = [v for v in split(current, record.separator) if v not in record.added]
    for place, value in sorted(record.removed):
        if value not in values:
            values.insert(min(place, len(values)), value)
    if values == split(record.before, record.separator):
        return list(record.before)
    return joined(values, record.separator)


def trivial(record: Owned) -> bool:
    """Whether the record holds nothing worth keeping: undo would not change the field, and the user declined
    none of musictag's values there."""
    return not record.added and not record.removed and not record.declined
