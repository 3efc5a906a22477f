import numpy as np
import pytest

from dataclasses import replace

from musictag.model.vocabulary import (DEFAULT_FIELDS, MOODS, NEVER, TEACHER, VALIDATION, FieldVocabulary, Term,
                                 available, calibrate, calibrate_best, choose, precision_threshold, teacher_truth, term_matrix,
                                 track_term_scores, truth_matrix, vocabulary_from_dict, vocabulary_to_dict,
                                 written_quality)

GENRE = FieldVocabulary("genre", (Term("Jazz", ("genre:Jazz", "msd:jazz"), ("Jazz",), 0.5),
                                  Term("Rock", ("genre:Pop/Rock", "msd:rock"), ("Pop/Rock",), 0.6),
                                  Term("Soundtrack", ("genre:Stage_&_Screen",), ("Stage & Screen",), 0.4)),
                        "genre")


def test_mood_groups_name_each_allmusic_mood_once():
    members = [m for term in MOODS for m in term.judged_by]
    assert len(members) == len(set(members)) == 62
    assert all(term.name in term.judged_by for term in MOODS)  # each group is named by one of its words


def test_available_drops_sources_and_terms_the_model_lacks():
    labels = {"genre": ["Jazz", "Stage & Screen"], "msd": ["jazz"]}
    (genre,) = available((GENRE,), labels)
    assert [t.name for t in genre.terms] == ["Jazz", "Soundtrack"]
    assert genre.terms[0].sources == ("genre:Jazz", "msd:jazz")
    assert available((GENRE,), {"mood": ["calm"]}) == ()


def test_term_scores_average_sources_for_one_track_and_for_arrays():
    scores = {"genre": {"Jazz": 0.9, "Pop/Rock": 0.2, "Stage & Screen": 0.1}, "msd": {"jazz": 0.5, "rock": 0.4}}
    assert track_term_scores(GENRE, scores) == pytest.approx({"Jazz": 0.7, "Rock": 0.3, "Soundtrack": 0.1})
    labels = {"genre": ["Jazz", "Pop/Rock", "Stage & Screen"], "msd": ["jazz", "rock"]}
    probs = {"genre": np.array([[0.9, 0.2, 0.1]]), "msd": np.array([[0.5, 0.4]])}
    np.testing.assert_allclose(term_matrix(GENRE, probs, labels), [[0.7, 0.3, 0.1]])


def test_choose_writes_only_confident_terms_best_first_and_nothing_when_none_is():
    assert choose(GENRE, {"Jazz": 0.9, "Rock": 0.65, "Soundtrack": 0.45}, top_k=2) == ["Jazz", "Rock"]
    assert choose(GENRE, {"Jazz": 0.45, "Rock": 0.55, "Soundtrack": 0.39}) == []
    # a single threshold given by the user replaces the calibrated ones
    assert choose(GENRE, {"Jazz": 0.45, "Rock": 0.55, "Soundtrack": 0.3}, threshold=0.4) == ["Rock", "Jazz"]


def test_the_best_value_is_written_below_its_own_threshold_only_when_the_field_allows_it():
    scores = {"Jazz": 0.45, "Rock": 0.35, "Soundtrack": 0.2}  # none at its own threshold
    assert choose(GENRE, scores) == []
    best_first = replace(GENRE, best_threshold=0.3)
    assert choose(best_first, scores) == ["Jazz"]
    assert choose(best_first, {"Jazz": 0.25, "Rock": 0.2, "Soundtrack": 0.1}) == []  # the best is below it too
    assert choose(best_first, {"Jazz": 0.9, "Rock": 0.65}, top_k=2) == ["Jazz", "Rock"]  # own thresholds first
    assert choose(best_first, scores, threshold=0.5) == []  # a threshold the user gives replaces both
    # a value whose calibration never reached its target is never the best written
    never_jazz = replace(best_first, terms=(replace(GENRE.terms[0], threshold=NEVER), *GENRE.terms[1:]))
    assert choose(never_jazz, scores) == ["Rock"]
    # nor is it written at a threshold the user gives, however low
    assert choose(never_jazz, scores, threshold=0.1) == ["Rock", "Soundtrack"]
    assert choose(never_jazz, {"Jazz": 0.99}, threshold=0.1) == []
    assert vocabulary_from_dict(vocabulary_to_dict((best_first,)))[0] == best_first


