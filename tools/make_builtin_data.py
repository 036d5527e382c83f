"""Write the built-in prompt set of the tiny CPU recipe (deterministic).

    python tools/make_builtin_data.py          # writes maestro_megatron/data/builtin/prompts.jsonl
    python tools/make_builtin_data.py --check  # exit 1 if the shipped file is stale

Three task categories that different reward components favour:

- ``arith``: exact short answers ("What is 3 + 4?" -> "7"); r_ppl and r_fmt matter.
- ``story``: open creative text ("Write one sentence about a cat in the park.");
  the reference is one acceptable sentence, so r_pref (embedding similarity) matters.
- ``explain``: short reasoning with a reference answer ("Why is the sky blue?").

Every row also has ``response``: a target in the answer format
``<think>...</think><answer>...</answer>`` for a short supervised warm-up that teaches a
tiny random model the format. The vocabulary is kept small on purpose (the tiny model
has 4 layers and width 64; the tokenizer has 512 pieces).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "maestro_megatron/data/builtin/prompts.jsonl"
SEED = 0
NUM_ADD = 40
NUM_SUB = 40

ANIMALS = {  # animal -> (verb phrase, second sentence for the short story)
    "cat": ("sleeps", "It purrs and feels calm."),
    "dog": ("runs", "It wags its tail."),
    "bird": ("sings", "It flies up to a tree."),
    "fish": ("swims", "It hides under a rock."),
    "cow": ("eats grass", "It moves slowly home."),
    "fox": ("hunts", "It looks for food."),
    "duck": ("swims", "It finds its friends."),
    "frog": ("jumps", "It sits on a leaf."),
}
PLACES = ["in the park", "in the sun", "in the rain", "in the house", "in the garden",
          "by the river"]

FACTS = [  # (question, clause for "Explain why ...", answer, one reasoning sentence)
    ("Why is the sky blue?", "the sky is blue", "Air scatters blue light the most.",
     "Sun light has many colors and air scatters blue more than red."),
    ("Why do we need sleep?", "we need sleep", "Sleep lets the body and brain rest.",
     "The body and brain work all day and need rest."),
    ("Why does ice float?", "ice floats", "Ice is less dense than water.",
     "Water grows when it freezes, so ice is light for its size."),
    ("Why do plants need sun?", "plants need sun", "Plants use sun light to make food.",
     "Leaves catch light and turn air and water into food."),
    ("Why is the sun hot?", "the sun is hot", "The sun makes heat by fusion in its core.",
     "Gas in the core of the sun fuses and gives off heat."),
    ("Why do we see the moon at night?", "we see the moon at night",
     "The moon reflects light from the sun.",
     "The moon has no light of its own, but sun light hits it."),
    ("Why does rain fall?", "rain falls", "Water drops in clouds get heavy and fall.",
     "Small drops join in the clouds until they are too heavy."),
    ("Why do birds fly south?", "birds fly south", "Birds fly south to find food and warm air.",
     "In the cold there is little food, and the south is warm."),
    ("Why do leaves fall?", "leaves fall", "Trees drop leaves to save water in the cold.",
     "In the cold a tree cannot get much water, so it drops its leaves."),
    ("Why is the sea salty?", "the sea is salty", "Rivers carry salt from rocks into the sea.",
     "Rain washes salt out of rocks and rivers take it to the sea."),
    ("Why do we drink water?", "we drink water", "The body needs water to work.",
     "The body loses water all day and must get it back."),
    ("Why does a ball fall?", "a ball falls", "Gravity pulls the ball down.",
     "The earth pulls on all things, so the ball moves down."),
    ("Why is fire hot?", "fire is hot", "Fire gives off heat when things burn.",
     "When wood burns it joins with air and gives off heat."),
    ("Why do cats purr?", "cats purr", "Cats purr when they feel calm.",
     "A cat purrs when it is happy and calm."),
    ("Why do fish have gills?", "fish have gills", "Gills take air from the water.",
     "Fish live in water, so they need gills to get air."),
    ("Why is snow white?", "snow is white", "Snow reflects all colors of light.",
     "Snow reflects every color of light, and all colors make white."),
    ("Why do we wear coats?", "we wear coats", "Coats keep the body warm in the cold.",
     "A coat holds the heat of the body in the cold."),
    ("Why does the wind blow?", "the wind blows", "Air moves from high to low pressure.",
     "The sun heats the air unevenly, so air moves."),
    ("Why are days short in winter?", "days are short in winter",
     "The earth tilts away from the sun.",
     "In winter our half of the earth tilts away from the sun."),
    ("Why do stars shine?", "stars shine", "Stars make light by fusion in their cores.",
     "Stars are hot balls of gas that fuse and give off light."),
]


def fmt(think: str, answer: str) -> str:
    """The answer format every response follows."""
    return f"<think>{think}</think><answer>{answer}</answer>"


def arith_records() -> list[dict]:
    rng = random.Random(SEED)
    adds = [(a, b) for a in range(10) for b in range(10)]
    subs = [(a, b) for a in range(10) for b in range(a + 1)]
    out = []
    for a, b in sorted(rng.sample(adds, NUM_ADD)):
        out.append({"prompt": f"What is {a} + {b}?", "reference": str(a + b), "task": "arith",
                    "response": fmt(f"{a} plus {b} is {a + b}.", str(a + b))})
    for a, b in sorted(rng.sample(subs, NUM_SUB)):
        out.append({"prompt": f"What is {a} - {b}?", "reference": str(a - b), "task": "arith",
                    "response": fmt(f"{a} minus {b} is {a - b}.", str(a - b))})
    return out


def story_records() -> list[dict]:
    out = []
    for animal, (verb, more) in ANIMALS.items():
        for place in PLACES:
            sentence = f"The {animal} {verb} {place}."
            out.append({"prompt": f"Write one sentence about a {animal} {place}.",
                        "reference": sentence, "task": "story",
                        "response": fmt(f"A {animal} {verb} {place}.", sentence)})
        story = f"The {animal} {verb} {PLACES[0]}. {more}"
        out.append({"prompt": f"Write a short story about a {animal}.", "reference": story,
                    "task": "story", "response": fmt(f"A {animal} {verb}.", story)})
    return out


def explain_records() -> list[dict]:
    out = []
    for question, clause, answer, think in FACTS:
        for prompt in (question, f"Explain why {clause}.", f"Tell me why {clause}."):
            out.append({"prompt": prompt, "reference": answer, "task": "explain",
                        "response": fmt(think, answer)})
    return out


HELD_OUT_EVERY = 4
"""Every 4th row of each category is held out (``split: test``): the warm-up and the
training stream use ``train`` rows only, so evaluation sees prompts never trained on."""


def with_splits(records: list[dict]) -> list[dict]:
    """Add ``split`` (train / test): per category, rows 3, 7, 11, ... are ``test``."""
    seen: dict[str, int] = {}
    out = []
    for r in records:
        i = seen.get(r["task"], 0)
        seen[r["task"]] = i + 1
        out.append({**r, "split": "test" if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
                    else "train"})
    return out


def build_records() -> list[dict]:
    """All rows, in a fixed order (the prompt stream shuffles per epoch)."""
    return with_splits(arith_records() + story_records() + explain_records())


def render(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n" for r in records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true",
                        help="compare with the file instead of writing it")
    args = parser.parse_args(argv)
    text = render(build_records())
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'up to date' if same else 'STALE (rerun without --check)'}")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {len(build_records())} prompts to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
