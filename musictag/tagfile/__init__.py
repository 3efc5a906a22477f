"""One file's tags, read and written safely: each field declared once (fields.py), one storage style per
tag format (formats.py), the checks every write makes (checks.py), in-place writes with their journal and
repair (inplace.py), and copy writes (write.py).

Every mutagen call goes through `_tag_errors`, which turns failures into TagReadError or TagWriteError
carrying the path. Audio data is never re-encoded (mutagen rewrites tag blocks only). Two ways to write
(`write_mode`, defaults.WRITE_MODES):

- copy: the file is copied beside itself, the copy is tagged and read back, and only then renamed over the
  original. A failure at any point leaves the original untouched.
- in place: when the new tags fit in the space of the old ones (the padding mutagen and encoders leave),
  the save is first made into an overlay that records which bytes it would change without touching the file;
  those bytes' originals go to a journal (the database, synced) before the first byte of the file is
  written; then the file is written, synced and read back. The file keeps its size, so no audio byte moves;
  a kill mid-write is repaired from the journal by the next run (`restore_original`). Hard links and the
  file's inode stay; no free space is needed. A tag that does not fit is written by copy (auto) or refused.

A write changes only the fields it is given: ID3 tags keep their version (v2.3 stays v2.3, where the mood
is TXXX:MOOD as other taggers write it) and every other frame as stored; ID3v1 and APEv2 tags keep their
bytes; a field's frame keeps its text encoding where the values fit it.
"""
from .checks import TEMPORARY_MARK, check_writable, file_state, temporary_name
from .fields import FIELDS, Field, Values, custom_field, field_for
from .formats import lacks_tag_block, read_fields
from .inplace import IN_PLACE_LIMIT, Journal, Overwrite, restore_original
from .write import write_fields

__all__ = ["FIELDS", "IN_PLACE_LIMIT", "TEMPORARY_MARK", "Field", "Journal", "Overwrite", "Values", "check_writable",
           "custom_field", "field_for", "file_state", "lacks_tag_block", "read_fields", "restore_original",
           "temporary_name", "write_fields"]
