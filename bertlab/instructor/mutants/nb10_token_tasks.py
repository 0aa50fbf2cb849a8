"""Mutants of 10-token-tasks (see bertlab/instructor/mutants/__init__.py)."""
from bertlab.instructor.mutants import edit

FIRST_PIECE = "        if word is None or word == previous:\n"
HIT = "hit = next((s for s in spans if s[0] <= start < s[1]), None)"
CONTINUE = '        if tag.startswith("I-") and kind == tag[2:]:\n'
VALID = "valid = (j >= i) & (j - i < max_answer_len) & m.unsqueeze(1) & m.unsqueeze(0)  # (T, T)"
PUNCT = '    s = "".join(ch for ch in s.lower() if unicodedata.category(ch)[0] not in "PS")\n'
IMPORTS = "import collections\nimport unicodedata\n"
ARTICLES = '    return " ".join(re.sub(r"\\b(a|an|the)\\b", " ", s).split())\n'
COMMON = "    common = sum((collections.Counter(p) & collections.Counter(g)).values())\n"

MUTANTS = {
    "align_labels": {
        # every WordPiece gets its word's tag: the later pieces are trained as if they were words
        "labels every sub-token": edit((FIRST_PIECE, "        if word is None:\n")),
        # [CLS] and [SEP] trained as O
        "special tokens labelled O": edit(("            labels.append(IGNORE_INDEX)\n",
                                           "            labels.append(IGNORE_INDEX if word == previous else tag_ids['O'])\n")),
        # the end offset read as inclusive: the word right after a span joins it
        "inclusive end offset": edit((HIT, "hit = next((s for s in spans if s[0] <= start <= s[1]), None)")),
        # every word of an entity starts one
        "B- on every word": edit(('("I-" if hit == entity else "B-")', '"B-"')),
        # continuation by type, not by span: two adjacent entities of one type merge
        "I- when the previous word had the same type": edit(
            ('("I-" if hit == entity else "B-")', '("I-" if entity is not None and hit[2] == entity[2] else "B-")')),
    },
    "bio_to_spans": {
        # conlleval's lenient reading: an I- without B- starts an entity
        "I- starts an entity": edit((
            '        start, kind = (i, tag[2:]) if tag.startswith("B-") else (None, None)\n',
            '        start, kind = (i, tag[2:]) if tag != "O" else (None, None)\n')),
        # the type of an I- is not checked: B-V I-D is one V entity
        "any I- continues": edit((CONTINUE, '        if tag.startswith("I-") and kind is not None:\n')),
        # the end index inclusive, not last + 1
        "inclusive end": edit(("spans.append((start, i, kind))", "spans.append((start, i - 1, kind))")),
        # the entity still open at the end of the sequence is lost
        "drops the last entity": edit(('enumerate(list(tags) + ["O"])', "enumerate(list(tags))")),
        # B- after B- of the same type continues the entity
        "B- continues an entity of its type": edit((CONTINUE, '        if tag[2:] == kind and tag != "O":\n')),
        # a sentinel appended to the caller's list: the caller's tags gain an "O" at every call
        "appends to the caller's list": edit(('    for i, tag in enumerate(list(tags) + ["O"]):\n',
                                              '    tags.append("O")  # closes the last entity\n'
                                              '    for i, tag in enumerate(tags):\n')),
    },
    "best_span": {
        # start and end chosen independently: the end can come before the start
        "independent argmax": edit(("    k = int(scores.argmax())\n    return k // T, k % T, float(scores.flatten()[k])",
                                    "    a = int(s.masked_fill(~m, float('-inf')).argmax())\n"
                                    "    b = int(e.masked_fill(~m, float('-inf')).argmax())\n"
                                    "    return a, b, float(s[a] + e[b])")),
        # no length limit
        "ignores max_answer_len": edit((VALID, "valid = (j >= i) & m.unsqueeze(1) & m.unsqueeze(0)")),
        # a span of max_answer_len + 1 tokens allowed
        "off-by-one length": edit((VALID, "valid = (j >= i) & (j - i <= max_answer_len) & m.unsqueeze(1) & m.unsqueeze(0)")),
        # spans may start in the question (only the end is checked against the mask)
        "start outside the report": edit((VALID, "valid = (j >= i) & (j - i < max_answer_len) & m.unsqueeze(0)")),
        # end < start allowed if the pair is within the length
        "no order check": edit((VALID, "valid = ((j - i).abs() < max_answer_len) & m.unsqueeze(1) & m.unsqueeze(0)")),
    },
    "squad_metrics": {
        # EM without normalisation: the case and the articles count
        "no lower case": edit((PUNCT, '    s = "".join(ch for ch in s if unicodedata.category(ch)[0] not in "PS")\n')),
        "articles kept": edit((ARTICLES, '    return " ".join(s.split())\n')),
        "punctuation kept": edit((PUNCT, "    s = s.lower()\n")),
        # SQuAD's script verbatim: string.punctuation lacks the degree sign the reports write ("125°C" vs "125C")
        "string.punctuation only": edit((IMPORTS, "import collections\nimport string\n"),
                                        (PUNCT, '    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))\n')),
        # a punctuation class typed by hand: misses the °, /, #, _ and % the reports hold
        "hand-typed punctuation class": edit((PUNCT, '    s = re.sub(r"[.,;:!?\'()\\-]", "", s.lower())\n')),
        # tokens as a set: a repeated token counted once
        "sets instead of bags": edit((COMMON, "    common = len(set(p) & set(g))\n")),
        # two empty answers score 0: a right "no answer" is not rewarded
        "empty answers score 0": edit(("        return float(p == g)\n", "        return 0.0\n")),
        # articles removed inside words too ("theory" -> "ory")
        "articles without word boundaries": edit((ARTICLES, '    return " ".join(re.sub(r"(a|an|the)", " ", s).split())\n')),
    },
}

