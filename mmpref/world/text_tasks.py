"""Text tasks with ground truth (what the base LM, the "Vicuna", learns) and the miniature "text-davinci-003"."""

from __future__ import annotations

import random

from mmpref.world.scenes import COLORS, SHAPES

WORDS = ["cat", "dog", "sun", "tree", "bird", "fish", "book", "lamp", "rain", "star", "moon", "cake", "ship", "frog",
         "milk", "rose", "ring", "door", "desk", "kite", "hat", "cup", "pen", "box", "bus", "car", "egg", "map", "key",
         "bed", "leaf", "road", "snow", "wind", "salt", "gold", "nest", "bell", "drum", "coin"]
# The list tasks name the pictures' shapes and colours too: a real LLM knows the words its images are about before
# visual instruction tuning, and matching a word to an earlier one in its context is the lookup the tiny LLaVA then
# uses to find a shape among its image tokens (without them, the base LM first meets "circle" in a picture).
LIST_WORDS = WORDS + [w for w in SHAPES + list(COLORS) if w not in WORDS]
CAPITALS = {"France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Germany": "Berlin", "Japan": "Tokyo",
            "China": "Beijing", "Egypt": "Cairo", "Russia": "Moscow", "Greece": "Athens", "Peru": "Lima",
            "Kenya": "Nairobi", "Norway": "Oslo", "Sweden": "Stockholm", "Poland": "Warsaw", "Cuba": "Havana",
            "Chile": "Santiago", "Austria": "Vienna", "Ireland": "Dublin", "Portugal": "Lisbon", "Canada": "Ottawa",
            "Brazil": "Brasilia", "India": "Delhi", "Mexico": "Mexico City", "Turkey": "Ankara", "Iran": "Tehran",
            "Ghana": "Accra", "Finland": "Helsinki", "Hungary": "Budapest", "Belgium": "Brussels", "Denmark": "Copenhagen"}
SOUNDS = {"dog": "woof", "cat": "meow", "cow": "moo", "duck": "quack", "sheep": "baa", "lion": "roar",
          "owl": "hoot", "pig": "oink", "horse": "neigh", "snake": "hiss"}
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "up": "down", "old": "new", "wet": "dry", "dark": "light",
             "hard": "soft", "long": "short", "early": "late", "full": "empty", "loud": "quiet", "rich": "poor",
             "happy": "sad", "open": "closed", "high": "low", "thick": "thin", "strong": "weak", "near": "far",
             "clean": "dirty"}

# The SteerLM attribute suffix (DESIGN.md) is part of later prompts: give the tokenizer a chance to learn it.

# The text tasks' format instructions: a prompt that starts with one asks for the bare answer (its reference is the
# key alone, "12."); every other prompt is answered in a sentence. The anatomy's format adherence reads them.
NUMBER_ONLY = "Answer with just the number:"
ONE_WORD = "Answer in one word:"
FORMAT_INSTRUCTIONS = (NUMBER_ONLY, ONE_WORD)

TEXT_TASK_WEIGHTS = {"arithmetic": 0.3, "word": 0.25, "list": 0.25, "facts": 0.2}
MT_BENCH_CATEGORY = {"arithmetic": "math", "list": "reasoning", "word": "extraction", "facts": "humanities"}


PHRASINGS = ("all", "train", "bench")


def _phrase(rng: random.Random, options: list[str], phrasings: str = "all") -> str:
    """One phrasing of a first turn. Every task kind has at least three; the last is the benchmarks' (MT-Bench,
    AlpacaEval: ``phrasings="bench"``), the others are the training data's (``"train"``), so training text can leave
    the benchmarks' wording out (the mix's rehearsal always does; the base LM's data per `world.base_lm_phrasings`)
    and the benchmarks test knowledge and format under new wording, as MT-Bench's questions are not ShareGPT's.
    ``"all"`` draws from every phrasing."""
    if len(options) < 3:
        raise ValueError(f"a task kind needs at least three phrasings to hold one out, got {options}")
    if phrasings not in PHRASINGS:
        raise ValueError(f"phrasings must be one of {PHRASINGS}, got {phrasings!r}")
    pool = options[-1:] if phrasings == "bench" else options[:-1] if phrasings == "train" else options
    return rng.choice(pool)


def _nums(xs: list[int]) -> str:
    return ", ".join(str(x) for x in xs)


