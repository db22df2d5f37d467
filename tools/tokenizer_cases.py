#!/usr/bin/env python3
"""tokenizer_cases.py — expected token ids for tests/test_tokenizer.c, from Hugging Face `tokenizers`.

Builds a deterministic list of test strings (hand-written cases + a seeded generator:
multilingual text, CJK/Arabic/Hindi/Cyrillic, emoji with ZWJ/skin tones/flags, code, runs of
spaces/tabs/newlines, digits, contractions, leading/trailing spaces, special-token strings,
the empty string), encodes each with Hugging Face `tokenizers` and writes one JSON object per
line, {"text": ..., "ids": [...]}, to tests/data/tokenizer/<name>.jsonl:

  llama2          ../shared/data/tokenizers/llama2.vocab_merges.json as llama.cpp's SPM
                  ("llama") tokenizer does it: a BPE model over the vocab/merges with byte
                  fallback, a "▁" prepended to each text segment and spaces replaced by "▁"
                  (llama.cpp: add_space_prefix + llama_escape_whitespace), <unk> <s> </s>
                  matched as special tokens.
  llama3          ../shared/data/tokenizers/llama3.tokenizer.json loaded as is
                  (llama.cpp pre-tokenizer "llama-bpe"), add_special_tokens=False.
  llama3-qwen2    the same vocab/merges with Qwen2's split regex (single digits) and
                  ignore_merges off, as llama.cpp's "qwen2" pre-tokenizer.
  llama3-gpt2     the same with GPT-2's split regex (llama.cpp "gpt-2").
  llama3-default  the same with llama.cpp's "default" chain of four split regexes.

Run from the repository root:  python3 tools/tokenizer_cases.py [--shared DIR] [--out DIR]
The outputs are committed; the C tests run without Python.
"""
import argparse
import json
import os
import random

from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers

SEED = 20241124
N_RANDOM = 1100

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
             r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
            r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
DEFAULT_RES = [r"[\p{P}\$\+<=>\^~\|]+", GPT2_RE, r"\p{N}+", r"[0-9][0-9][0-9]"]

HAND = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\n ", " \t\n ", "a", "A", "1", "'",
    "Hello world", "Hello world!", " Hello world", "Hello world ", "  Hello  world  ",
    "hello\nworld", "hello\n\nworld", "hello \n world", "hello\r\nworld\r\n", "tab\tseparated\tvalues",
    "\t\tindented", "trailing tabs\t\t", "line1\n\n\n\nline5", "    four spaces", "a  b   c    d     e",
    "I'm", "I'M", "don't", "DON'T", "we'll", "WE'LL", "they've", "She'd", "it's", "It'S", "you're",
    "YOU'RE", "'s'", "''", "'ll've", "rock'n'roll", "O'Neill's", "l'homme d'affaires",
    "1", "12", "123", "1234", "12345", "1234567890", "3.14159", "1,000,000", "2024-11-24", "10:45pm",
    "v1.2.3", "0x7fffffff", "1e-10", "+1 (555) 010-9999", "٠١٢٣٤٥٦٧٨٩", "०१२३४५", "１２３４５", "½ ¾ ² ³",
    "The quick brown fox jumps over the lazy dog.",
    "Le cœur a ses raisons que la raison ne connaît point.",
    "Über die Brücke gehen wir morgen früh, sagt Jürgen.",
    "¿Dónde está la biblioteca? ¡Aquí!",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Γαζέες καὶ μυρτιὲς δὲν θὰ βρῶ πιὰ στὸ χρυσαφὶ ξέφωτο.",
    "我能吞下玻璃而不伤身体。", "今日は良い天気ですね。カタカナもひらがなも。", "안녕하세요, 세계!",
    "مرحبا بالعالم، كيف حالك؟", "שלום עולם", "नमस्ते दुनिया, आप कैसे हैं?", "สวัสดีชาวโลก",
    "Tiếng Việt có dấu: Đường phố Hà Nội.", "İstanbul'da ılık bir gün.", "ქართული ენა",
    "e\u0301 vs \u00e9", "n\u0303", "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319algo",
    "😀", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇺🇸🇯🇵", "1️⃣", "❤️", "🧑🏿‍💻 coding", "I ❤️ 🍕!",
    "emoji😀inside", "🤖🤖🤖🤖🤖🤖🤖🤖", "\u200b", "zero\u200bwidth", "a\u00a0b", "a\u3000b", "\u2003em space",
    "def f(x):\n    return x * 2\n", "int main(void) { return 0; }", "for (int i = 0; i < n; i++) {\n\tsum += a[i];\n}",
    '{"key": "value", "n": [1, 2, 3]}', "<div class=\"x\">Hello</div>", "SELECT * FROM t WHERE id = 42;",
    "x=>x**2", "a+=b; c-=d; e*=f", "#include <stdio.h>", "// comment\n/* block */", "$HOME/.config",
    "https://example.com/path?query=1&b=2#frag", "user@example.com", "C:\\Windows\\System32",
    "!!!", "???", "...", "---", "***", "((()))", "[[]]", "{{}}", "@#$%^&*", "~`|\\", "«quoted»", "“smart”",
    "<s>", "</s>", "<unk>", "<s>Hello</s>", "a<s>b</s>c", " <s> ", "<s><s>", "<|begin_of_text|>",
    "<|begin_of_text|>Hello", "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>",
    "<|eot_id|><|eot_id|>", "<|eot_id", "<|", "|>", "<|end_of_text|> tail", "<|reserved_special_token_5|>x",
    "\u2581", "\u2581\u2581", "a\u2581b", "<0x41>", "Ġ", "ĠĠ", "\x01\x02\x7f", "\x1b[31mred\x1b[0m",
]

WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one "
    "had by word but not what all were we when your can said there use an each which she do how their "
    "if will up other about out many then them these so some her would make like him into time has look "
    "two more write go see number no way could people my than first water been call who oil its now find "
    "Hello World Python JavaScript OpenAI GPU CUDA LLaMA tokenizer don't I'm we're they'll it's "
    "Bonjour merci beaucoup très élève naïve façade Straße Mädchen Größe señor niño año "
    "Привет мир спасибо хорошо Москва Україна Ελλάδα καλημέρα "
    "日本語 中文 汉字 漢字 東京 北京 こんにちは ありがとう カタカナ 한국어 서울 "
    "العربية مرحبا شكرا עברית תודה हिन्दी नमस्ते धन्यवाद ภาษาไทย ขอบคุณ "
    "1 2 10 42 100 2024 3.14 1,000 0.5 99% #1 @user foo_bar fooBar foo-bar foo.bar "
).split()

EMOJI = ["😀", "😂", "🥲", "👍", "👍🏻", "👍🏿", "👩‍💻", "👨‍👩‍👧", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🏴‍☠️", "🇫🇷", "🇩🇪", "🇨🇳",
         "❤️", "✨", "🔥", "🚀", "🎉", "🐍", "🦀", "#️⃣", "2️⃣", "☺︎", "🫠", "🧑‍🤝‍🧑"]

RANGES = {
    "latin": [(0x41, 0x5A), (0x61, 0x7A)],
    "latin1": [(0xC0, 0xFF)],
    "latinext": [(0x100, 0x17E), (0x180, 0x24F)],
    "greek": [(0x391, 0x3A1), (0x3A3, 0x3A9), (0x3B1, 0x3C9)],
    "cyrillic": [(0x410, 0x44F), (0x450, 0x45F)],
    "arabic": [(0x621, 0x63A), (0x641, 0x64A), (0x64B, 0x652), (0x660, 0x669)],
    "hebrew": [(0x5D0, 0x5EA)],
    "devanagari": [(0x905, 0x939), (0x93E, 0x94D), (0x966, 0x96F)],
    "thai": [(0xE01, 0xE2E), (0xE31, 0xE3A), (0xE50, 0xE59)],
    "cjk": [(0x4E00, 0x9FA5)],
    "kana": [(0x3041, 0x3096), (0x30A1, 0x30FA)],
    "hangul": [(0xAC00, 0xD7A3)],
    "digits": [(0x30, 0x39), (0xFF10, 0xFF19), (0xB2, 0xB3), (0xBC, 0xBE)],
    "punct": [(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E), (0xA1, 0xBF),
              (0x2010, 0x2027), (0x3001, 0x3003), (0xFF01, 0xFF0F)],
    "symbols": [(0x2190, 0x21FF), (0x2200, 0x22FF), (0x2500, 0x257F), (0x20A0, 0x20BF)],
    "marks": [(0x300, 0x36F)],
    "control": [(0x01, 0x08), (0x0E, 0x1F), (0x7F, 0x7F)],
}
SPACES = [" ", " ", " ", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\t\t", "\u00a0", "\u3000",
          "\u2003", "\x0b", "\x0c", "      "]
SPECIALS = ["<s>", "</s>", "<unk>", "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>",
            "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_0|>", "<|eot_id", "<|"]
CODE = [
    "def main():\n    print('hi')\n    return 0\n",
    "if (x != NULL && x->len > 0) {\n\tfree(x->buf);\n}\n",
    "const f = async (a, b) => { await g(a); return b ?? 0; };",
    "fn main() { let v: Vec<u32> = (0..10).collect(); println!(\"{:?}\", v); }",
    "<html><body><p class='a'>Text &amp; more</p></body></html>",
    "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
    "x = [i**2 for i in range(100) if i % 3 == 0]",
    "    # indented comment\n        deeper = True\n",
]


def rand_char(rng, pool):
    lo, hi = rng.choice(RANGES[pool])
    return chr(rng.randint(lo, hi))


def gen_soup(rng):
    pools = rng.sample(sorted(RANGES), rng.randint(1, 4))
    out = []
    for _ in range(rng.randint(1, 60)):
        r = rng.random()
        if r < 0.15:
            out.append(rng.choice(SPACES))
        elif r < 0.2:
            out.append(rng.choice(EMOJI))
        else:
            out.append(rand_char(rng, rng.choice(pools)))
    return "".join(out)


