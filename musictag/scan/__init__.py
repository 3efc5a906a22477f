"""scan and undo. options.py: what a scan is asked and what it reports; decide.py: the tag decision, pure;
scanner.py: the orchestrator (triage, engines, moved files); writes.py: the write tracker (locks, pool,
retries, re-scoring) over writepool.py's threads; undo.py: undo, and what every run settles first."""

from .decide import TagDecision, choose_labels, choose_terms
from .options import USER_FIELDS, Change, ScanModel, ScanOptions, ScanResult, decision_key
from .scanner import Scanner
from .undo import remove_leftovers, repair_interrupted, undo

__all__ = ["USER_FIELDS", "Change", "ScanModel", "ScanOptions", "ScanResult", "Scanner", "TagDecision",
           "choose_labels", "choose_terms", "decision_key", "remove_leftovers", "repair_interrupted", "undo"]