def _arith_follow(r: int, rng: random.Random) -> tuple[str, str, str]:
    kind = rng.choice(["add", "sub", "double"]) if r > 1 else "add"
    if kind == "add":
        k = rng.randint(1, 9)
        q = rng.choice(["Now add {k} to your answer.", "Add {k} to that."]).format(k=k)
        return q, str(r + k), f"{r} plus {k} is {r + k}."
    if kind == "sub":
        k = rng.randint(1, min(9, r))
        q = rng.choice(["Now subtract {k} from your answer.", "Take {k} away from that."]).format(k=k)
        return q, str(r - k), f"{r} minus {k} is {r - k}."
    q = rng.choice(["Now double your answer.", "Now multiply your answer by 2."])
    return q, str(2 * r), f"{r} times 2 is {2 * r}."


def _capitals_of(word: str) -> tuple[str, str, str]:
    q = "Now spell your answer in capitals."
    return q, word.upper(), f"The word {word} in capitals is {word.upper()}."


def task_arithmetic(rng: random.Random, two_turn: bool, phrasings: str = "all") -> dict:
    op = rng.choice(["plus", "minus", "times"])
    if op == "plus":
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        r, qs = a + b, ["What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} plus {b}.",
                        "What do you get when you add {a} and {b}?"]
    elif op == "minus":
        a = rng.randint(2, 20)
        b = rng.randint(1, a - 1)
        r, qs = a - b, ["What is {a} minus {b}?", "Subtract {b} from {a}.", "Compute {a} minus {b}."]
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        r, qs = a * b, ["What is {a} times {b}?", "Multiply {a} by {b}.", "Compute {a} times {b}."]
    q = _phrase(rng, qs, phrasings).format(a=a, b=b)
    ref = f"{a} {op} {b} is {r}."
    if rng.random() < 0.2:
        q, ref = f"{NUMBER_ONLY} {q[0].lower()}{q[1:]}", f"{r}."
    turns, refs, keys = [q], [ref], [str(r)]
    if two_turn:
        q2, k2, r2 = _arith_follow(r, rng)
        turns, refs, keys = turns + [q2], refs + [r2], keys + [k2]
    return {"turns": turns, "references": refs, "answers": keys, "task": "arithmetic"}


def task_word(rng: random.Random, two_turn: bool, phrasings: str = "all") -> dict:
    w = rng.choice(WORDS)
    kind = rng.choice(["reverse", "capitals", "first", "last"])
    if kind == "reverse":
        q = _phrase(rng, ["Reverse the word {w}.", "Write the word {w} backwards.", "What is {w} spelled backwards?"],
                    phrasings)
        key, ref, follow = w[::-1], f"The word {w} reversed is {w[::-1]}.", _capitals_of(w[::-1])
    elif kind == "capitals":
        q = _phrase(rng, ["Spell the word {w} in capitals.", "Write {w} in capital letters.",
                         "Write the word {w} in uppercase."], phrasings)
        up = w.upper()
        key, ref = up, f"The word {w} in capitals is {up}."
        follow = ("Now reverse your answer.", up[::-1], f"The word {up} reversed is {up[::-1]}.")
    elif kind == "first":
        q = _phrase(rng, ["What is the first letter of the word {w}?", "Which letter does {w} start with?",
                         "Name the first letter of {w}."], phrasings)
        key, ref = w[0], f"The first letter of {w} is {w[0]}."
        follow = ("Now give the last letter of the same word.", w[-1], f"The last letter of {w} is {w[-1]}.")
    else:
        q = _phrase(rng, ["What is the last letter of the word {w}?", "Which letter does {w} end with?",
                         "Name the last letter of {w}."], phrasings)
        key, ref = w[-1], f"The last letter of {w} is {w[-1]}."
        follow = ("Now give the first letter of the same word.", w[0], f"The first letter of {w} is {w[0]}.")
    turns, refs, keys = [q.format(w=w)], [ref], [key]
    if two_turn:
        turns, keys, refs = turns + [follow[0]], keys + [follow[1]], refs + [follow[2]]
    return {"turns": turns, "references": refs, "answers": keys, "task": "word"}