def test_calibrate_best_holds_the_precision_of_each_tracks_best_value():
    # per track the best of Jazz and Rock (Soundtrack is never written): 0.9, 0.7, 0.6 right, 0.5, 0.3 wrong
    scores = np.array([[0.9, 0.1, 0.8], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.4, 0.5, 0.1], [0.3, 0.2, 0.1]])
    truth = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0]], bool)
    terms = (*GENRE.terms[:2], replace(GENRE.terms[2], threshold=NEVER))
    out = calibrate_best(replace(GENRE, terms=terms), scores, truth, precision=0.75)
    assert out.best_threshold == 0.5  # 3 of the top 4 right; Soundtrack's 0.8 on track 0 does not count
    assert calibrate_best(replace(GENRE, terms=terms), scores, truth, precision=0.8).best_threshold == 0.6
    assert calibrate_best(replace(GENRE, terms=terms), scores, truth, precision=0.75, min_right=4).best_threshold is None


def test_precision_threshold_is_the_lowest_cut_that_holds_the_precision():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    truth = np.array([1, 1, 0, 1, 0, 0], bool)
    assert precision_threshold(scores, truth, 0.75) == 0.6  # top 4: 3 right
    assert precision_threshold(scores, truth, 1.0) == 0.8
    # never reached: a threshold above every score, so the term is never written
    assert precision_threshold(scores, np.zeros(6, bool), 0.5) == NEVER > 1.0


def test_calibrate_keeps_the_prior_for_terms_with_too_few_positives():
    scores = np.array([[0.9, 0.9, 0.1], [0.8, 0.2, 0.2], [0.3, 0.7, 0.3], [0.2, 0.6, 0.9]])
    truth = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1]], bool)
    out = calibrate(GENRE, scores, truth, precision=0.75, min_positives=2)
    # Rock holds 0.75 only with all four tracks; Soundtrack has 1 positive and keeps its prior
    assert [t.threshold for t in out.terms] == [0.8, 0.2, 0.4]
    assert [t.calibrated_on for t in out.terms] == [VALIDATION, VALIDATION, ""]


def test_teacher_calibration_fills_in_only_what_validation_left_uncalibrated():
    on_validation = calibrate(GENRE, np.array([[0.9, 0.9, 0.1], [0.8, 0.2, 0.2], [0.3, 0.7, 0.3]]),
                              np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]], bool), precision=0.75, min_positives=2)
    scores = np.array([[0.1, 0.1, 0.9], [0.1, 0.1, 0.7], [0.1, 0.1, 0.6], [0.1, 0.1, 0.3]])
    truth = np.ones((4, 3), bool)
    truth[2:, 2] = False  # the teacher says Soundtrack for the first two stretches only
    out = calibrate(on_validation, scores, truth, precision=0.75, min_positives=2, basis=TEACHER, keep_calibrated=True)
    assert out.terms[:2] == on_validation.terms[:2]  # the teacher, who says all of them, changes nothing there
    assert out.terms[2].threshold == 0.7  # at 0.6 two of three would be right: below 0.75
    assert [t.calibrated_on for t in out.terms] == [VALIDATION, VALIDATION, TEACHER]


def test_teacher_positives_count_tracks_and_unrecorded_thresholds_are_kept():
    scores = np.array([[0.9, 0.1, 0.8], [0.8, 0.1, 0.7], [0.7, 0.1, 0.6], [0.2, 0.1, 0.1]])
    truth = np.array([[1, 0, 1], [1, 0, 1], [1, 0, 1], [0, 0, 0]], bool)
    old = vocabulary_from_dict([{"name": "genre", "truth_head": "genre",  # as a checkpoint stored it before
                                 "terms": [{"name": t.name, "sources": list(t.sources), "threshold": 0.55}
                                           for t in GENRE.terms]}])[0]
    assert [t.calibrated_on for t in old.terms] == [None, None, None]
    kept = calibrate(old, scores, truth, precision=0.75, basis=TEACHER, keep_calibrated=True)
    assert kept == old  # not recorded: perhaps chosen on validation, so the teacher leaves them alone
    by_rows = calibrate(GENRE, scores, truth, precision=0.75, basis=TEACHER, keep_calibrated=True)
    assert [t.calibrated_on for t in by_rows.terms] == [TEACHER, "", TEACHER]
    # three positive stretches, but all from one track (group 0): too few tracks to calibrate on
    by_tracks = calibrate(GENRE, scores, truth, precision=0.75, basis=TEACHER, keep_calibrated=True,
                          groups=np.array([0, 0, 0, 1]))
    assert [t.calibrated_on for t in by_tracks.terms] == ["", "", ""]


