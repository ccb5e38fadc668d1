"""Whose rows does exact (n,p) score? The measurements behind the labels of
``extractor/attacks/discoverable_np.py`` (README, "Exact (n,p)-extraction"). Not a speed benchmark.

    PYTHONPATH=. python benchmarks/np_rows.py llama                 # the embedded model (llama.cpp in process)
    PYTHONPATH=. /work/vllm-venv/bin/python benchmarks/np_rows.py vllm [bfloat16|float32]

``llama``: six public-domain texts evaluated in five batch splits (one batch, two halves, one token at a
time, 16 then one at a time, 8 then the rest); counts the positions whose argmax differs between splits
(greedy p_z read from a scorer is then not the sampler's). ``vllm``: SmolLM2-135M (the vLLM tier's
model) in the given dtype: one prefix + target scored alone and inside a batch of other prompts, and
against the logprobs vLLM reports while generating the same tokens (a lone greedy request; n = 4 samples).
"""
from __future__ import annotations

import sys

import numpy as np

TEXTS = [
    "We the People of the United States, in Order to form a more perfect Union, establish Justice, insure domestic "
    "Tranquility, provide for the common defence, promote the general Welfare, and secure the Blessings of Liberty to "
    "ourselves and our Posterity, do ordain and establish this Constitution.",
    "The Lord is my shepherd; I shall not want. He maketh me to lie down in green pastures: he leadeth me beside the "
    "still waters. He restoreth my soul: he leadeth me in the paths of righteousness for his name's sake.",
    "Four score and seven years ago our fathers brought forth on this continent, a new nation, conceived in Liberty, "
    "and dedicated to the proposition that all men are created equal. Now we are engaged in a great civil war.",
    "It was a bright cold day in April, and the clocks were striking thirteen. Winston Smith, his chin nuzzled into "
    "his breast in an effort to escape the vile wind, slipped quickly through the glass doors of Victory Mansions.",
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, and "
    "nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of "
    "the world.",
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness "
    "was upon the face of the deep. And the Spirit of God moved upon the face of the waters.",
]


def llama() -> None:
    from extractor.backends.llama_inprocess import LlamaScorer
    from extractor.serving.embedded import default_model_path

    sc = LlamaScorer(default_model_path())
    llm = sc._llm

    def rows(ids, split):
        llm.reset()
        pos = 0
        for s in split:
            llm.eval(ids[pos:pos + s])
            pos += s
        return np.array(llm.scores[:len(ids)], dtype=np.float64)

    flips = total = 0
    for t in TEXTS:
        ids = [llm.token_bos()] + llm.tokenize(t.encode(), add_bos=False)
        n = len(ids)
        splits = {"one": [n], "half": [n // 2, n - n // 2], "tok": [1] * n, "p16": [16] + [1] * (n - 16),
                  "p8": [8, n - 8]}
        am = {k: rows(ids, v).argmax(axis=1) for k, v in splits.items()}
        for i in range(n):
            total += 1
            if len({int(a[i]) for a in am.values()}) > 1:
                flips += 1
                print(f"  {t[:24]!r} position {i}: argmax {({k: int(a[i]) for k, a in am.items()})}")
    print(f"positions {total}, argmax differs between splits at {flips} ({100 * flips / total:.1f}%)")


def vllm(dtype: str) -> None:
    from extractor.backends import make_backend
    from extractor.backends.vllm_offline import shutdown_engines
    from extractor.serving.serve import smollm2_hf_dir

    be = make_backend("vllm", model=str(smollm2_hf_dir()),
                      engine_args={"max_model_len": 512, "max_logprobs": -1, "dtype": dtype})
    be.probe()
    prompt = "We the People of the United States, in Order to form a more perfect"
    target = be.complete(prompt, {"temperature": 0.0, "max_tokens": 12}).choices[0].text
    alone = be.score([target], contexts=[prompt], full=True)[0]
    others = ["The quick brown fox jumps over the lazy dog and then", "In the beginning God created the heaven",
              "import numpy as np\n"]
    inb = be.score(others[:2] + [target] + others[2:], contexts=["Once upon a time", "", prompt, "# a\n"], full=True)[2]
    print("scored alone vs in a batch: max |row difference|",
          float(np.max(np.abs(np.nan_to_num(alone.full_logprobs - inb.full_logprobs)))))
    be.want_logprobs = True
    g = be.complete(prompt, {"temperature": 0.0, "max_tokens": 12}).choices[0]
    print("greedy generation alone vs scored: max |logprob difference|",
          max(abs(a - b) for a, b in zip(g.token_logprobs, alone.logprobs)))
    worst = 0.0
    for c in be.complete(prompt, {"temperature": 1.0, "top_k": 40, "max_tokens": 6}, n=4, seed=7).choices:
        s = be.score([c.text], contexts=[prompt])[0]
        worst = max([worst] + [abs(a - b) for a, b in zip(c.token_logprobs, s.logprobs)])
    print("4 samples in one request vs scored: max |logprob difference|", worst)
    shutdown_engines()


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "llama"
    llama() if what == "llama" else vllm(sys.argv[2] if len(sys.argv) > 2 else "bfloat16")