def task_list(rng: random.Random, two_turn: bool, phrasings: str = "all") -> dict:
    xs = rng.sample(range(1, 21), rng.choice([3, 4]))
    kind = rng.choice(["largest", "smallest", "sort", "count", "member"])
    if kind in ("largest", "smallest"):
        m = max(xs) if kind == "largest" else min(xs)
        q = _phrase(rng, ["What is the {k} of {L}?", "Which number is the {k}: {L}?",
                          "Find the {k} number in {L}."], phrasings).format(k=kind, L=_nums(xs))
        key, ref = str(m), f"The {kind} number is {m}."
        k = rng.randint(1, 9)
        follow = (f"Now add {k} to it.", str(m + k), f"{m} plus {k} is {m + k}.")
    elif kind == "member":
        w = rng.choice(LIST_WORDS)
        items = rng.sample([x for x in LIST_WORDS if x != w], len(xs) - 1) + ([w] if rng.random() < 0.5 else [])
        if len(items) < len(xs):
            items.append(rng.choice([x for x in LIST_WORDS if x not in items + [w]]))
        rng.shuffle(items)
        q = _phrase(rng, ["Is {w} in the list {L}?", "In the list {L}, is there a {w}?",
                          "Does the list {L} contain {w}?"], phrasings).format(w=w, L=", ".join(items))
        present = w in items
        key = "yes" if present else "no"
        ref = f"Yes, {w} is in the list." if present else f"No, {w} is not in the list."
        follow = ("Now count the items in the list.", str(len(items)), f"There are {len(items)} items in the list.")
    elif kind == "sort":
        s = sorted(xs)
        q = _phrase(rng, ["Sort {L} from smallest to largest.", "Put {L} in increasing order.",
                         "Order {L} from the smallest number up."], phrasings).format(L=_nums(xs))
        key, ref = _nums(s), f"The sorted list is {_nums(s)}."
        follow = ("Now give the first number of the sorted list.", str(s[0]), f"The first number is {s[0]}.")
    else:
        items = rng.sample(LIST_WORDS, len(xs))
        q = _phrase(rng, ["How many items are in the list {L}?", "Count the items in {L}.",
                         "How many words does the list {L} have?"], phrasings).format(L=", ".join(items))
        n = len(items)
        key, ref = str(n), f"There are {n} items in the list."
        follow = ("Now add 1 to that number.", str(n + 1), f"{n} plus 1 is {n + 1}.")
    turns, refs, keys = [q], [ref], [key]
    if two_turn:
        turns, keys, refs = turns + [follow[0]], keys + [follow[1]], refs + [follow[2]]
    return {"turns": turns, "references": refs, "answers": keys, "task": "list"}


def _spell_in_capitals(what: str, y: str) -> tuple[str, str, str]:
    return f"Now spell that {what} in capitals.", y.upper(), f"The word {y} in capitals is {y.upper()}."


# Fact kinds: (share of fact questions, table, phrasings, one-word question, reference, follow-up turns). Facts are
# drawn by cumulative share; a follow-up is drawn only where a kind has several.
FACT_KINDS = {
    "capital": (0.5, CAPITALS,
                ["What is the capital of {x}?", "Which city is the capital of {x}?", "Name the capital of {x}.",
                 "Tell me the capital of {x}.", "What city is the capital of {x}?"],
                ONE_WORD + " what is the capital of {x}?", "The capital of {x} is {y}.",
                lambda y: [_spell_in_capitals("city", y),
                           ("Now give the first letter of that city.", y[0], f"The first letter of {y} is {y[0]}.")]),
    "sound": (0.25, SOUNDS,
              ["What sound does a {x} make?", "Which sound does a {x} make?", "What noise does a {x} make?",
               "Tell me the sound a {x} makes.", "What does a {x} say?"],
              ONE_WORD + " what sound does a {x} make?", "A {x} says {y}.",
              lambda y: [("Now reverse that word.", y[::-1], f"The word {y} reversed is {y[::-1]}.")]),
    "opposite": (0.25, OPPOSITES,
                 ["What is the opposite of {x}?", "Give the opposite of {x}.", "Which word means the opposite of {x}?",
                  "Name the opposite of {x}.", "What word is the opposite of {x}?"],
                 ONE_WORD + " what is the opposite of {x}?", "The opposite of {x} is {y}.",
                 lambda y: [_spell_in_capitals("word", y)]),
}


def task_facts(rng: random.Random, two_turn: bool, phrasings: str = "all") -> dict:
    """A fact question (capital, animal sound, opposite word); ``topic`` names the fact, so held-out benchmark
    prompts can leave every fact in training under other phrasings."""
    one_word = rng.random() < 0.3
    u, edge = rng.random(), 0.0
    for kind, (share, table, wordings, one_word_q, reference, follow_ups) in FACT_KINDS.items():
        edge += share
        if u < edge or kind == list(FACT_KINDS)[-1]:
            break
    x = rng.choice(list(table))
    y = table[x]
    if one_word:
        q, ref = one_word_q.format(x=x), f"{y[:1].upper()}{y[1:]}."
    else:
        q, ref = _phrase(rng, wordings, phrasings).format(x=x), reference.format(x=x, y=y)
    options = follow_ups(y)
    follow = rng.choice(options) if len(options) > 1 else options[0]
    turns, refs, keys = [q], [ref], [y]
    if two_turn:
        turns, keys, refs = turns + [follow[0]], keys + [follow[1]], refs + [follow[2]]
    return {"turns": turns, "references": refs, "answers": keys, "task": "facts", "topic": f"{kind}:{x}"}