def test_teacher_truth_is_a_source_among_the_teachers_top_tags():
    field = FieldVocabulary("voice", (Term("instrumental", ("msd:instrumental", "mtt:no_vocals")),
                                      Term("piano", ("mtt:piano",)), Term("Soundtrack", ("genre:Stage_&_Screen",))))
    labels = {"msd": ["rock", "instrumental", "pop"], "mtt": ["no vocals", "piano", "drums"]}
    teacher = {"msd": np.array([[0.1, 0.9, 0.5], [0.9, 0.2, 0.8]]),  # instrumental 1st, then 3rd of 3
               "mtt": np.array([[0.2, 0.1, 0.3], [0.1, 0.6, 0.5]])}  # no vocals 2nd then 3rd; piano 3rd then 1st
    np.testing.assert_array_equal(teacher_truth(field, teacher, labels, top=1), [[1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(teacher_truth(field, teacher, labels, top=2), [[1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(teacher_truth(field, teacher, labels, top=3), [[1, 1, 0], [1, 1, 0]])


def test_written_quality_counts_precision_coverage_and_first_term():
    scores = np.array([[0.9, 0.7, 0.1], [0.2, 0.1, 0.1], [0.6, 0.1, 0.5]])
    truth = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1]], bool)
    q = written_quality(GENRE, scores, truth, top_k=2)
    # track 0 gets Jazz (right) and Rock (wrong); track 1 nothing; track 2 Jazz (wrong), Soundtrack (right)
    assert (q.written, q.precision, q.coverage, q.first_precision) == (4, 0.5, pytest.approx(2 / 3), 0.5)
    assert q.per_term["Rock"] == {"written": 1, "right": 0}


def test_truth_matrix_and_round_trip_through_a_checkpoint_dict():
    truth = truth_matrix(GENRE, [["Jazz", "Blues"], ["Pop/Rock"], []])
    assert truth.tolist() == [[True, False, False], [False, True, False], [False, False, False]]
    assert vocabulary_from_dict(vocabulary_to_dict(DEFAULT_FIELDS)) == DEFAULT_FIELDS


def test_a_single_value_field_writes_its_top_term_or_nothing_never_a_runner_up():
    quadrant = FieldVocabulary("quadrant", (Term("Q1", ("quadrant:Q1",), ("Q1",), 0.7),
                                            Term("Q2", ("quadrant:Q2",), ("Q2",), 0.3)), "quadrant")
    scores = {"Q1": 0.6, "Q2": 0.4}  # Q1 is the model's quadrant, below its threshold; Q2 passes its own
    assert choose(quadrant, scores, top_k=1) == ["Q2"]  # what a multi-value field would do
    assert choose(quadrant, scores, single=True) == []
    assert choose(quadrant, {"Q1": 0.8, "Q2": 0.2}, single=True) == ["Q1"]
    quality = written_quality(quadrant, np.array([[0.6, 0.4]]), np.array([[False, True]]), single=True)
    assert quality.written == 0 and quality.coverage == 0.0


def test_written_values_hold_no_slash_and_former_names_still_apply():
    from musictag.model.vocabulary import GENRES, slash_free, with_former_names

    assert not [t.name for t in GENRES if "/" in t.name]
    stored = {"name": "genre", "truth_head": "genre",
              "terms": [{"name": "Ambient/New Age", "sources": ["genre:New_Age"], "judged_by": ["New Age"]},
                        {"name": "R&B/Soul", "sources": ["genre:R&B"], "judged_by": ["R&B"]}]}
    assert [t.name for t in FieldVocabulary.from_dict(stored).terms] == ["Ambient", "R&B"]  # an older checkpoint's
    assert slash_free("Pop/Rock") == "Pop & Rock" and slash_free("Jazz") == "Jazz"
    assert with_former_names({"Ambient/New Age": "Ambient/New Age"})["Ambient"] == "Ambient/New Age"
    assert with_former_names({"Ambient/New Age": "x", "Ambient": "y"})["Ambient"] == "y"
