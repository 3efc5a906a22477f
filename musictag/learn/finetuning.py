"""Finetuning's model surgery: new heads on a trained trunk beside the heads it keeps, and the vocabulary
the finetuned model writes. Pure (torch modules and dataclasses, no I/O); api.finetune runs the recipe.

The heads a finetune does not replace are kept, and kept knowing what they knew: on the training clips
their targets are the base model's own predictions (learning without forgetting, Li & Hoiem 2016), so
the trunk, unfrozen at a tenth of the rate, does not drift away from them.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from ..model.network import CPResNet, replace_heads
from ..model.vocabulary import BASE, FieldVocabulary, Term, available, vocabulary_from_dict

LEARNT_HEAD_KINDS = ("single", "multi")  # kept heads that learn from the base model's predictions


def keep_heads(model: CPResNet, heads: dict[str, tuple[str, int]]) -> list[str]:
    """Give `model` the new `heads` (freshly initialised, replacing heads of the same name) and keep its
    other heads as they are; a kept head stacked on a replaced one cannot stay. Returns the kept heads."""
    config, old_heads, old_stacks = model.config, model.heads, model.stacks
    kept = [name for name in config.heads if name not in heads
            and not any(source in heads for source in config.stacked.get(name, ()))]
    shapes = {**{name: config.heads[name] for name in kept}, **heads}
    model.config = replace(config)  # replace_heads changes the config in place: the base's must stay as it is
    replace_heads(model, shapes)
    for name in kept:
        model.heads[name] = old_heads[name]
    model.config = replace(config, heads=shapes,
                           stacked={name: sources for name, sources in config.stacked.items() if name in kept})
    model.stacks = nn.ModuleDict({name: old_stacks[name] for name in model.config.stacked})
    return kept


def finetuned_vocabulary(base: list[dict], new: dict[str, list[str]], labels: dict[str, list[str]]
                         ) -> tuple[FieldVocabulary, ...]:
    """What a finetuned model writes, when its base model had a vocabulary: the base's fields that no new
    head replaces, plus one field per new head whose terms are its labels, judged by themselves (their
    thresholds are priors until api.calibrate_vocabulary chooses them on validation)."""
    kept = tuple(f for f in vocabulary_from_dict(base) if f.name not in new and f.truth_head not in new)
    kept = tuple(replace(f, terms=tuple(replace(t, sources=tuple(s for s in t.sources if s.split(":")[0] not in new),
                                                calibrated_on=BASE if t.calibrated_on else t.calibrated_on)
                                        for t in f.terms)) for f in kept)
    added = tuple(FieldVocabulary(head, tuple(Term(label, (f"{head}:{label.replace(' ', '_')}",), (label,))
                                              for label in names), head) for head, names in new.items())
    return available(kept + added, labels)
