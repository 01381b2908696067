#!/usr/bin/env python3
"""make_data_fixtures.py: the fixtures tests/test_data.c checks weft's data
against, made ONCE with Megatron-Core's own code (pip install megatron-core
numpy; torch, tokenizers and transformers for the BPE) and committed:

  tests/data/docs.jsonl                     100 short documents, {"text": ...}
  tests/data/megatron_text_document.{bin,idx}
      Megatron-Core's IndexedDatasetBuilder over those documents, tokenized
      byte-level (ids 0..255, EOD 256, vocab 257: uint16) with the EOD
      appended, as preprocess_data.py --append-eod writes them: weft data
      must write the same bytes.
  tests/data/samples.txt
      GPTDataset's samples (seq_length + 1 tokens each) over those files,
      built by BlendedMegatronDatasetBuilder for a seed, a sequence length, a
      split and the sample counts asked of train and valid:
        config SEED SEQ SPLIT TRAIN_SAMPLES VALID_SAMPLES
        train I: ids...          (the first samples of the train split)
        valid I: ids...
  tests/data/bpe_vocab.json, bpe_merges.txt
      a small byte-level BPE trained with the tokenizers package
  tests/data/bpe_texts.jsonl, bpe_ids.txt
      texts (unicode, whitespace runs, newlines, contractions) and their ids,
      a line each: OpenAI's GPT-2 encoder.py (the `regex` pattern, BPE by
      rank), which transformers' GPT2Tokenizer (tokenizers-backed in
      transformers 5, where the slow one is gone) must agree with.

Run from the repository root: python3 tools/make_data_fixtures.py
"""
import json
import os
import random
import sys
import tempfile

import numpy

OUT = "tests/data"


def documents():
    rng = random.Random(13)
    words = ("the a of to in weft megatron token sample epoch shuffle data rank pipeline tensor "
             "gradient loss model layer attention caf\u00e9 na\u00efve \u00fcber \u65e5\u672c \U0001F600").split()
    docs = []
    for i in range(100):
        n = rng.randint(0, 9) if i % 17 else 0  # some empty documents: no sequence, a boundary still
        docs.append(" ".join(rng.choice(words) for _ in range(n)))
    return docs


def byte_ids(text):
    return list(text.encode("utf-8"))


def build_indexed(docs, prefix):
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=DType.optimal_dtype(257))
    for text in docs:  # preprocess_data.py's encode(), one sentence a document, --append-eod
        ids = byte_ids(text)
        lens = [len(ids)] if ids else []
        if ids:
            ids.append(256)
            lens[-1] += 1
        builder.add_document(numpy.array(ids, dtype=numpy.int64), lens)
    builder.finalize(prefix + ".idx")


class Tok:  # what GPTDatasetConfig asks of a tokenizer
    vocab_size = 257
    eod = 256
    pad = -1
    unique_identifiers = {"class": "byte-level"}


def samples(prefix, seed, seq, split, n_train, n_valid, show, out):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    with tempfile.TemporaryDirectory() as cache:
        config = GPTDatasetConfig(random_seed=seed, sequence_length=seq, blend=([prefix], None), split=split,
                                  path_to_cache=cache, tokenizer=Tok(), reset_position_ids=False,
                                  reset_attention_mask=False, eod_mask_loss=False)
        train, valid, _ = BlendedMegatronDatasetBuilder(GPTDataset, [n_train, n_valid, None], lambda: True, config).build()
        out.write(f"config {seed} {seq} {split} {n_train} {n_valid}\n")
        for name, ds in (("train", train), ("valid", valid)):
            for i in range(show):
                text = ds._query_document_sample_shuffle_indices(i)[0]
                assert len(text) == seq + 1
                out.write(f"{name} {i}: " + " ".join(str(int(t)) for t in text) + "\n")


BPE_TEXTS = [
    "Hello world! It's a test, isn't it? We'll see: they're here, you've won, I'm done, he'd go.",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00dcber Stra\u00dfe   spaced    out\tand\ttabbed",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u4e2d\u6587 \ud55c\uad6d\uc5b4 emoji \U0001F600\U0001F680 mixed\u00a0nbsp",
    "line one\nline two\n\n  indented line\r\nwindows line   \n",
    "numbers 12345 and 3.14159, version v2.0-beta; symbols #$%&*()[]{} end",
    "   leading and trailing spaces   ",
    "ALL CAPS SHOUTING'S FUN 'S 'T 'RE odd 'quotes' and \"double\"",
    "\u0391\u03b8\u03ae\u03bd\u03b1 \u041c\u043e\u0441\u043a\u0432\u0430 \u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u0939\u093f\u0928\u094d\u0926\u0940 \u2160\u2161 \u00bd \u0663",
]


def byte_to_unicode():  # GPT-2's: printable bytes stand for themselves, the others from U+0100 on
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b), cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def openai_encode(text, vocab, ranks):  # openai/gpt-2 src/encoder.py
    import regex
    pat = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    b2u, ids = byte_to_unicode(), []
    for piece in pat.findall(text):
        word = tuple(b2u[b] for b in piece.encode("utf-8"))
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if best not in ranks:
                break
            out, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = tuple(out)
        ids.extend(vocab[w] for w in word)
    return ids


def bpe():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Tokenizer
    corpus = open("/usr/share/common-licenses/GPL-3", encoding="utf-8").read() + "\n".join(BPE_TEXTS) * 3
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator([corpus], vocab_size=600, min_frequency=2, special_tokens=["<|endoftext|>"])
    with tempfile.TemporaryDirectory() as d:
        tok.save_model(d)
        vocab = json.load(open(os.path.join(d, "vocab.json"), encoding="utf-8"))
        merges = open(os.path.join(d, "merges.txt"), encoding="utf-8").read()
    with open(f"{OUT}/bpe_vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(f"{OUT}/bpe_merges.txt", "w", encoding="utf-8") as f:
        f.write(merges)
    hf = GPT2Tokenizer(f"{OUT}/bpe_vocab.json", f"{OUT}/bpe_merges.txt")
    ranks = {tuple(line.split()): i for i, line in enumerate(merges.splitlines()[1:]) if line}
    with open(f"{OUT}/bpe_texts.jsonl", "w", encoding="utf-8") as f, open(f"{OUT}/bpe_ids.txt", "w") as g:
        for t in BPE_TEXTS:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
            # Megatron's _GPT2BPETokenizer.tokenize is the slow tokenizer's encode (text only: no special tokens)
            ids = openai_encode(t, vocab, ranks)
            assert ids == hf.encode(t), (t, ids, hf.encode(t))
            g.write(" ".join(str(i) for i in ids) + "\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    docs = documents()
    with open(f"{OUT}/docs.jsonl", "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    prefix = f"{OUT}/megatron_text_document"
    build_indexed(docs, prefix)
    with open(f"{OUT}/samples.txt", "w") as out:
        # several epochs of train (a separate, unshuffled-with-the-rest final epoch) and of valid
        samples(prefix, 1234, 16, "949,50,1", 300, 40, 24, out)
        # one epoch, another seed and split
        samples(prefix, 7, 8, "80,15,5", 100, 20, 16, out)
    bpe()


if __name__ == "__main__":
    sys.exit(main())
