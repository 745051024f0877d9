"""The tutor graders' verdicts on hand-written replies: right, wrong and borderline.

Each table row is a reply a person has judged; the grader must agree. The borderline
rows pin the documented decisions (docs/evaluate.md, "Tutor tasks"), so changing a
rule means changing a row here on purpose.
"""

from __future__ import annotations

import pytest

from tutorlm.evaluate.tutor_graders import (
    abstains,
    answer_number,
    bare_letter,
    citation_correctness,
    citation_precision,
    cited_numbers_raw,
    explains,
    grounded_answer,
    hint_keeps_answer,
    normalize,
    numbers_in,
    same_number,
)
from tutorlm.rag.prompt import cited_numbers


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("F = m·a.", "f = m*a"),
        ("  The  ANSWER:\n1,000 N ", "the answer 1000 n"),
        ("Newton’s law", "newton s law"),
        ("$\\frac{1}{2} m v^2$ in \\text{J}", "1/2 m v^2 in j"),
        ("x = −3", "x = -3"),
        ("Ratio: 3 : 1.", "ratio 3:1"),
        ("g ≈ 9.81 m/s².", "g 9.81 m/s^2"),
    ],
)
def test_normalize(text, normal):
    assert normalize(text) == normal


@pytest.mark.parametrize(
    ("written", "value", "integer"),
    [
        ("9.81", 9.81, False),
        ("x = 12", 12.0, True),
        ("1/2", 0.5, False),
        ("−4", -4.0, True),
        ("1,879", 1879.0, True),
        ("3.0 m/s^2", 3.0, False),
        ("50%", 50.0, False),
    ],
)
def test_answer_number_reads_a_number_with_its_unit(written, value, integer):
    number = answer_number(written)
    assert number.values[0] == pytest.approx(value) and number.integer is integer


@pytest.mark.parametrize("written", ["F = ma", "3 and 4", "10^2", "inertia", ""])
def test_an_answer_that_is_not_one_number_is_matched_as_text(written):
    assert answer_number(written) is None


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("9.8", "9.81", True),  # 0.1 % apart
        ("10", "9.81", False),  # 1.9 % apart
        ("1/2", "0.5", True),
        ("50%", "0.5", True),
        ("50%", "50", True),
        ("240", "241", False),  # two integers: exactly
        ("12.0", "12", True),
        ("0.333", "1/3", True),
    ],
)
def test_numeric_match(a, b, same):
    assert same_number(numbers_in(a)[0], numbers_in(b)[0]) is same


def test_numbers_in_skips_powers_and_reads_signs():
    found = [n.text for n in numbers_in("v^2 = 3 x 10^8, 5-3 and x = -2")]
    assert found == ["3", "5", "3", "-2"]


# grounded accuracy ------------------------------------------------------------------

NEWTON = ("F = ma", ["F = m a", "force equals mass times acceleration"])
GRAVITY = ("9.81 m/s^2", [])


@pytest.mark.parametrize(
    ("reply", "canonical", "passed"),
    [
        ("The second law says F = ma [2].", NEWTON, True),
        ("Newton's second law: F = m a.", NEWTON, True),  # borderline: spacing
        ("Force equals mass times acceleration [1].", NEWTON, True),  # a variant
        ("F = mass / time", NEWTON, False),
        ("The answer is: [1] (notes/physics.md, Physics > Newton's laws)", NEWTON, False),
        ("Near the surface g is 9.81 m/s² [1].", GRAVITY, True),
        ("g is about 9.8 m/s^2.", GRAVITY, True),  # borderline: rounded, within 1 %
        ("g is about 10 m/s^2.", GRAVITY, False),  # 1.9 % off
        ("See note [9] and [81].", GRAVITY, False),  # citations are not numbers
        ("They segregate in a 3 : 1 ratio.", ("3:1", []), True),
        ("About 31 of them.", ("3:1", []), False),  # a ratio is not a number
    ],
)
def test_grounded_answer(reply, canonical, passed):
    answer, variants = canonical
    assert grounded_answer(reply, answer, variants)[0] is passed


def test_grounded_answer_says_what_matched():
    assert grounded_answer("g is about 9.8", "9.81")[1] == (
        "contains '9.81' (number '9.8' matches '9.81')"
    )
    assert grounded_answer("no idea", "inertia", ["law of inertia"])[1] == (
        "contains none of 'inertia', 'law of inertia'"
    )


