"""Index building and search over hand-made 4-d vectors, BM25 against rank-bm25,
reciprocal rank fusion, incremental rebuilds and bad files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from rag_support import KeywordEmbedder, write_docs

from tutorlm.rag import build_index, fuse, load_index
from tutorlm.rag.bm25 import BM25, TermCounts, tokenize
from tutorlm.rag.config import IndexSettings
from tutorlm.rag.store import RagIndexError, load_live

DOCS = {
    "a.txt": "alpha alpha beta",
    "b.txt": "beta gamma",
    "c.txt": "alpha delta delta delta",
    "d.txt": "gamma",
    "e.txt": "zeta eta",
    "f.txt": "theta iota",
}
SETTINGS = IndexSettings(chunk_tokens=16, chunk_overlap=2)


@pytest.fixture
def docs(tmp_path):
    return write_docs(tmp_path, DOCS)


@pytest.fixture
def index(docs, tmp_path):
    build_index([docs], tmp_path / "index", settings=SETTINGS, embedder=KeywordEmbedder())
    return load_index(tmp_path / "index", embedder=KeywordEmbedder())


def ids(hits):
    return [hit.chunk.id for hit in hits]


def test_dense_search_ranks_hand_made_vectors_by_cosine(index):
    hits = index.search("beta gamma", k=3, mode="dense")
    assert ids(hits) == ["docs/b.txt#0", "docs/d.txt#0", "docs/a.txt#0"]
    assert [h.score for h in hits] == pytest.approx([1.0, 1 / math.sqrt(2), 1 / math.sqrt(10)])
    hits = index.search("alpha", k=2, mode="dense")
    assert ids(hits) == ["docs/a.txt#0", "docs/c.txt#0"]
    assert [h.score for h in hits] == pytest.approx([2 / math.sqrt(5), 1 / math.sqrt(10)])
    assert hits[0].chunk.text == "alpha alpha beta"
    assert len(index) == len(index.chunks) == 6 and index.chunks[-1].id == "docs/f.txt#0"
    with pytest.raises(IndexError):
        index.chunks[6]
    assert (hits[0].chunk.source, hits[0].chunk.page, hits[0].chunk.heading) == (
        "docs/a.txt",
        None,
        "",
    )


def test_bm25_scores_equal_rank_bm25_okapi(index):
    from rank_bm25 import BM25Okapi

    reference = BM25Okapi([tokenize(text) for text in DOCS.values()])
    for query in ("alpha", "beta gamma", "delta alpha delta", "gamma zeta", "unknown"):
        expected = reference.get_scores(tokenize(query))
        docs, scores = index.bm25.scores(query)
        got = np.zeros(len(DOCS))
        got[docs] = scores
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    hits = index.search("alpha", k=5, mode="bm25")
    assert ids(hits) == ["docs/a.txt#0", "docs/c.txt#0"]  # only documents holding a query word
    assert index.search("unknown words", mode="bm25") == []


def test_bm25_matches_rank_bm25_on_a_larger_corpus_with_common_words():
    from rank_bm25 import BM25Okapi

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 30), p=None)) for _ in range(200)]
    texts += ["w0 w0 w0 w1"] * 150  # terms in over half the documents get the idf floor
    ours = BM25(TermCounts.from_texts(texts))
    reference = BM25Okapi([tokenize(text) for text in texts])
    for query in ("w0", "w1 w2 w2", "w39 w7 w0"):
        docs, scores = ours.scores(query)
        got = np.zeros(len(texts))
        got[docs] = scores
        np.testing.assert_allclose(got, reference.get_scores(tokenize(query)), rtol=1e-10)


def test_term_counts_round_trip_and_drop_unused_terms(tmp_path):
    counts = TermCounts.from_texts(["alpha beta alpha", "gamma", "beta the of"])
    assert counts.vocab == ["alpha", "beta", "gamma"]  # stopwords are not terms
    assert counts.counts.toarray().tolist() == [[2, 1, 0], [0, 0, 1], [0, 1, 0]]
    counts.save(tmp_path / "c.npz")
    loaded = TermCounts.load(tmp_path / "c.npz")
    assert loaded.vocab == counts.vocab
    assert (loaded.counts != counts.counts).nnz == 0
    picked = TermCounts(counts.vocab, counts.counts[[2, 1]]).without_unused_terms()
    assert picked.vocab == ["beta", "gamma"]
    assert picked.counts.toarray().tolist() == [[1, 0], [0, 1]]


def test_reciprocal_rank_fusion_sums_one_over_sixty_plus_rank():
    dense = [(1, 0.9), (2, 0.8), (3, 0.7)]
    words = [(3, 5.0), (1, 4.0), (4, 1.0)]
    fused = fuse([dense, words], k=3)
    assert [row for row, _ in fused] == [1, 3, 2]
    assert [score for _, score in fused] == pytest.approx(
        [1 / 61 + 1 / 62, 1 / 63 + 1 / 61, 1 / 62]
    )


def test_hybrid_search_fuses_dense_and_bm25(index):
    hits = index.search("alpha", k=2, mode="hybrid")
    assert ids(hits) == ["docs/a.txt#0", "docs/c.txt#0"]
    assert [h.score for h in hits] == pytest.approx([2 / 61, 2 / 62])
    assert len(index.search("alpha", k=50)) == len(DOCS)  # never more hits than chunks


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_searching_many_queries_at_once_finds_what_one_at_a_time_finds(index, mode):
    queries = ["apple", "banana", "cherry pie", "apple"]
    many = index.search_many(queries, k=2, mode=mode)
    alone = [index.search(query, k=2, mode=mode) for query in queries]
    assert [[(ids([h])[0], h.score) for h in hits] for hits in many] == [
        [(ids([h])[0], h.score) for h in hits] for hits in alone
    ]
    assert index.search_many([], k=2, mode=mode) == []


def test_search_rejects_bad_arguments(index):
    with pytest.raises(ValueError, match="mode must be one of"):
        index.search("alpha", mode="sparse")
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.search("alpha", k=0)

    class Wide(KeywordEmbedder):
        dim = 5

        def embed(self, texts):
            return np.ones((len(texts), 5), dtype=np.float32) / math.sqrt(5)

    index._embedder = Wide()
    with pytest.raises(ValueError, match="5-d vectors, the index holds 4-d"):
        index.search("alpha", mode="dense")


def _by_id(live):
    """Each chunk with its vector and BM25 term counts, keyed by chunk id."""
    counts = live.terms.counts.tocsr()
    return {
        chunk.id: (
            chunk,
            live.vectors[row].tolist(),
            {
                live.terms.vocab[j]: int(v)
                for j, v in zip(counts[row].indices, counts[row].data, strict=True)
            },
        )
        for row, chunk in enumerate(live.chunks)
    }


def test_incremental_rebuild_reembeds_only_changed_files_and_equals_a_fresh_build(docs, tmp_path):
    out = tmp_path / "index"
    first = KeywordEmbedder()
    build_index([docs], out, settings=SETTINGS, embedder=first)
    assert len(first.embedded) == len(DOCS)

    again = KeywordEmbedder()
    report = build_index([docs], out, settings=SETTINGS, embedder=again)
    assert again.embedded == [] and report.embedded_chunks == 0
    assert report.unchanged == sorted(f"docs/{n}" for n in DOCS)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "seg-0001"]

    (docs / "a.txt").write_text(DOCS["a.txt"] + "\n")  # same bytes, new modification time
    report = build_index([docs], out, settings=SETTINGS, embedder=again)
    assert again.embedded == [] and "docs/a.txt" in report.unchanged

    (docs / "b.txt").write_text("beta beta gamma delta\n")
    (docs / "c.txt").unlink()
    (docs / "g.txt").write_text("delta gamma\n")
    second = KeywordEmbedder()
    report = build_index([docs], out, settings=SETTINGS, embedder=second)
    assert (report.added, report.changed, report.removed) == (
        ["docs/g.txt"],
        ["docs/b.txt"],
        ["docs/c.txt"],
    )
    assert second.embedded == ["beta beta gamma delta", "delta gamma"]
    assert report.n_chunks == len(DOCS) and not report.compacted
    # the two (re-)embedded files went into a new segment; the old one keeps 4 live rows
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "seg-0001", "seg-0002"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["last_build"]["embedded_chunks"] == 2
    assert manifest["segment_rows"] == {"seg-0001": 6, "seg-0002": 2}
    assert (
        manifest["files"]["docs/b.txt"]["segment"],
        manifest["files"]["docs/b.txt"]["rows"],
    ) == (
        "seg-0002",
        [0, 1],
    )
    assert sorted(manifest["files"]) == [
        "docs/a.txt", "docs/b.txt", "docs/d.txt", "docs/e.txt", "docs/f.txt", "docs/g.txt"
    ]  # fmt: skip

    build_index([docs], tmp_path / "fresh", settings=SETTINGS, embedder=KeywordEmbedder())
    assert _by_id(load_live(out)) == _by_id(load_live(tmp_path / "fresh"))
    searched = load_index(out, embedder=KeywordEmbedder()).search("delta gamma", k=3)
    assert ids(searched)[0] == "docs/g.txt#0"

    # changing 3 of the 4 files left in seg-0001 leaves it mostly dead: compacted into one
    for name in ("a.txt", "d.txt", "e.txt"):
        (docs / name).write_text(DOCS[name] + " delta\n")
    report = build_index([docs], out, settings=SETTINGS, embedder=KeywordEmbedder())
    assert report.compacted and report.embedded_chunks == 3
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "seg-0003"]
    build_index([docs], tmp_path / "fresh2", settings=SETTINGS, embedder=KeywordEmbedder())
    assert _by_id(load_live(out)) == _by_id(load_live(tmp_path / "fresh2"))
    # once compacted, even the order is a fresh build's: files sorted by name
    assert [c.id for c in load_live(out).chunks] == [
        c.id for c in load_live(tmp_path / "fresh2").chunks
    ]


def test_changed_settings_rebuild_everything(docs, tmp_path):
    out = tmp_path / "index"
    build_index([docs], out, settings=SETTINGS, embedder=KeywordEmbedder())
    embedder = KeywordEmbedder()
    changed = IndexSettings(chunk_tokens=32, chunk_overlap=2)
    report = build_index([docs], out, settings=changed, embedder=embedder)
    assert report.full_rebuild == "settings or embedding model changed"
    assert len(embedder.embedded) == len(DOCS) and report.unchanged == []


def test_bad_files_are_skipped_and_listed_in_the_manifest(docs, tmp_path):
    (docs / "empty.md").write_text("")
    (docs / "blob.txt").write_bytes(b"\x00\x01\x02binary")
    (docs / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    out = tmp_path / "index"
    report = build_index([docs], out, settings=SETTINGS, embedder=KeywordEmbedder())
    expected = [
        ("docs/blob.txt", "binary file (NUL bytes)"),
        ("docs/empty.md", "empty file"),
        ("docs/photo.jpg", "unsupported file type '.jpg'"),
    ]
    assert report.skipped == expected
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"] == [{"source": s, "reason": r} for s, r in expected]
    assert report.n_chunks == len(DOCS)


def test_nothing_to_index_and_missing_index_are_clear_errors(tmp_path):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "empty.md").write_text("  \n")
    with pytest.raises(RagIndexError, match="nothing to index .*only/empty.md: empty file"):
        build_index([tmp_path / "only"], tmp_path / "out", embedder=KeywordEmbedder())
    with pytest.raises(RagIndexError, match="not a RAG index .no manifest.json.; build one"):
        load_index(tmp_path / "out")


def test_other_faiss_types_get_one_index_over_all_rows_and_bad_ones_fail_clearly(docs, tmp_path):
    hnsw = IndexSettings(chunk_tokens=16, chunk_overlap=2, index_factory="HNSW8,Flat")
    build_index([docs], tmp_path / "hnsw", settings=hnsw, embedder=KeywordEmbedder())
    (docs / "b.txt").write_text("beta gamma gamma\n")
    build_index([docs], tmp_path / "hnsw", settings=hnsw, embedder=KeywordEmbedder())
    names = sorted(p.name for p in (tmp_path / "hnsw").iterdir())
    assert names == ["dense-0002.faiss", "manifest.json", "seg-0001", "seg-0002"]
    assert type(load_live(tmp_path / "hnsw").dense).__name__ == "IndexHNSWFlat"
    assert ids(load_index(tmp_path / "hnsw", embedder=KeywordEmbedder()).search(
        "beta gamma", k=2, mode="dense"
    )) == ["docs/b.txt#0", "docs/d.txt#0"]  # fmt: skip
    ivf = IndexSettings(chunk_tokens=16, chunk_overlap=2, index_factory="IVF64,Flat")
    with pytest.raises(RagIndexError, match="'IVF64,Flat' cannot be built over 6 vectors"):
        build_index([docs], tmp_path / "ivf", settings=ivf, embedder=KeywordEmbedder())


def test_rag_recipe_section_validates_and_places_the_index(tmp_path):
    from pydantic import ValidationError

    from tutorlm.rag.config import RagConfig

    config = RagConfig(k=5, chunk_tokens=128)
    assert config.index_path(tmp_path / "runs" / "demo") == tmp_path / "runs/demo/rag/index"
    assert RagConfig(index_dir="x/idx").index_path("runs/demo").as_posix() == "x/idx"
    assert config.index_settings() == IndexSettings(chunk_tokens=128)
    with pytest.raises(ValidationError, match="chunk_overlap .32. must be smaller"):
        RagConfig(chunk_tokens=32, chunk_overlap=32)
    with pytest.raises(ValidationError, match="ablation_ks.0"):
        RagConfig(ablation_ks=[0, 3])
    with pytest.raises(ValidationError, match="mode"):
        RagConfig(mode="sparse")
