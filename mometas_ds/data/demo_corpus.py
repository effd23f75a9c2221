"""A generated English-like corpus for the demo and the tests: no download, same bytes for the same seed.

Each document picks a topic and writes 3-8 sentences from templates filled with that topic's nouns,
verbs and adjectives, people, places, numbers and years, so a tiny BERT has regularities to learn
(topic words co-occur, entities recur within a document).

    python -m mometas_ds.data.demo_corpus runs/demo/corpus.jsonl --num_docs 2000 --seed 0
"""
from __future__ import annotations

import argparse
import json
import os
import random
from typing import Dict, List

FIRST_NAMES = ["Alice", "Bruno", "Chen", "Dalia", "Emeka", "Farah", "Goran", "Hana", "Ivan", "Jonas", "Keiko",
               "Lucia", "Mateo", "Nadia", "Omar", "Priya", "Quentin", "Rosa", "Sven", "Tomas", "Uma", "Viktor",
               "Wen", "Yara", "Zoltan"]
LAST_NAMES = ["Anderson", "Baker", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Hoffmann", "Ito", "Jensen",
              "Kowalski", "Larsen", "Moreau", "Novak", "Okafor", "Petrov", "Rossi", "Schmidt", "Tanaka", "Weber"]
PLACES = ["Lisbon", "Nairobi", "Osaka", "Toronto", "Krakow", "Santiago", "Melbourne", "Cairo", "Oslo", "Hanoi",
          "Denver", "Marseille", "Edinburgh", "Bangalore", "Valencia", "Montreal"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]

TOPICS: Dict[str, Dict[str, List[str]]] = {
    "science": {
        "nouns": ["experiment", "molecule", "telescope", "hypothesis", "laboratory", "protein", "sample",
                  "measurement", "galaxy", "enzyme", "reaction", "particle"],
        "verbs": ["measured", "observed", "analyzed", "published", "confirmed", "tested", "modeled", "detected"],
        "adjectives": ["precise", "unexpected", "stable", "rare", "faint", "reproducible", "complex", "novel"],
        "groups": ["the research team", "the university", "the institute", "the observatory"],
    },
    "sports": {
        "nouns": ["match", "season", "goal", "tournament", "coach", "stadium", "league", "record", "team",
                  "final", "championship", "striker"],
        "verbs": ["won", "lost", "scored", "defended", "trained", "celebrated", "signed", "played"],
        "adjectives": ["dramatic", "decisive", "young", "veteran", "crowded", "narrow", "historic", "fast"],
        "groups": ["the home side", "the visitors", "the national team", "the club"],
    },
    "business": {
        "nouns": ["company", "market", "investor", "profit", "product", "contract", "factory", "customer",
                  "strategy", "budget", "merger", "quarter"],
        "verbs": ["announced", "acquired", "launched", "reported", "expanded", "reduced", "negotiated", "raised"],
        "adjectives": ["profitable", "global", "cautious", "ambitious", "competitive", "modest", "digital", "strong"],
        "groups": ["the board", "the startup", "the manufacturer", "the bank"],
    },
    "history": {
        "nouns": ["empire", "treaty", "castle", "manuscript", "dynasty", "revolution", "archive", "monument",
                  "kingdom", "battle", "harbor", "colony"],
        "verbs": ["founded", "conquered", "signed", "restored", "discovered", "recorded", "rebuilt", "ruled"],
        "adjectives": ["ancient", "medieval", "powerful", "forgotten", "fortified", "royal", "coastal", "famous"],
        "groups": ["the historians", "the archaeologists", "the museum", "the council"],
    },
    "cooking": {
        "nouns": ["recipe", "kitchen", "sauce", "bread", "oven", "spice", "dessert", "restaurant", "chef",
                  "ingredient", "soup", "menu"],
        "verbs": ["baked", "roasted", "seasoned", "served", "prepared", "tasted", "mixed", "simmered"],
        "adjectives": ["fresh", "spicy", "sweet", "crispy", "traditional", "savory", "seasonal", "delicious"],
        "groups": ["the chefs", "the bakery", "the restaurant", "the food critics"],
    },
}

TEMPLATES = [
    "{person} {verb} the {adj} {noun} in {place} in {year}.",
    "In {month} {year}, {group} {verb} a {adj} {noun} near {place}.",
    "The {noun} was {verb} by {person}, who said it was {adj}.",
    "According to {person}, the {noun} in {place} is more {adj} than the {noun2}.",
    "{group_cap} {verb} {number} {noun}s during the {adj} {noun2}.",
    "After the {noun} {verb_past_short}, {person} moved to {place} with {number} colleagues.",
    "Many people think the {adj} {noun} and the {noun2} are connected.",
    "{person} and {person2} {verb} the {noun} together on {month} {day}.",
    "Nobody expected that the {noun} would be so {adj} in {year}.",
    "The {adj} {noun2} of {place} attracts about {number} visitors every year.",
]


def _sentence(rng: random.Random, topic: Dict[str, List[str]], cast: List[str]) -> str:
    template = rng.choice(TEMPLATES)
    noun, noun2 = rng.sample(topic["nouns"], 2)
    group = rng.choice(topic["groups"])
    fields = {
        "person": rng.choice(cast),
        "person2": rng.choice(cast),
        "verb": rng.choice(topic["verbs"]),
        "verb_past_short": rng.choice(["ended", "began", "changed", "failed", "succeeded"]),
        "adj": rng.choice(topic["adjectives"]),
        "noun": noun,
        "noun2": noun2,
        "group": group,
        "group_cap": group[0].upper() + group[1:],
        "place": rng.choice(PLACES),
        "month": rng.choice(MONTHS),
        "day": str(rng.randint(1, 28)),
        "year": str(rng.randint(1850, 2024)),
        "number": str(rng.choice([rng.randint(2, 99), rng.randint(100, 9999)])),
    }
    return template.format(**fields)


def generate_documents(num_docs: int = 2000, seed: int = 0) -> List[str]:
    """``num_docs`` documents of 3-8 sentences each; the same list for the same seed."""
    if isinstance(num_docs, bool) or not isinstance(num_docs, int) or num_docs < 1:
        raise ValueError(f"num_docs must be an int >= 1, got {num_docs!r}")
    rng = random.Random(seed)
    topic_names = sorted(TOPICS)
    documents = []
    for _ in range(num_docs):
        topic = TOPICS[rng.choice(topic_names)]
        # A few recurring people per document, so entities repeat within it.
        cast = [f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}" for _ in range(rng.randint(1, 3))]
        documents.append(" ".join(_sentence(rng, topic, cast) for _ in range(rng.randint(3, 8))))
    return documents


def write_demo_corpus(path: str, num_docs: int = 2000, seed: int = 0) -> str:
    """Write the generated corpus as JSON Lines (``{"id": i, "text": ...}``) to ``path``; return ``path``."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for i, text in enumerate(generate_documents(num_docs, seed)):
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    os.replace(tmp, path)  # a reader never sees half a corpus
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write the generated demo corpus (JSON Lines).")
    parser.add_argument("path", help="output .jsonl file")
    parser.add_argument("--num_docs", type=int, default=2000, help="number of documents (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    args = parser.parse_args(argv)
    write_demo_corpus(args.path, args.num_docs, args.seed)
    print(f"wrote {args.num_docs} documents to {args.path}")


if __name__ == "__main__":
    main()