def gen_words(rng):
    out = []
    for _ in range(rng.randint(1, 25)):
        w = rng.choice(WORDS)
        r = rng.random()
        if r < 0.1:
            w = w.upper()
        elif r < 0.2:
            w = w.capitalize()
        out.append(w)
        r = rng.random()
        if r < 0.6:
            out.append(" ")
        elif r < 0.75:
            out.append(rng.choice([", ", ". ", "! ", "? ", ": ", "; ", " - ", "'s ", "'ll ", "n't "]))
        elif r < 0.85:
            out.append(rng.choice(SPACES))
        elif r < 0.92:
            out.append(rng.choice(EMOJI))
        else:
            out.append("")
    return "".join(out)


def gen_numbers(rng):
    parts = []
    for _ in range(rng.randint(1, 8)):
        n = rng.randint(1, 14)
        digits = "".join(rng.choice("0123456789") for _ in range(n))
        parts.append(rng.choice(["", "$", "-", "+", "#", "v", "x", " "]) + digits +
                     rng.choice(["", ".5", "%", "km", ",", " ", "\n", "th", "_", "e3"]))
    return rng.choice(["", " "]).join(parts)


def gen_space(rng):
    out = []
    for _ in range(rng.randint(1, 12)):
        out.append(rng.choice(SPACES) * rng.randint(1, 4))
        if rng.random() < 0.6:
            out.append(rng.choice(WORDS + ["!", "?", "'", "''", "“", "🙂"]))
    return "".join(out)


def gen_code(rng):
    s = rng.choice(CODE)
    a = rng.randint(0, len(s))
    b = rng.randint(a, len(s))
    return s[a:b] if rng.random() < 0.5 else s


def gen_contraction(rng):
    out = []
    for _ in range(rng.randint(1, 6)):
        w = rng.choice(["I", "you", "we", "they", "it", "she", "Ö", "1", "", " "])
        c = rng.choice(["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'x", "'", "''", "’s"])
        c = "".join(ch.upper() if rng.random() < 0.4 else ch for ch in c)
        out.append(w + c + rng.choice([" ", "", "\n", "s", "?"]))
    return "".join(out)


def gen_special(rng):
    out = []
    for _ in range(rng.randint(1, 5)):
        out.append(rng.choice(SPECIALS) if rng.random() < 0.5 else gen_words(rng)[:20])
        if rng.random() < 0.3:
            out.append(rng.choice(SPACES))
    return "".join(out)


def build_cases():
    rng = random.Random(SEED)
    gens = [gen_soup, gen_words, gen_words, gen_numbers, gen_space, gen_code, gen_contraction,
            gen_special]
    cases = list(HAND)
    for _ in range(N_RANDOM):
        s = rng.choice(gens)(rng)
        r = rng.random()
        if r < 0.1:
            s = " " + s
        elif r < 0.2:
            s = s + " "
        elif r < 0.25:
            s = "  " + s + "\n"
        cases.append(s)
    # one long mixed text (all the above joined), the stress case
    cases.append("".join(cases[: 400]))
    seen, out = set(), []
    for c in cases:
        assert "\x00" not in c
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


def llama2_tokenizer(path):
    d = json.load(open(path, encoding="utf-8"))
    vocab = {t: i for i, t in enumerate(d["vocab"])}
    merges = [tuple(m.split(" ")) for m in d["merges"]]
    assert all(len(m) == 2 for m in merges)
    tok = Tokenizer(models.BPE(vocab, merges, byte_fallback=True, fuse_unk=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                           normalizers.Replace(" ", "\u2581")])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                            for t in ("<unk>", "<s>", "</s>")])
    return tok


def llama3_variant(path, splits, ignore_merges):
    d = json.load(open(path, encoding="utf-8"))
    d["model"]["ignore_merges"] = ignore_merges
    tok = Tokenizer.from_str(json.dumps(d))
    pres = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in splits]
    pres.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(pres)
    return tok


def write(out_dir, name, tok, cases):
    path = os.path.join(out_dir, name + ".jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for c in cases:
            ids = tok.encode(c, add_special_tokens=False).ids
            f.write(json.dumps({"text": c, "ids": ids}, ensure_ascii=False) + "\n")
    print(f"wrote {path}: {len(cases)} cases")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=os.path.join(here, "..", "..", "shared", "data", "tokenizers"))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "data", "tokenizer"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    cases = build_cases()
    l3 = os.path.join(args.shared, "llama3.tokenizer.json")
    write(args.out, "llama2", llama2_tokenizer(os.path.join(args.shared, "llama2.vocab_merges.json")), cases)
    write(args.out, "llama3", Tokenizer.from_file(l3), cases)
    # the pre-tokenizer variants: a smaller share of the cases suffices
    sub = cases[: len(HAND)] + cases[len(HAND)::3]
    write(args.out, "llama3-qwen2", llama3_variant(l3, [QWEN2_RE], False), sub)
    write(args.out, "llama3-gpt2", llama3_variant(l3, [GPT2_RE], False), sub)
    write(args.out, "llama3-default", llama3_variant(l3, DEFAULT_RES, False), sub)


if __name__ == "__main__":
    main()