def test_a_word_answer_does_not_match_inside_a_longer_word():
    assert grounded_answer("Inertia.", "inertia")[0]
    assert not grounded_answer("the inertial frame", "inertia")[0]


# citations --------------------------------------------------------------------------


def test_raw_citations_keep_out_of_range_numbers_and_agree_with_the_rag_reader():
    reply = "F = ma [1, 3]. Also [4] and [2-3], again [1][2]."
    assert cited_numbers_raw(reply) == [1, 3, 4, 2]
    in_range = [n for n in cited_numbers_raw(reply) if n <= 3]
    assert in_range == cited_numbers(reply, 3)


@pytest.mark.parametrize(
    ("reply", "passed", "why"),
    [
        ("F = ma [2].", True, "cites [2] of 3 notes"),
        ("F = ma [1][3].", True, "cites [1, 3] of 3 notes"),
        ("F = ma [4].", False, "cites [4] but the prompt numbers notes 1-3"),  # borderline
        ("F = ma [2, 4].", False, "cites [4] but the prompt numbers notes 1-3"),
        ("F = ma.", False, "cites no note"),
        ("F = ma (see note 2).", False, "cites no note"),
    ],
)
def test_citation_precision(reply, passed, why):
    assert citation_precision(reply, 3) == (passed, why)


SOURCES = [
    ("notes/physics.md", "Physics > Kinematics"),
    ("notes/physics.md", "Physics > Newton's laws"),
    ("notes/chemistry.md", "Chemistry > Newton's laws"),
]


@pytest.mark.parametrize(
    ("reply", "passed"),
    [
        ("F = ma [2].", True),
        ("F = ma [1][2].", True),  # one cited note is gold
        ("F = ma [1].", False),  # the near miss: same file, another section
        ("F = ma [3].", False),  # the same heading in another file
        ("F = ma [4].", False),  # not in the prompt
        ("F = ma.", False),
    ],
)
def test_citation_correctness(reply, passed):
    assert citation_correctness(reply, SOURCES, "physics.md", "Newton's laws")[0] is passed


def test_citation_correctness_explains_a_near_miss():
    passed, why = citation_correctness("F = ma [1].", SOURCES, "physics.md", "Newton's laws")
    assert not passed
    assert why == (
        "cites [1] notes/physics.md, Physics > Kinematics; gold is physics.md, "
        "Newton's laws (the gold section is [2])"
    )


def test_gold_section_matches_its_full_path_and_its_subsections():
    sources = [("notes/physics.md", "Physics > Newton's laws > Third law")]
    assert citation_correctness("[1]", sources, "notes/physics.md", "Physics > Newton's laws")[0]
    assert citation_correctness("[1]", sources, None, "newton’s laws")[0]
    assert not citation_correctness("[1]", sources, "biology.md", None)[0]


# abstention -------------------------------------------------------------------------

QUESTION = "In which year did the author of these notes first teach physics?"


@pytest.mark.parametrize(
    ("reply", "passed"),
    [
        ("I could not find this in the notes.", True),
        ("The notes do not say when that was [1].", True),
        ("That is not covered in the course notes.", True),
        ("I don't know; the notes don’t mention it.", True),
        ("The notes don't say, but it is 1879.", False),  # says so, then fabricates
        ("It was 1879 [2].", False),
        ("Physics is the study of matter and energy.", False),  # answers something else
    ],
)
def test_abstains(reply, passed):
    assert abstains(reply, QUESTION)[0] is passed


def test_abstention_may_repeat_a_figure_of_the_question():
    question = "What did the 1905 paper on light say?"
    assert abstains("The notes don't cover the 1905 paper.", question) == (
        True,
        'says "notes don\'t cover", no figure of its own',
    )
    assert abstains("The notes don't say, but it is 1879.", QUESTION)[1] == (
        'says "notes don\'t say" but states 1879, not in the question'
    )


# hint leakage -----------------------------------------------------------------------

SOLVE = "Solve for q: 20*q - 3 = 237"


@pytest.mark.parametrize(
    ("reply", "kept"),
    [
        ("First add 3 to both sides. What do you get?", True),
        ("Add 3 to both sides, then divide both sides by 20.", True),
        ("Step 1: add 3 to both sides to get 20q = 240.", True),
        ("Add 3 and divide by 20: q = 12.", False),
        ("Try checking whether 12 works.", False),  # any mention of a number not asked
        ("The answer is twelve... I mean 12.0!", False),
        ("You should get 240/20.", False),  # a fraction is read as its value, 12
    ],
)
def test_hint_keeps_answer(reply, kept):
    assert hint_keeps_answer(reply, "12", SOLVE)[0] is kept


