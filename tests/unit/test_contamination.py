"""Word n-gram contamination (13-grams against held-out sets) and children that repeat the prompt's worked example."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sparq_stream.core import Inbound
from sparq_stream.cores.novelty import CONTAMINATION_NGRAM, PROMPT_EXAMPLE, HeldOut, NoveltyConfig, NoveltyCore
from sparq_stream.ids import problem_id
from sparq_stream.messages import Candidate, Dropped, NovelCandidate
from sparq_stream.models.hashing_embedder import HashingEmbedder
from sparq_stream.orchestrator.learning_summary import contamination_counts
from sparq_stream.prompts import MUTATION, load_prompt
from sparq_stream.verify.contamination import NgramIndex, prompt_examples, word_ngrams, words

HELD = ("Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her "
        "friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg.")  # fmt: skip


def test_words_and_ngrams_ignore_case_and_punctuation() -> None:
    assert words("Janet's DUCKS, lay 16-eggs!") == ["janet", "s", "ducks", "lay", "16", "eggs"]
    assert len(word_ngrams(HELD, 13)) == len(words(HELD)) - 12
    assert word_ngrams("What is 2 + 3?", 13) == {("what", "is", "2", "3")}
    assert word_ngrams("  ,. ", 13) == set()


def test_a_shared_13_gram_is_contamination_and_a_12_gram_is_not() -> None:
    index = NgramIndex.from_texts([(HELD, "gsm8k_test.jsonl", "h1")], n=13)
    tokens = words(HELD)
    copied = "Here is a new one: " + " ".join(tokens[10:23]).upper() + "? Find the total."
    found = index.match(copied)
    assert found is not None and (found.source, found.doc_id) == ("gsm8k_test.jsonl", "h1") and len(found.gram.split()) == 13
    assert index.match("Here is a new one: " + " ".join(tokens[10:22]) + " and then something else entirely") is None
    short = NgramIndex.from_texts([("What is 2 + 3?", "math500_test.jsonl", "s")], n=13)
    assert short.match("what is 2+3") is not None and short.match("What is 2 + 4?") is None


def test_the_index_reads_held_out_files(tmp_path: Path) -> None:
    path = tmp_path / "gsm8k_test.jsonl"
    path.write_text(json.dumps({"question": HELD, "answer": "#### 18"}) + "\nnot json\n" + json.dumps({"problem": "x y z"}) + "\n")
    index = NgramIndex.from_files([path])
    assert len(index) == 2 and index.match(HELD[:120] + " more words here").doc_id == problem_id(HELD)


def test_the_mutation_prompts_worked_example_is_found() -> None:
    examples = prompt_examples(load_prompt(MUTATION))
    assert len(examples) == 2 and all(e.startswith("Tom has 3 boxes with 4 apples") for e in examples)


def test_novelty_drops_the_prompts_example_and_held_out_overlap_by_reason(tmp_path: Path) -> None:
    heldout = tmp_path / "gsm8k_test.jsonl"
    heldout.write_text(json.dumps({"question": HELD}) + "\n")
    config = NoveltyConfig(heldout=[str(heldout)], classify=False)
    empty = HeldOut((), (), np.zeros((0, 64), dtype=np.float32))  # no embedding check: the text checks alone
    core = NoveltyCore(config, embedder=HashingEmbedder(dim=64), heldout=empty)
    texts = [
        "Tom has 3 boxes with 4 apples in each box. He eats 2 apples. How many apples are left?",  # the prompt's example
        "Every day Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes cakes.",
        "A farmer has 12 cows and buys 7 more cows at the market. How many cows does the farmer have now?",
    ]
    cands = [Candidate(id=problem_id(t), problem=t, solution="\\boxed{1}", answer="1") for t in texts]
    outs = [o[0].message for o in core.handle_batch([Inbound("candidates", c.id, c, offset=i) for i, c in enumerate(cands)])]
    assert isinstance(outs[0], Dropped) and outs[0].reason == PROMPT_EXAMPLE and outs[0].match_source == "mutation_prompt"
    assert isinstance(outs[1], Dropped) and outs[1].reason == CONTAMINATION_NGRAM and outs[1].match_source == "gsm8k_test.jsonl"
    assert isinstance(outs[2], NovelCandidate)
    m = core.metrics()
    assert m[f"dropped_{PROMPT_EXAMPLE}"] == 1 and m[f"dropped_{CONTAMINATION_NGRAM}"] == 1
    stages = {f"novelty.{k}": v for k, v in m.items()}
    assert contamination_counts(stages) == {"contamination": 0, CONTAMINATION_NGRAM: 1, PROMPT_EXAMPLE: 1}
    off = NoveltyCore(NoveltyConfig(heldout=[str(heldout)], classify=False, ngram_n=0, prompt_example_n=0),
                      embedder=HashingEmbedder(dim=64), heldout=empty)  # fmt: skip
    assert all(isinstance(o[0].message, NovelCandidate) for o in off.handle_batch([Inbound("candidates", c.id, c) for c in cands[:2]]))
