"""Member and non-member texts for membership-inference runs on the embedded model.

Members: public-domain texts a small base model has seen many times (the US Constitution's
preamble and Psalm 23 are reproduced verbatim by the embedded model under greedy decoding);
non-members: the same texts with their words shuffled (seeded), so that both sets have the same
words, lengths and zlib-compressible vocabulary and differ only in order.
"""
from __future__ import annotations

import json
import random

from tests.sampler_helpers import DOCS

MEMBERS = [d for d in DOCS if len(d) > 100] + [
    "The Lord is my shepherd; I shall not want. He maketh me to lie down in green pastures: he leadeth me beside "
    "the still waters. He restoreth my soul: he leadeth me in the paths of righteousness for his name's sake.",
    "Our Father, which art in heaven, Hallowed be thy Name. Thy Kingdom come. Thy will be done in earth, As it is "
    "in heaven. Give us this day our daily bread. And forgive us our trespasses, As we forgive them that trespass "
    "against us.",
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness "
    "was upon the face of the deep. And the Spirit of God moved upon the face of the waters. And God said, Let "
    "there be light: and there was light.",
    "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer the slings and arrows of "
    "outrageous fortune, or to take arms against a sea of troubles and by opposing end them.",
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate: Rough winds do shake the "
    "darling buds of May, And summer's lease hath all too short a date.",
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated "
    "documentation files (the \"Software\"), to deal in the Software without restriction, including without "
    "limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of "
    "the Software.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore "
    "magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea "
    "commodo consequat.",
    "All human beings are born free and equal in dignity and rights. They are endowed with reason and conscience "
    "and should act towards one another in a spirit of brotherhood.",
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, and "
    "nothing particular to interest me on shore, I thought I would sail about a little and see the watery part "
    "of the world.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
    "of a wife.",
]


def shuffled(text: str, seed: int) -> str:
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


NONMEMBERS = [shuffled(t, i) for i, t in enumerate(MEMBERS)]


def write_jsonl(path, texts) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    return str(path)
