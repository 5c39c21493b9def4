"""Benchmark: Self-Instruct's ROUGE-L dedup loop, SimilarityIndex vs a plain rouge_score loop.

Run by hand from the repository root::

    python benchmarks/dedup.py                      # sizes 2,000 and 10,000
    python benchmarks/dedup.py --sizes 500 \
        --seed-tasks ../shared/data/self_instruct_seed_tasks.jsonl

For each size N it builds N instruction-like strings deterministically (seeded synthetic sentences,
about half of them near-duplicates of earlier ones, so both keep and drop decisions are common),
then runs the Self-Instruct filtering loop -- for each candidate in order, drop it if its ROUGE-L F
(rouge_score, no stemmer) against any pool item is > 0.7, else add it to the pool -- with

(a) ``refine_af.similarity.SimilarityIndex``, and
(b) a plain loop calling ``RougeScorer(["rougeL"]).score(candidate, item)`` for every pool item
    (stopping at the first item over the threshold, as the fastest honest plain loop would).

The plain loop is quadratic (~0.2 ms per pair on a slow CPU), so it is run in full only for
N <= --full-plain-max. For larger N it is timed on a deterministic systematic sample (every k-th
candidate, each scored against the exact pool it faces in the sequential loop, i.e. the items kept
before it) and the full time is extrapolated as (sampled time) * N / (sample size). In that case
every one of the N decisions is still checked against rouge_score (--verify, default on): each
candidate is scored with ``RougeScorer.score`` against each pool item that a deliberately simple,
independent bound (2 * min(bag-of-words overlap) / (m + n), computed with collections.Counter) does
not rule out. The script prints exactly which of these was done.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

from rouge_score import rouge_scorer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from refine_af.similarity import SimilarityIndex

THRESHOLD = 0.7


def _words(text: str) -> list[str]:
    return text.split()


VERBS = _words(
    "write explain describe list give summarize generate classify translate suggest create "
    "compare identify find rewrite tell make convert answer design outline choose recommend"
)
WORDS = _words(
    "the a of to and in for is on that with as it be this are from or by an at your about "
    "what how which story poem email letter list sentence paragraph article question answer "
    "short long simple funny formal friendly detailed brief polite clear new best good main "
    "following given two three five ten few some each every different similar important common "
    "example examples reasons ways steps tips ideas words names things people places days "
    "student teacher friend customer manager child parent doctor company team city country "
    "book movie song game food recipe meal breakfast dinner trip travel vacation weekend "
    "weather health exercise sleep work job interview meeting project plan budget money price "
    "computer phone software code data report review product service order problem solution "
    "history science math music art sport language english french spanish animal dog cat bird "
    "tree flower ocean river mountain summer winter morning night water energy climate change "
    "benefits risks pros cons difference between explain why when where who whether should "
    "could would might must can will not no yes more most less than very too also only just "
    "into over under after before during without within using based following input output"
)


def _zipf_weights(n: int) -> list[float]:
    # Word frequencies in instructions are Zipf-like: frequent function words, long tail.
    return [1.0 / (rank + 1) ** 0.9 for rank in range(n)]


def _new_sentence(rng: random.Random, weights: list[float]) -> str:
    words = [rng.choice(VERBS), *rng.choices(WORDS, weights=weights, k=rng.randint(5, 24))]
    return " ".join(words).capitalize() + rng.choice([".", ".", "?", ":", ""])


def _mutate(rng: random.Random, text: str, weights: list[float]) -> str:
    """A near-duplicate of ``text``: a few word edits, sometimes only case/punctuation changes."""
    words = text.rstrip(".?:!").split()
    edits = rng.choice([0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 6, 7, 9])
    for _ in range(edits):
        op = rng.random()
        pos = rng.randrange(len(words) + 1)
        if op < 0.35 and words:  # replace
            words[min(pos, len(words) - 1)] = rng.choices(WORDS, weights=weights)[0]
        elif op < 0.65:  # insert
            words.insert(pos, rng.choices(WORDS, weights=weights)[0])
        elif op < 0.85 and len(words) > 1:  # delete
            del words[min(pos, len(words) - 1)]
        elif len(words) > 2:  # swap two neighbours (changes the LCS, not the bag of words)
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
    out = " ".join(words)
    style = rng.random()
    if style < 0.1:
        out = out.upper()
    elif style < 0.2:
        out = out.replace(" ", ", ", 1)
    return out + rng.choice([".", "!", "?", ""])


def make_instructions(n: int, seed: int, seeds: list[str]) -> list[str]:
    """``n`` deterministic candidates: ~half fresh sentences, ~half near-duplicates."""
    rng = random.Random(seed)
    weights = _zipf_weights(len(WORDS))
    out: list[str] = []
    for _ in range(n):
        sources = out + seeds
        if sources and rng.random() < 0.5:
            # Prefer recent items a little (generation batches repeat themselves), any item
            # otherwise, so matches are spread over the whole pool.
            if out and rng.random() < 0.3:
                src = out[rng.randrange(max(0, len(out) - 50), len(out))]
            else:
                src = rng.choice(sources)
            out.append(_mutate(rng, src, weights))
        else:
            out.append(_new_sentence(rng, weights))
    return out


def run_index(seeds: list[str], candidates: list[str]) -> tuple[float, list[bool]]:
    start = time.perf_counter()
    index = SimilarityIndex(threshold=THRESHOLD)
    index.extend(seeds)
    decisions = [index.add_if_novel(text) for text in candidates]
    return time.perf_counter() - start, decisions


def _plain_too_similar(scorer: rouge_scorer.RougeScorer, text: str, pool: list[str]) -> bool:
    # Exactly Self-Instruct's check (new instruction as target), stopping at the first hit.
    return any(scorer.score(text, item)["rougeL"].fmeasure > THRESHOLD for item in pool)


def run_plain_full(seeds: list[str], candidates: list[str]) -> tuple[float, list[bool]]:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    start = time.perf_counter()
    pool = list(seeds)
    decisions = []
    for text in candidates:
        keep = not _plain_too_similar(scorer, text, pool)
        if keep:
            pool.append(text)
        decisions.append(keep)
    return time.perf_counter() - start, decisions


def _pools_before(seeds: list[str], candidates: list[str], decisions: list[bool]) -> list[int]:
    """Pool size faced by each candidate in the sequential loop (pool = seeds + kept so far)."""
    sizes, size = [], len(seeds)
    for keep in decisions:
        sizes.append(size)
        size += keep
    return sizes


def run_plain_sampled(
    seeds: list[str], candidates: list[str], decisions: list[bool], every: int
) -> tuple[float, list[int], list[bool]]:
    """Time the plain loop on every ``every``-th candidate against the pool it would face."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pool = list(seeds) + [t for t, keep in zip(candidates, decisions, strict=True) if keep]
    sizes = _pools_before(seeds, candidates, decisions)
    sample = list(range(every // 2, len(candidates), every))
    start = time.perf_counter()
    sampled = [not _plain_too_similar(scorer, candidates[i], pool[: sizes[i]]) for i in sample]
    return time.perf_counter() - start, sample, sampled


def verify_all(seeds: list[str], candidates: list[str], decisions: list[bool]) -> int:
    """Number of decisions disagreeing with rouge_score (see module docstring for the method)."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    tok = scorer._tokenizer  # rouge_score's own tokenizer, only for the simple independent bound
    pool_texts = list(seeds)
    pool_bags = [Counter(tok.tokenize(t)) for t in seeds]
    pool_lens = [sum(b.values()) for b in pool_bags]
    wrong = 0
    for text, keep in zip(candidates, decisions, strict=True):
        bag = Counter(tok.tokenize(text))
        n = sum(bag.values())
        too_similar = False
        for item, item_bag, m in zip(pool_texts, pool_bags, pool_lens, strict=True):
            if n == 0 or m == 0 or 2 * min(n, m) <= THRESHOLD * (n + m) - 1e-9:
                continue  # F <= 2 min(m, n) / (m + n) <= threshold: cannot be > threshold
            if 2 * sum((bag & item_bag).values()) <= THRESHOLD * (n + m) - 1e-9:
                continue  # LCS <= bag-of-words overlap
            if scorer.score(text, item)["rougeL"].fmeasure > THRESHOLD:
                too_similar = True
                break
        wrong += too_similar == keep  # keep must equal "not too similar"
        # The pool follows the checked decision, so one wrong decision is reported but the
        # remaining checks still test the index's own pool sequence.
        if keep:
            pool_texts.append(text)
            pool_bags.append(bag)
            pool_lens.append(n)
    return wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--seed", type=int, default=0, help="RNG seed for the synthetic data")
    parser.add_argument("--seed-tasks", type=Path, help="self_instruct_seed_tasks.jsonl: seeds")
    parser.add_argument(
        "--full-plain-max",
        type=int,
        default=2000,
        help="run the plain loop in full up to this many candidates",
    )
    parser.add_argument(
        "--sample-every", type=int, default=50, help="plain-loop sample step for larger sizes"
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip checking all decisions when the plain loop is sampled",
    )
    args = parser.parse_args()

    seeds: list[str] = []
    if args.seed_tasks:
        with args.seed_tasks.open() as f:
            seeds = [json.loads(line)["instruction"] for line in f if line.strip()]
    print(f"threshold {THRESHOLD}; pool starts with {len(seeds)} seed instructions")

    for n in args.sizes:
        candidates = make_instructions(n, args.seed, seeds)
        avg_tokens = sum(len(SimilarityIndex().tokenize(t)) for t in candidates) / n
        print(f"\n== N = {n:,} candidates (avg {avg_tokens:.1f} tokens) ==")
        t_index, decisions = run_index(seeds, candidates)
        kept = sum(decisions)
        print(f"SimilarityIndex : {t_index:9.3f} s   kept {kept:,} / dropped {n - kept:,}")
        if n <= args.full_plain_max:
            t_plain, plain = run_plain_full(seeds, candidates)
            agree = sum(a == b for a, b in zip(decisions, plain, strict=True))
            print(f"plain rouge_score: {t_plain:9.3f} s   kept {sum(plain):,}   (full run)")
            print(f"speed-up        : {t_plain / t_index:9.1f}x")
            print(
                f"agreement       : {agree:,} / {n:,} decisions agree "
                f"({'ALL AGREE' if agree == n else 'MISMATCH'})"
            )
        else:
            t_sample, sample, plain = run_plain_sampled(
                seeds, candidates, decisions, args.sample_every
            )
            t_est = t_sample * n / len(sample)
            agree = sum(decisions[i] == keep for i, keep in zip(sample, plain, strict=True))
            print(
                f"plain rouge_score: {t_sample:9.3f} s measured on {len(sample)} sampled "
                f"candidates (every {args.sample_every}th, each vs. its exact pool state)"
            )
            print(
                f"                   -> {t_est:9.1f} s extrapolated for all {n:,} "
                f"(= measured x {n}/{len(sample)})"
            )
            print(
                f"speed-up        : {t_est / t_index:9.1f}x (extrapolated plain / measured index)"
            )
            print(
                f"agreement       : {agree} / {len(sample)} sampled decisions agree "
                f"({'ALL AGREE' if agree == len(sample) else 'MISMATCH'})"
            )
            if not args.no_verify:
                start = time.perf_counter()
                wrong = verify_all(seeds, candidates, decisions)
                print(
                    f"full check      : {n - wrong:,} / {n:,} decisions agree with rouge_score "
                    f"({'ALL AGREE' if wrong == 0 else 'MISMATCH'}; rouge_score.score on "
                    f"pairs not excluded by a simple Counter bound; "
                    f"{time.perf_counter() - start:.0f} s, untimed)"
                )


if __name__ == "__main__":
    main()