TEXT_TASKS = {"arithmetic": task_arithmetic, "word": task_word, "list": task_list, "facts": task_facts}


def sample_text_item(rng: random.Random, two_turn: bool | None = None, task: str | None = None,
                     phrasings: str = "all") -> dict:
    """One text instruction item; two-turn with probability 0.3 unless told; first turns in the ``phrasings`` set
    (`_phrase`: "train", "bench" or "all")."""
    task = task or rng.choices(list(TEXT_TASK_WEIGHTS), weights=list(TEXT_TASK_WEIGHTS.values()))[0]
    if two_turn is None:
        two_turn = rng.random() < 0.3
    return TEXT_TASKS[task](rng, two_turn, phrasings)


def imperfect_output(item: dict, rng: random.Random) -> str:
    """The miniature "text-davinci-003": house-style right answer ~60 %, else plausible wrong or off-format."""
    ref, key = item["references"][0], item["answers"][0]
    u = rng.random()
    if u < 0.6:
        return ref
    if u < 0.85:
        return _wrong_reference(item, rng)
    return rng.choice([f"Well, it depends. Some people would say {key}, but there are many views on this.",
                       "I am not able to answer that question.",
                       f"Sure! Here is a long answer. The question is: {item['turns'][0]} Let me think about it."])


def wrong_key(key: str, rng: random.Random) -> str:
    """A plausible wrong answer of the same kind as the key answer: a nearby number, another capital, sound or
    opposite, the other of yes/no, a list in the wrong order, another letter, the word reversed."""
    if key.isdigit():
        wrong = str(max(0, int(key) + rng.choice([-3, -2, -1, 1, 2, 3])))
        return wrong if wrong != key else str(int(key) + 1)
    for table in (CAPITALS, OPPOSITES, SOUNDS):
        if key in table.values():
            return rng.choice([v for v in table.values() if v != key])
    if key in ("yes", "no"):
        return "no" if key == "yes" else "yes"
    if "," in key:                               # a sorted list: swap two numbers
        parts = key.split(", ")
        parts[0], parts[-1] = parts[-1], parts[0]
        return ", ".join(parts)
    if len(key) == 1:
        wrong = rng.choice([ch for ch in "abcdefghijklmnopqrstuvwxyz" if ch != key.lower()])
        return wrong.upper() if key.isupper() else wrong
    return key[::-1] if key[::-1] != key else key + key[-1]


def _wrong_reference(item: dict, rng: random.Random) -> str:
    ref, key = item["references"][0], item["answers"][0]
    if key == "yes":                             # a membership answer: the opposite claim
        return ref.replace("Yes, ", "No, ", 1).replace(" is in ", " is not in ", 1)
    if key == "no":
        return ref.replace("No, ", "Yes, ", 1).replace(" is not in ", " is in ", 1)
    wrong = wrong_key(key, rng)
    if key in OPPOSITES.values() or key in SOUNDS.values():
        key = key.capitalize() if ref.startswith(key.capitalize()) else key
    return replace_last(ref, key, wrong)


def replace_last(text: str, old: str, new: str) -> str:
    i = text.rfind(old)
    return text if i < 0 else text[:i] + new + text[i + len(old):]


def knowledge_statements() -> list[str]:
    """The world's facts as plain statements, in the house style of the references (what a base LM reads in
    pretraining): every capital, animal sound and opposite, the sums, differences and products the arithmetic tasks
    ask, and the spelling facts of every word (reversed, capitals, first and last letter). Procedures over a list in
    the prompt (sort, count, membership) are skills, not facts, and are left to instruction tuning."""
    out = [f"The capital of {x} is {y}." for x, y in CAPITALS.items()]
    out += [f"A {x} says {y}." for x, y in SOUNDS.items()]
    out += [f"The opposite of {x} is {y}." for x, y in OPPOSITES.items()]
    out += [f"{a} plus {b} is {a + b}." for a in range(1, 21) for b in range(1, 21)]
    out += [f"{a} minus {b} is {a - b}." for a in range(2, 21) for b in range(1, a)]
    out += [f"{a} times {b} is {a * b}." for a in range(2, 10) for b in range(2, 10)]
    for w in WORDS:
        out += [f"The word {w} reversed is {w[::-1]}.", f"The word {w} in capitals is {w.upper()}.",
                f"The first letter of {w} is {w[0]}.", f"The last letter of {w} is {w[-1]}."]
    return out
