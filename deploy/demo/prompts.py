"""Questions for distilling the SmolLM2 draft, composed offline from templates and word lists.

No data set and no model hub: every prompt is one template (an instruction a chat user might
send) filled with one topic from the lists below, in a fixed order from a seeded generator.
Topics are split in two disjoint sets: `train` prompts use only training topics, `heldout`
prompts (the acceptance measurement of tests/README.md) only held-out topics, so no held-out
question, and no held-out topic, is ever seen in training.

    prompts(split, n, seed) -> list of (question, chatml_text)
    python3 prompts.py --split heldout --n 32 --seed 1 --bench-jsonl prompts.jsonl
"""
import random

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

TEMPLATES = [
    "What is {t}?",
    "Explain {t} in simple terms.",
    "Explain {t} to a ten-year-old.",
    "Give me three interesting facts about {t}.",
    "Write a short paragraph about {t}.",
    "Why is {t} important?",
    "What are the advantages and disadvantages of {t}?",
    "Write a short poem about {t}.",
    "How would you describe {t} to someone who has never heard of it?",
    "What is the history of {t}?",
    "List five words related to {t}.",
    "Write a short story that involves {t}.",
    "What are common misconceptions about {t}?",
    "Can you summarize what {t} is in one sentence?",
    "How does {t} affect everyday life?",
    "What questions should I ask to learn more about {t}?",
    "Write a tweet about {t}.",
    "Give me a tip for learning about {t}.",
    "Compare {t} and {u}.",
    "What do {t} and {u} have in common?",
    "Write an email to a friend about {t}.",
    "Describe {t} in three sentences.",
    "What would happen if {t} did not exist?",
    "Tell me a fun fact about {t}.",
]

TOPICS = """
photosynthesis; gravity; the water cycle; volcanoes; earthquakes; the solar system; the moon;
black holes; electricity; magnetism; the human heart; the immune system; vaccines; DNA;
evolution; climate change; recycling; renewable energy; solar panels; wind turbines;
the internet; computers; programming; Python; machine learning; artificial intelligence;
robots; smartphones; email; social media; video games; chess; football; basketball; tennis;
swimming; running; yoga; meditation; sleep; healthy eating; vegetables; fruit; bread; coffee;
tea; chocolate; pizza; cooking; baking; gardening; trees; flowers; bees; butterflies; birds;
dogs; cats; horses; elephants; whales; sharks; dolphins; penguins; lions; tigers; rainforests;
deserts; oceans; rivers; mountains; glaciers; islands; weather; rain; snow; thunderstorms;
rainbows; the sun; stars; planets; Mars; astronauts; rockets; airplanes; trains; cars;
bicycles; ships; bridges; cities; villages; farming; money; banks; saving money; budgeting;
shopping; markets; trade; taxes; democracy; elections; laws; courts; human rights; history;
ancient Egypt; the Roman Empire; ancient Greece; the Middle Ages; the Renaissance;
the Industrial Revolution; the printing press; writing; books; libraries; poetry; music;
the piano; the guitar; painting; sculpture; photography; movies; theatre; dancing; languages;
learning a new language; mathematics; numbers; fractions; geometry; algebra; statistics;
probability; physics; chemistry; biology; atoms; molecules; water; air; fire; light; sound;
colors; time; clocks; calendars; seasons; holidays; birthdays; friendship; family; teamwork;
leadership; kindness; honesty; patience; creativity; curiosity; happiness; stress; exercise;
doctors; nurses; hospitals; medicine; teachers; schools; universities; homework; exams;
job interviews; writing a resume; public speaking; time management; goals; habits; travel;
maps; camping; hiking; the beach; museums; zoos; parks; public transport; pollution;
plastic; clean water; forests; wildlife conservation; endangered species; dinosaurs; fossils;
the brain; memory; dreams; emotions; the eyes; the ears; teeth; bones; muscles; skin; blood;
bacteria; viruses; germs; hand washing; first aid; fire safety; road safety; cybersecurity;
passwords; online privacy; cloud computing; databases; websites; search engines; algorithms;
encryption; batteries; electric cars; nuclear energy; oil; coal; natural gas; steel; glass;
paper; wood; cotton; wool; silk; clothes; fashion; shoes; hats; umbrellas; houses;
architecture; castles; pyramids; the Great Wall of China; the Eiffel Tower; Paris; London;
Tokyo; New York; Africa; Asia; Europe; South America; Australia; Antarctica; the Arctic;
the Pacific Ocean; the Amazon river; the Nile; the Sahara; the Himalayas; Mount Everest;
coral reefs; jellyfish; octopuses; frogs; snakes; spiders; ants; owls; eagles; parrots;
kangaroos; pandas; bears; wolves; foxes; rabbits; mice; cows; sheep; chickens; eggs; milk;
cheese; rice; pasta; soup; salad; sandwiches; ice cream; cake; cookies; honey; sugar; salt;
spices; breakfast; lunch; dinner; restaurants; recipes; kitchens; refrigerators; microwaves;
washing machines; vacuum cleaners; light bulbs; telephones; radio; television; newspapers;
magazines; advertising; marketing; startups; entrepreneurship; customer service; emails at
work; meetings; remote work; the stock market; inflation; unemployment; insurance; pensions
""".replace("\n", " ").split(";")
TOPICS = [t.strip() for t in TOPICS if t.strip()]

# Every HELDOUT_EVERY-th topic (in list order) is held out.
HELDOUT_EVERY = 10


def chatml(question):
    """SmolLM2's chat template for one user turn with its default system prompt."""
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            "<|im_start|>assistant\n")


def topics(split):
    held = [t for i, t in enumerate(TOPICS) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    train = [t for i, t in enumerate(TOPICS) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    return {"train": train, "heldout": held}[split]


def prompts(split, n, seed=0):
    """n distinct (question, chatml) pairs of `split`, in a fixed order."""
    rng = random.Random(f"{split}-{seed}")
    pool = topics(split)
    seen, out = set(), []
    while len(out) < n:
        template = rng.choice(TEMPLATES)
        t, u = rng.sample(pool, 2)
        question = template.format(t=t, u=u)
        if question in seen:
            continue
        seen.add(question)
        out.append((question, chatml(question)))
    return out


def main():
    import argparse
    import json
    ap = argparse.ArgumentParser(description="prints or writes the distillation questions")
    ap.add_argument("--split", choices=["train", "heldout"], default="train")
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bench-jsonl", help="write specmoe-cli bench's dataset (ChatML prompts)")
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    pairs = prompts(args.split, args.n, args.seed)
    if not args.bench_jsonl:
        print(len(TOPICS), "topics,", len(topics("heldout")), "held out")
        for q, _ in pairs:
            print(q)
        return
    with open(args.bench_jsonl, "w") as f:
        for _, text in pairs:
            f.write(json.dumps({"prompt": text, "max_tokens": args.max_tokens}) + "\n")


if __name__ == "__main__":
    main()
