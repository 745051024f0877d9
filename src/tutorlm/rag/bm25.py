"""BM25 over a sparse term matrix, with the exact scores of rank-bm25's BM25Okapi.

rank-bm25 scores a query by looping over every document in Python, so a query
costs time in proportion to the whole corpus. This module precomputes the per-term
weights of every document in a sparse matrix, so a query costs only the postings of
its terms (docs/benchmarks.md has the measured difference).
The formula is BM25Okapi's, idf floor included, and a test checks the two agree
to float precision. Term counts, not weights, are what an index stores: adding
or removing a file changes every idf, and weights are cheap to recompute.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

_WORD = re.compile(r"\w+")
_STOPWORD_TEXT = """a an and are as at be but by can do does for from had has have how i if in
into is it its me of on or so such than that the their then there these they this to was we were
what when where which while who why will with you your"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens without common English function words."""
    return [word for word in _WORD.findall(text.lower()) if word not in STOPWORDS]


@dataclass
class TermCounts:
    """How often each term occurs in each document: ``counts[doc, term]`` (CSR)."""

    vocab: list[str]
    counts: sparse.csr_matrix  # (docs, terms) int32

    @classmethod
    def from_texts(cls, texts: list[str]) -> TermCounts:
        return cls([], sparse.csr_matrix((0, 0), dtype=np.int32)).extended(texts)

    @property
    def n_docs(self) -> int:
        return self.counts.shape[0]

    def extended(self, texts: list[str]) -> TermCounts:
        """These documents followed by ``texts``; new terms are added to the vocabulary."""
        vocab = list(self.vocab)
        term_id = {term: position for position, term in enumerate(vocab)}
        rows, cols = [], []
        for row, text in enumerate(texts):
            for term in tokenize(text):
                column = term_id.get(term)
                if column is None:
                    column = term_id[term] = len(vocab)
                    vocab.append(term)
                rows.append(row)
                cols.append(column)
        data = np.ones(len(rows), dtype=np.int32)
        added = sparse.coo_matrix((data, (rows, cols)), shape=(len(texts), len(vocab))).tocsr()
        old = self.counts
        old = sparse.csr_matrix(
            (old.data, old.indices, old.indptr), shape=(old.shape[0], len(vocab))
        )
        return TermCounts(vocab, sparse.vstack([old, added], format="csr", dtype=np.int32))

    @staticmethod
    def concatenate(parts: list[TermCounts]) -> TermCounts:
        """The documents of ``parts`` in order, over the union of their vocabularies.

        The largest part keeps its term ids, so that adding a small new segment to a
        big one renumbers only the small one's terms.
        """
        if len(parts) == 1:
            return parts[0]
        largest = max(range(len(parts)), key=lambda i: parts[i].counts.nnz)
        term_id = {term: position for position, term in enumerate(parts[largest].vocab)}
        columns = []
        for number, part in enumerate(parts):
            if number == largest:
                columns.append(part.counts.indices)
                continue
            ids = [term_id.setdefault(term, len(term_id)) for term in part.vocab]
            columns.append(np.asarray(ids, dtype=np.int32)[part.counts.indices])
        blocks = [
            sparse.csr_matrix(
                (part.counts.data, indices, part.counts.indptr),
                shape=(part.counts.shape[0], len(term_id)),
            )
            for part, indices in zip(parts, columns, strict=True)
        ]
        return TermCounts(list(term_id), sparse.vstack(blocks, format="csr", dtype=np.int32))

    def without_unused_terms(self) -> TermCounts:
        """The same counts, minus vocabulary terms no document holds any more."""
        used = np.bincount(self.counts.indices, minlength=self.counts.shape[1]) > 0
        if used.all():
            return self
        keep = np.flatnonzero(used)
        return TermCounts([self.vocab[i] for i in keep], self.counts[:, keep].tocsr())

    def save(self, path: Path) -> None:
        vocab = np.frombuffer("\n".join(self.vocab).encode("utf-8"), dtype=np.uint8)
        c = self.counts
        with open(path, "wb") as handle:  # a handle: np.savez would append ".npz"
            np.savez(
                handle,
                vocab=vocab,
                data=c.data,
                indices=c.indices,
                indptr=c.indptr,
                shape=np.array(c.shape),
            )

    @classmethod
    def load(cls, path: Path) -> TermCounts:
        with np.load(path) as stored:
            text = stored["vocab"].tobytes().decode("utf-8")
            shape = tuple(int(x) for x in stored["shape"])
            counts = sparse.csr_matrix(
                (stored["data"], stored["indices"], stored["indptr"]), shape=shape
            )
        return cls(text.split("\n") if text else [], counts)


class BM25:
    """BM25Okapi scores (k1, b, epsilon as in rank-bm25) from term counts."""

    def __init__(self, terms: TermCounts, *, k1: float = 1.5, b: float = 0.75, epsilon=0.25):
        self.term_id = {term: position for position, term in enumerate(terms.vocab)}
        counts = terms.counts.astype(np.float64)
        n_docs = counts.shape[0]
        lengths = np.asarray(counts.sum(axis=1)).ravel()  # (docs,)
        average_length = lengths.mean() if n_docs else 0.0
        doc_freq = np.bincount(counts.indices, minlength=counts.shape[1]).astype(np.float64)
        idf = np.log(n_docs - doc_freq + 0.5) - np.log(doc_freq + 0.5)
        if idf.size:  # BM25Okapi's floor for terms in over half the documents
            idf[idf < 0] = epsilon * idf[doc_freq > 0].mean()
        norm = k1 * (1 - b + b * lengths / average_length) if n_docs else lengths
        tf = counts.data
        row_of_entry = np.repeat(np.arange(n_docs), np.diff(counts.indptr))
        weights = idf[counts.indices] * tf * (k1 + 1) / (tf + norm[row_of_entry])
        weights_by_term = sparse.csr_matrix(
            (weights, counts.indices, counts.indptr), shape=counts.shape
        ).tocsc()  # (docs, terms): a query reads only the columns of its terms
        self._postings = (weights_by_term.indptr, weights_by_term.indices, weights_by_term.data)
        self.n_docs = n_docs

    def scores(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """``(docs, scores)`` of the documents holding at least one query term.

        A repeated query term counts as often as it appears, as in rank-bm25. The
        cost is the length of the query terms' posting lists, not the corpus size.
        """
        ids = [self.term_id[term] for term in tokenize(query) if term in self.term_id]
        if not ids:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        indptr, rows, weights = self._postings
        scores = np.zeros(self.n_docs)
        matched = np.zeros(self.n_docs, dtype=bool)
        for term, repeats in zip(*np.unique(ids, return_counts=True), strict=True):
            docs = rows[indptr[term] : indptr[term + 1]]  # distinct within one term
            scores[docs] += repeats * weights[indptr[term] : indptr[term + 1]]
            matched[docs] = True
        docs = np.flatnonzero(matched)
        return docs, scores[docs]

    def top(self, query: str, k: int) -> list[tuple[int, float]]:
        """The ``k`` best ``(doc, score)``, ties broken by document order."""
        docs, scores = self.scores(query)
        if len(docs) > k:
            keep = np.argpartition(-scores, k - 1)[:k]
            threshold = scores[keep].min()
            keep = np.flatnonzero(scores >= threshold)  # every doc tied at the cut
            docs, scores = docs[keep], scores[keep]
        order = np.lexsort((docs, -scores))[:k]
        return [(int(docs[i]), float(scores[i])) for i in order]