def test_a_hint_may_repeat_the_question_that_contains_the_answer():
    question = "Find x if 2x = x + 9."
    hint = "Start from 2x = x + 9 and subtract x from both sides."
    assert hint_keeps_answer(hint, "9", question) == (True, "keeps back '9'")
    assert hint_keeps_answer("Subtract x: x = 9.", "9", question) == (
        False,
        "leaks '9': states it as a result ('9')",
    )
    assert not hint_keeps_answer("So the answer is 9.", "x = 9", question)[0]


def test_a_text_answer_leaks_by_its_text():
    question = "Which law says that forces come in pairs?"
    assert hint_keeps_answer("Think about what A does to B and B to A.", "third law", question)[0]
    assert not hint_keeps_answer("It is Newton's third law.", "third law", question)[0]
    assert not hint_keeps_answer(
        "Think: action and reaction.", "third law", question, ["action and reaction"]
    )[0]


# explanation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "passed"),
    [
        ("Step 1: add 3 to both sides: 20q = 240.\nStep 2: divide by 20.\nThe answer is 12.", True),
        ("Add 3 to both sides, so 20q = 240. Dividing by 20 gives q = 12.", True),
        ("1. Add 3: 20q = 240\n2. Divide by 20: q = 12\n#### 12", True),
        ("The answer is 12. Check: 20*12 - 3 = 237.", True),  # the statement, then a check
        ("12", False),  # a bare answer
        ("The answer is 12.", False),  # one step
        ("Sure. The answer is 12.", False),  # "Sure." is not a step
        ("Add 3: 20q = 240. Divide by 20. The answer is 11.", False),
        ("Add 3 to both sides. Then divide by 20 and you are done.", False),  # no answer
        ("Add 3: 20q = 240. The answer is 12 [1].", True),  # a citation after the answer
    ],
)
def test_explains(reply, passed):
    assert explains(reply, "12")[0] is passed


def test_explanation_says_why():
    assert explains("12", "12") == (False, "0 step(s); an explanation needs at least 2")
    assert explains("Add 3: 20q = 240. Divide by 20. The answer is 11.", "12") == (
        False,
        "3 steps, but its answer statement '11' is not '12'",
    )


def test_explanation_of_a_text_answer_ends_with_it():
    reply = "The force is proportional to the acceleration.\nSo the law is F = m a."
    assert explains(reply, "F = ma")[0]
    assert not explains("The law is F = ma.\nIt was found by Newton.", "F = ma")[0]


# letter collapse --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "collapsed"),
    [
        ("B", True),
        ("(B)", True),
        ("B.", True),
        (" **C** ", True),
        ("The answer is B", True),
        ("The correct answer is (D).", True),
        ("Answer: B", True),
        ("Because the net force is zero.", False),
        ("A force is a push or a pull.", False),
        ("21", False),
        ("The answer is B because 20 * 12 - 3 = 237.", False),  # a letter with reasons
        ("b", False),  # lower case: a word, not a choice
    ],
)
def test_bare_letter(reply, collapsed):
    assert bare_letter(reply)[0] is collapsed


def test_tiny_numbers_are_compared_by_their_ratio_not_an_absolute_gap():
    from tutorlm.evaluate.tutor_graders import answer_number, same_number

    one, two = answer_number("0.0000000001"), answer_number("0.0000000002")
    assert same_number(one, one) and not same_number(one, two)


@pytest.mark.parametrize(
    ("reply", "cited"),
    [
        ("[1] (notes/biology.md, Biology > Cells)\nCells divide by mitosis.", []),
        ("[2] (notes/physics.md, Physics > Newton's laws):\nF = ma [1].", [1]),
        ("The answer is: [1] (notes/physics.md, Physics > Newton's laws)", [1]),
        ("Cells divide by mitosis [1].", [1]),
    ],
)
def test_a_pasted_note_header_is_not_a_citation(reply, cited):
    """A reply that pastes the prompt's notes block back ("[1] (file, heading)" on a
    line of its own) cites nothing; a header run into a sentence still counts."""
    from tutorlm.evaluate.tutor_graders import cited_numbers_raw

    assert cited_numbers_raw(reply) == cited
