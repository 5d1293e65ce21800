#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer-sp/cases.json: the ids Python's sentencepiece gives (BOS first)
for texts over each committed tokenizer.model, the independent reference of
`the_committed_models_encode_as_python_sentencepiece_does` (src/model/sentencepiece.rs).
Needs `pip install sentencepiece` (0.2.x); run from the repository root. The texts hold no special
literals such as "</s>": transformers splits those out before sentencepiece, and the lab follows
transformers, so a raw sentencepiece id list would not be the reference there."""
import json
import random

import sentencepiece as spm

DIR = "tests/fixtures/tokenizer-sp"


def texts_tiny(rng):
    fixed = [
        "Tell me a story",
        "USER: Tell me a story ASSISTANT:",
        "A chat between a curious user and an artificial intelligence assistant.",
        "  the chat  ",
        "Tellme storystory",
        "a\nb\tc",
        "",
        " ",
        "héllo wörld 日本語 🙂",
        "ASSISTANTUSER",
    ]
    words = ["Tell", "me", "a", "story", "USER", "ASSISTANT", "the", "chat", "x", "é", ":", "\n", "  "]
    rand = ["".join(rng.choice(words) + rng.choice(["", " "]) for _ in range(rng.randint(1, 8))) for _ in range(60)]
    return fixed + rand


def texts_ties(rng):
    fixed = ["aba", "bab", "abab", "ababab", "babab", "abcab", "cabab", "a ba", " ab ab", "bcabca", "aaa", "c"]
    rand = ["".join(rng.choice(["a", "b", "c", "a", "b", " "]) for _ in range(rng.randint(1, 14))) for _ in range(120)]
    return fixed + rand


def main():
    rng = random.Random(20261129)
    out = {"generator": f"scripts/make-sp-cases.py, sentencepiece {spm.__version__}"}
    for file, texts in [("tokenizer.model", texts_tiny(rng)), ("ties.model", texts_ties(rng))]:
        sp = spm.SentencePieceProcessor(model_file=f"{DIR}/{file}")
        seen, cases = set(), []
        for t in texts:
            if t in seen:
                continue
            seen.add(t)
            ids = [sp.bos_id()] + sp.encode(t)
            assert sp.decode(ids[1:]) == t, (file, t)
            cases.append({"text": t, "ids": ids})
        out[file] = cases
    with open(f"{DIR}/cases.json", "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