ALTERNATIVES = {
    "align_labels": {
        "word starts computed first, spans as a character table": '''def align_labels(offsets, word_ids, spans, tag_ids):
    owner = {}
    for n, (start, end, kind) in enumerate(spans):
        for c in range(start, end):
            owner[c] = (n, kind)
    out, seen = [], set()
    last_entity = None
    for k, word in enumerate(word_ids):
        if word is None or (k > 0 and word_ids[k - 1] == word):
            out.append(-100)
            continue
        hit = owner.get(offsets[k][0])
        if hit is None:
            out.append(tag_ids["O"])
        else:
            out.append(tag_ids[("I-" if hit[0] == last_entity else "B-") + hit[1]])
        last_entity = None if hit is None else hit[0]
    return out
''',
    },
    "bio_to_spans": {
        "group by a while loop": '''def bio_to_spans(tags):
    tags, out, i = list(tags), [], 0
    while i < len(tags):
        if tags[i].startswith("B-"):
            kind, j = tags[i][2:], i + 1
            while j < len(tags) and tags[j] == "I-" + kind:
                j += 1
            out.append((i, j, kind))
            i = j
        else:
            i += 1
    return out
''',
    },
    "best_span": {
        "two loops": '''def best_span(start_logits, end_logits, context_mask, max_answer_len=12):
    best = (0, 0, float("-inf"))
    T = len(start_logits)
    for i in range(T):
        if not context_mask[i]:
            continue
        for j in range(i, min(T, i + max_answer_len)):
            if context_mask[j]:
                score = float(start_logits[i]) + float(end_logits[j])
                if score > best[2]:
                    best = (i, j, score)
    return best
''',
    },
    "squad_metrics": {
        "a regex for the symbols and Counter arithmetic": '''import collections


def normalize_answer(s):
    s = re.sub(r"[^\\w\\s]|_", "", s.lower())  # not a letter, digit or space; _ is a \\w but punctuation
    return " ".join(w for w in s.split() if w not in ("a", "an", "the"))


def token_f1(prediction, gold):
    p, g = collections.Counter(normalize_answer(prediction).split()), collections.Counter(normalize_answer(gold).split())
    if not p or not g:
        return 1.0 if p == g else 0.0
    common = sum(min(p[w], g[w]) for w in p)
    return 0.0 if common == 0 else 2 * common / (sum(p.values()) + sum(g.values()))
''',
    },
}
