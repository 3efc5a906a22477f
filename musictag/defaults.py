"""Defaults that the CLI shows in its help and the library applies, each written once.

Plain constants only: the CLI reads them before any heavy import, so `musictag --help` stays instant.
"""

SAMPLE_RATE = 22050  # Hz, the rate models are trained and run at
WINDOW_SECONDS = 10.0  # length of one analysed excerpt (and of the training crops)
# excerpts per track; bench/excerpt_agreement.py on 60 real tracks / 101 held-out ones: the top genre
# of a whole-track analysis is kept for 93% / 84% of tracks with 3 excerpts, 98% / 91% with 5; the top
# mood (62 close labels) for 83% / 76% with 5 and needs about 17 to reach 90% (3.4x the decoding)
EXCERPT_COUNT = 5
BATCH_SIZE = 48  # windows per forward pass
THRESHOLD = 0.3  # models without a vocabulary: minimum score of a multi-label tag after the first
PRECISION_TARGET = 0.8  # a written term's threshold: the lowest score at which validation precision reaches this
OPT_IN_FIELDS = ("instrument", "voice")  # scored and stored always; written only when asked (scan --with)
TOP_K = {"genre": 2, "mood": 3, "quadrant": 1, "voice": 1}  # most tags written per field ...
OTHER_TOP_K = 3  # ... and for heads not named there
EXPORT_TOP_K = 3  # labels per head in the wide CSV export
DECODE_WORKERS = 2  # decode processes of training, finetuning and evaluation
VAL_FRACTION = 0.2  # share held out for validation (whole artists at a time)
FINETUNE_EPOCHS = 20
FINETUNE_MIN_COUNT = 5  # a label needs this many tracks to be learnt when finetuning
