"""Practice quizzes from the course notes: build, check, take, store, score.

``tutorlm quiz build INDEX`` turns an index of the notes (``tutorlm index build``)
into questions of three kinds (multiple choice, short answer, numeric), each with
the section and passage it is drawn from; :mod:`tutorlm.quiz.checks` drops the
ones a student should never see and counts why in a manifest. A quiz file is an
MCQA file (``tutorlm.data.formats``), so ``tutorlm eval files --mcqa quiz.jsonl``
and ``tutorlm eval rag --mcqa quiz.jsonl`` score a model on it as they are.
"""
