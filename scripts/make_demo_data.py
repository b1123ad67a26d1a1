"""Write alignloop's bundled demonstration data (deterministic, no download; licensed with the project).

    python scripts/make_demo_data.py

Outputs in alignloop/resources/data/:
  sft_demo_train.jsonl / sft_demo_eval.jsonl   short, warm, helpful answers in the `messages` format
  prompts_train.jsonl / prompts_eval.jsonl     open-ended prompts whose answers can be upbeat or gloomy (for RLHF)
SFT train and eval use disjoint topics, so they never share a prompt; the two prompt files share no prompt either.
prompts_eval.jsonl's first 64 prompts share templates and topics with the training prompts; the 64 after them use
the same templates on topics no training prompt has (added later, so the first 64 and every other file are unchanged).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 1234
OUT_DIR = Path(__file__).resolve().parents[1] / "alignloop" / "resources" / "data"
SFT_TRAIN, SFT_EVAL, PROMPTS_TRAIN, PROMPTS_EVAL = 300, 40, 200, 64
PROMPTS_EVAL_EXTRA = 64  # appended to prompts_eval.jsonl: new topics, so 96+ held-out prompts exist (issue 20)
EVAL_TOPIC_FRACTION = 0.15
MULTI_TURN_FRACTION = 0.2
SYSTEM_FRACTION = 0.1

# One topic per line: "name | first sentence | second sentence".
CONCEPTS = """\
photosynthesis | Photosynthesis is how plants use sunlight to turn water and carbon dioxide into sugar they can live on. | As a lovely bonus, the process releases the oxygen that we breathe.
compound interest | Compound interest means you earn interest not only on your savings but also on the interest they already earned. | Over many years this snowball effect can make even small, regular savings grow surprisingly large.
a rainbow | A rainbow appears when sunlight enters raindrops, bends, reflects inside them and spreads into its colours. | That is why you see one when the sun is behind you and rain is falling in front of you.
gravity | Gravity is the pull that every object with mass has on every other object. | It keeps your feet on the ground and holds the Moon in its orbit around the Earth.
a black hole | A black hole is a region of space where matter is packed so tightly that not even light can escape its pull. | They form when very massive stars collapse, and they help astronomers test our best ideas about physics.
the water cycle | The water cycle is the journey water takes as it evaporates, forms clouds, falls as rain and flows back to the sea. | The same water has been going round this loop for billions of years.
an ecosystem | An ecosystem is a community of living things together with the soil, water and air around them. | Every member plays a part, from the tiniest fungus to the biggest tree.
inflation | Inflation is the gradual rise in prices, which means the same amount of money buys a little less over time. | Central banks try to keep it low and steady so people can plan ahead with confidence.
a vaccine | A vaccine gently trains your immune system by showing it a harmless piece or version of a germ. | Then, if the real germ ever shows up, your body recognises it and can respond quickly.
the internet | The internet is a huge network of computers that pass messages to each other using shared rules. | When you open a website, small packets of data travel across many connected machines to reach you.
a leap year | A leap year adds an extra day, February 29th, almost every four years. | It keeps our calendar in step with the Earth's trip around the Sun, which takes about 365 and a quarter days.
the tides | Tides are the regular rise and fall of the sea, caused mostly by the Moon's gravity pulling on the oceans. | Most coasts see two high tides and two low tides every day.
a metaphor | A metaphor describes one thing as if it were another, like saying time is a river. | It is a wonderful way to make an idea vivid in just a few words.
recycling | Recycling turns used materials like paper, glass and metal into new products. | It saves energy and raw materials, and every sorted bottle really does help.
an electric circuit | An electric circuit is a closed loop that lets electricity flow from a power source, through devices, and back again. | When you flip a switch, you are simply closing or opening that loop.
a budget | A budget is a simple plan for how you will spend and save the money you have each month. | It is less about restriction and more about giving every euro or dollar a purpose you choose.
the seasons | The seasons happen because the Earth is tilted, so each half leans towards the Sun for part of the year. | When your half leans in, the days are longer and warmer, and that is summer.
a haiku | A haiku is a short Japanese poem of three lines, traditionally with five, seven and five syllables. | It often captures a single moment in nature, like falling leaves or a quiet pond.
machine learning | Machine learning is a way of building computer programs that learn patterns from examples instead of following hand-written rules. | It powers things like spam filters, photo search and music recommendations.
an encyclopedia | An encyclopedia is a collection of articles that summarise knowledge on many subjects. | It is a great starting point whenever you want a trustworthy overview of a topic.
a solar panel | A solar panel turns sunlight into electricity using layers of special material, usually silicon. | When light hits the panel, it nudges electrons into motion, and that flow is the electric current.
the placebo effect | The placebo effect is when people feel better after a treatment with no active ingredient, simply because they expect to. | It shows how strongly our minds and bodies are connected.
a sourdough starter | A sourdough starter is a living mix of flour and water full of wild yeast and friendly bacteria. | Bakers feed it regularly and use it to make bread rise with a lovely tangy flavour.
an eclipse | An eclipse happens when one space object moves into the shadow of another. | During a solar eclipse the Moon passes between the Earth and the Sun and briefly hides the Sun.
a password manager | A password manager is an app that creates and remembers strong, unique passwords for all your accounts. | You only need to remember one main password, which makes staying safe online much easier.
a volcano | A volcano is an opening in the Earth's crust where melted rock, gas and ash can escape from deep below. | Over time, eruptions can build whole mountains and even new islands.
democracy | Democracy is a way of governing in which people choose their leaders and shape decisions, usually by voting. | It works best when citizens stay informed and take part.
the food chain | A food chain shows who eats whom in nature, starting with plants that capture energy from the Sun. | Energy passes from plants to plant eaters and then to the animals that eat them.
a thesaurus | A thesaurus is a book or tool that lists words with similar and opposite meanings. | It is handy when you want to find just the right word for your writing.
a savings account | A savings account is a bank account meant for keeping money safe while it earns a little interest. | It is a great home for an emergency fund or money you are putting aside for a goal.
"""

ADVICE = """\
start running | Begin with short, easy sessions where you mix a minute of jogging with a minute or two of walking. | Good shoes and a comfortable pace matter far more than speed at the start.
sleep better | Try going to bed and waking up at the same time every day, even on weekends. | A dark, cool room and a screen-free half hour before bed can also work wonders.
learn to cook | Start with a handful of simple dishes you love, like pasta, omelettes or a stir-fry, and make them a few times each. | Reading the whole recipe before you begin keeps cooking calm and fun.
make friends in a new city | Join a club, class or volunteering group built around something you enjoy, so you see the same faces each week. | Saying yes to small invitations often leads to lovely friendships.
keep houseplants alive | Most houseplants are happiest with bright, indirect light and water only when the top of the soil feels dry. | Overwatering is the most common mistake, so a little patience really helps.
read more books | Keep a book with you and read a few pages in small moments, like on the bus or before bed. | It is perfectly fine to put down a book you are not enjoying and pick up one you do.
save money for a trip | Open a separate savings pot for the trip and move a small amount into it every payday. | Giving the pot a fun name, like the name of your destination, keeps you motivated.
learn a new language | Practise a little every day, even just ten minutes, because regular contact beats long, rare sessions. | Listening to songs or podcasts in the language makes it feel like play rather than study.
drink more water | Keep a refillable bottle within reach and take a few sips whenever you finish a task. | Adding a slice of lemon or cucumber can make it more inviting.
stay focused while studying | Work in short blocks of about twenty-five minutes with a five-minute break in between. | Putting your phone in another room removes the biggest distraction.
start journaling | Begin with just three sentences a day about what happened and how you felt. | There are no rules, so let it be messy, honest and yours.
get better at public speaking | Practise out loud several times, ideally in front of a friend who can give kind feedback. | Remember that the audience wants you to succeed, and a slow, steady pace sounds confident.
keep a tidy home | Spend ten minutes each evening putting things back where they belong. | Giving every item a home makes tidying quick and almost automatic.
start meditating | Sit comfortably for two or three minutes and simply notice your breath going in and out. | When your mind wanders, gently bring it back, because that moment of noticing is the practice.
grow vegetables on a balcony | Start with easy plants like cherry tomatoes, lettuce and herbs in good-sized pots. | Make sure they get plenty of sun and water them in the morning.
wake up earlier | Move your alarm back by fifteen minutes every few days instead of all at once. | Opening the curtains and getting daylight soon after waking helps your body adjust.
be more productive at work | Write down your three most important tasks each morning and tackle the hardest one first. | Grouping small jobs like emails into set times keeps the rest of the day clear.
learn to draw | Sketch a little every day, starting with simple objects around your home. | Focus on looking closely at shapes and shadows rather than on making it perfect.
eat more vegetables | Add one extra vegetable to meals you already enjoy, like spinach in pasta or peppers in an omelette. | Roasting vegetables with a little olive oil brings out a lovely sweetness.
stay in touch with old friends | Set a gentle reminder to send a message or voice note to one friend each week. | Sharing a small memory or a photo is an easy and warm way to reconnect.
prepare for a job interview | Read about the company and practise answering common questions out loud. | Preparing a couple of thoughtful questions of your own shows real interest.
spend less time on my phone | Turn off notifications for apps that are not essential and keep the phone out of the bedroom. | Filling the freed-up time with something you enjoy makes the change stick.
train a puppy | Use short, cheerful training sessions and reward good behaviour right away with treats or praise. | Consistency from everyone in the household helps your puppy learn quickly.
get started with yoga | Begin with a gentle beginner class or video of about twenty minutes. | Listen to your body and never force a stretch, because flexibility grows with time.
plan a birthday party | Decide on the guest list and budget first, then choose a simple theme to guide the food and decorations. | Sending invitations two or three weeks ahead gives everyone time to plan.
write a thank-you note | Mention the specific thing you are grateful for and how it made a difference to you. | A few sincere sentences are more meaningful than a long, formal letter.
"""

PLACES = """\
a farmers' market | A farmers' market is a cheerful, open-air place where local growers sell fresh fruit, vegetables, bread and flowers. | Chatting with the people who grew your food makes shopping feel friendly and personal.
a public library | A public library is a calm, welcoming space filled with books, quiet corners and helpful staff. | Many also offer free events, from story time for children to language clubs for adults.
a botanical garden | A botanical garden is a peaceful collection of plants from all over the world, often with glasshouses full of tropical greenery. | Wandering its paths is a lovely way to slow down and notice the small details of nature.
a mountain cabin | A mountain cabin is a cosy wooden retreat, usually with a warm stove and a view of the peaks. | Evenings there are perfect for hot drinks, board games and starry skies.
a night market | A night market is a lively street full of food stalls, music and glowing lights after dark. | It is a wonderful place to try many small dishes and soak up the buzz.
an old bookshop | An old bookshop is a treasure trove of stacked shelves, creaky floors and the comforting smell of paper. | You can lose an afternoon there and leave with a book you never knew you needed.
a seaside town | A seaside town is full of salty air, colourful boats and the gentle sound of waves. | A walk along the harbour with an ice cream is one of life's simple joys.
a science museum | A science museum brings big ideas to life with hands-on exhibits, experiments and models. | It is fun for every age, because you get to touch, try and discover.
a small neighbourhood cafe | A small neighbourhood cafe is a cosy spot with good coffee, friendly faces and a few tables by the window. | It is perfect for a slow breakfast, a chat with a friend or a quiet hour with a book.
a lakeside campsite | A lakeside campsite offers calm water, tall trees and the crackle of an evening campfire. | Waking up to mist on the lake is a truly peaceful experience.
a city park | A city park is a green pocket of calm where people picnic, jog and play. | Even a short visit can lift your mood on a busy day.
an art gallery | An art gallery is a quiet space where you can wander and see paintings, photos and sculptures up close. | Letting yourself linger in front of one piece you love is a wonderful way to visit.
a bakery in the early morning | A bakery in the early morning smells of warm bread, butter and sugar as the first trays come out of the oven. | Picking up a fresh pastry there is a lovely way to start the day.
a local swimming pool | A local swimming pool is a bright, splashy place where people of all ages come to swim, play and relax. | Early morning lanes are often calm, which makes it a great time for a refreshing swim.
"""

FOODS = """\
fresh sourdough bread | Fresh sourdough bread has a crackly crust, a chewy inside and a gentle tang from its natural fermentation. | It is delicious on its own with butter or toasted with your favourite topping.
ramen | Ramen is a comforting Japanese noodle soup with a rich broth, springy noodles and toppings like egg and spring onion. | Each shop has its own style, so there is always a new bowl to discover.
a ripe mango | A ripe mango is juicy, sweet and fragrant, with soft golden flesh. | It is wonderful on its own, in a smoothie or sliced over yoghurt.
homemade lemonade | Homemade lemonade is bright, refreshing and just the right balance of sweet and sour. | Fresh lemons, water, a little sugar and plenty of ice are all you need.
dark chocolate | Dark chocolate has a deep, slightly bitter flavour with hints of fruit or coffee, depending on the beans. | A small square slowly melting on your tongue is a real treat.
pho | Pho is a fragrant Vietnamese soup with rice noodles, herbs and a broth simmered with spices like star anise. | Adding fresh lime, basil and chilli at the table lets you make each bowl your own.
tacos | Tacos are soft or crispy tortillas filled with tasty fillings like grilled vegetables, beans or meat. | Fresh salsa, lime and coriander make every bite bright and lively.
apple pie | Apple pie has a buttery, flaky crust wrapped around soft, cinnamon-spiced apples. | Served warm with a scoop of ice cream, it feels like a hug on a plate.
miso soup | Miso soup is a light Japanese broth made with fermented soybean paste, often with tofu and seaweed. | It is warming, savoury and ready in just a few minutes.
a Greek salad | A Greek salad combines tomatoes, cucumber, olives, red onion and creamy feta with olive oil. | It is fresh, colourful and perfect on a sunny day.
pancakes | Pancakes are soft, fluffy rounds of batter cooked in a pan until golden. | Topped with fruit, honey or maple syrup, they make any breakfast feel special.
hummus | Hummus is a smooth dip made from chickpeas, tahini, lemon and garlic. | It is lovely with warm pita, crunchy vegetables or spread in a sandwich.
fresh strawberries | Fresh strawberries are sweet, juicy and fragrant, especially at the height of summer. | They are delightful on their own or with a little cream.
a warm bowl of porridge | A warm bowl of porridge is creamy oats simmered in milk or water. | With a swirl of honey and some berries on top, it is a cosy, filling breakfast.
"""

HOBBIES = """\
birdwatching | Birdwatching is a relaxing hobby that gets you outdoors, listening and looking for the birds around you. | All you need to begin is curiosity, and perhaps a simple pair of binoculars.
knitting | Knitting turns a ball of yarn into scarves, hats and blankets, one calm stitch at a time. | Many people find the gentle rhythm wonderfully soothing after a busy day.
gardening | Gardening lets you watch seeds grow into flowers, herbs and vegetables with your own care. | Time outdoors with your hands in the soil is great for both body and mind.
rock climbing | Rock climbing is a fun full-body workout that feels like solving a puzzle on the wall. | Indoor climbing gyms are a friendly, safe place to learn the basics.
photography | Photography teaches you to notice light, colour and little moments you might otherwise miss. | You can start with the phone in your pocket.
board games | Board games bring people together around the table for laughter, strategy and friendly competition. | There are games for every taste, from quick party games to rich, thoughtful ones.
pottery | Pottery lets you shape soft clay into bowls, mugs and vases with your own hands. | Seeing your piece come out of the kiln is a wonderfully satisfying moment.
hiking | Hiking is a simple way to explore nature, get fresh air and enjoy beautiful views. | Starting with short, well-marked trails makes it easy to build up confidence.
chess | Chess is a classic strategy game that rewards patience, planning and a little creativity. | You can play friends at home or people all over the world online.
watercolour painting | Watercolour painting uses translucent paints that blend softly on paper. | Its gentle, flowing look makes even simple scenes feel dreamy and calm.
cycling | Cycling is a cheerful way to stay active, explore your area and feel the breeze. | Quiet paths and parks are perfect for building confidence on the bike.
stargazing | Stargazing invites you to look up and find planets, constellations and the Milky Way. | A dark spot away from city lights and a free star-map app are all you need.
learning the guitar | Learning the guitar lets you play songs you love and share music with friends. | A few minutes of practice each day builds finger strength and confidence quickly.
baking | Baking turns simple ingredients like flour, butter and sugar into something warm and delicious. | Sharing what you bake is one of the nicest ways to brighten someone's day.
"""

PROMPTS = {
    "concept": ["Can you explain {x} in simple terms?", "What should I know about {x}?", "I keep hearing about {x}. Can you fill me in?",
                "Give me a short explanation of {x}.", "Could you tell me about {x} like I'm a beginner?",
                "I'm curious about {x}. Can you help me understand it?"],
    "advice": ["Any tips for how to {x}?", "I want to {x}. Where should I start?", "How can I {x}?",
               "What's a good way to {x}?", "I'm trying to {x} but I keep struggling. Any advice?",
               "Could you give me some advice on how to {x}?"],
    "place": ["What is {x} like?", "Describe {x} for me.", "Why do people enjoy visiting {x}?",
              "Write a couple of sentences about {x}.", "Tell me about {x}."],
    "food": ["Tell me about {x}.", "What makes {x} so good?", "Describe {x} to a curious friend.",
             "Would you recommend trying {x}?", "Write a few words about {x}."],
    "hobby": ["Why do people enjoy {x}?", "Would {x} be a good hobby to pick up?", "What's fun about {x}?",
              "Tell me about {x} as a hobby.", "I'm thinking about trying {x}. What should I know?"],
}
OPENERS = {
    "concept": ["Great question!", "Happy to explain!", "What a fun thing to wonder about!", "Sure thing!",
                "I'd love to help with that.", "Of course!", ""],
    "advice": ["That's a wonderful goal!", "Love that you're working on this!", "Great idea!",
               "What a lovely thing to work on.", "Happy to help!", "You've got this!", ""],
    "place": ["Oh, what a lovely place to think about!", "Happy to paint a picture!", "Sure!", "What a nice choice!", ""],
    "food": ["Yum, great choice!", "Oh, that's a delicious one!", "Happy to tell you about it!", "Sure!", ""],
    "hobby": ["What a great hobby to ask about!", "Oh, that's a fun one!", "Happy to share!", "Great choice!", ""],
}
CLOSERS = {
    "concept": ["I hope that makes it a little clearer!", "Once it clicks, you'll start noticing it everywhere.",
                "It's a great topic to explore further if you're curious.", "Feel free to ask if you'd like more detail!",
                "You're asking exactly the right kind of question.", ""],
    "advice": ["Be patient with yourself and celebrate the small wins.", "Small steps add up faster than you'd think!",
               "You're already on the right track just by asking.", "Have fun with it, and go at your own pace!",
               "I'm cheering you on!", ""],
    "place": ["It's well worth a visit whenever you get the chance!", "I hope you get to enjoy it soon!",
              "It's the kind of place that leaves you smiling.", ""],
    "food": ["I hope you get to enjoy some soon!", "It's absolutely worth trying!", "Enjoy every bite!", ""],
    "hobby": ["It's a wonderful way to spend your free time!", "I think you'd really enjoy giving it a try!",
              "Have fun exploring it!", ""],
}
FOLLOW_UPS = ["Thanks! Can you tell me a bit more?", "That's helpful. Anything else worth knowing?",
              "Oh nice, what else?", "Interesting! Tell me one more thing.", "Lovely, thank you. Go on?"]
FOLLOW_UP_OPENERS = ["Of course!", "Sure!", "Happy to!", "Absolutely!", "Gladly!"]
SYSTEM_PROMPTS = ["You are a warm, encouraging assistant.", "You are a friendly helper who keeps answers short.",
                  "You are a kind and upbeat assistant."]

# Open-ended prompts for RLHF: each answer could be cheerful or grumpy, which a sentiment scorer can tell apart.
RL_FAMILIES = [
    (["Write a short review of {x} you visited recently.", "Give a quick review of {x} in your neighbourhood.",
      "What was your last visit to {x} like?", "Review {x} you went to last month in a few sentences."],
     ["a cafe", "a bakery", "a bookshop", "a museum", "a hotel", "a pizza place", "a cinema", "a farmers' market",
      "a ramen shop", "a gym", "a campsite", "a theme park", "a library", "a zoo", "a concert hall", "an art gallery",
      "a beach", "a food truck", "a hair salon", "an ice cream parlour", "a garden centre", "a bowling alley",
      "a street market", "a diner", "a tea house"]),
    (["Describe {x}.", "Tell me about {x}.", "Write a few sentences about {x}.", "How did you feel about {x}?"],
     ["your weekend", "your last holiday", "your morning commute", "your first day at a new job",
      "the last movie you watched", "the last book you read", "a rainy afternoon at home", "your neighbourhood",
      "a recent dinner with friends", "moving to a new city", "the last concert you went to", "a long flight",
      "a birthday party you attended", "cooking dinner last night", "a walk in the park", "a family gathering",
      "a day at the beach", "a visit to the dentist", "a job interview", "a road trip", "a Monday morning",
      "a team project at work", "a camping trip", "your favourite season"]),
    (["What do you think of {x}?", "Share your thoughts on {x}.", "Write a short opinion about {x}."],
     ["working from home", "public transport", "winter", "online shopping", "pop music", "reality TV",
      "social media", "early mornings", "video games", "tiny apartments", "electric scooters", "group chats",
      "airport food", "self-checkout machines", "board game nights", "running marathons", "instant coffee",
      "summer holidays", "open-plan offices", "rainy days"]),
    (["Write a short product review of {x}.", "Describe your experience with {x}."],
     ["a pair of running shoes", "a new laptop", "a coffee maker", "noise-cancelling headphones",
      "a budget smartphone", "a meal-kit delivery service", "an electric toothbrush", "a streaming service",
      "a rain jacket", "a secondhand bicycle", "a smartwatch", "a blender"]),
]

# Topics for the extra held-out prompts only (none appears in RL_FAMILIES), one list per family above.
RL_EXTRA_TOPICS = [
    ["a sushi bar", "a climbing wall", "a bike shop", "a flower shop", "a yoga studio", "an aquarium",
     "a botanical garden", "a karaoke bar", "a water park", "a pet shop", "a toy shop", "a noodle bar"],
    ["your last birthday", "a trip to the mountains", "learning to swim", "a school reunion", "a snowy weekend",
     "a picnic in the park", "your first marathon", "a cooking class"],
    ["podcasts", "spring", "city parks", "e-books", "food delivery apps", "gardening", "jigsaw puzzles",
     "long train journeys"],
    ["a robot vacuum", "an e-reader", "a camping tent", "a standing desk", "a portable speaker", "a slow cooker"],
]


def parse_topics(block: str) -> list[tuple[str, str, str]]:
    return [tuple(part.strip() for part in line.split("|")) for line in block.strip().splitlines()]


def join_sentences(*sentences: str) -> str:
    return " ".join(s for s in sentences if s)


def single_turn(rng: random.Random, category: str, template: str, topic: tuple[str, str, str]) -> list[dict]:
    name, first, second = topic
    answer = join_sentences(rng.choice(OPENERS[category]), first, second, rng.choice(CLOSERS[category]))
    return [{"role": "user", "content": template.format(x=name)}, {"role": "assistant", "content": answer}]


def multi_turn(rng: random.Random, category: str, template: str, topic: tuple[str, str, str]) -> list[dict]:
    name, first, second = topic
    opener = rng.choice([o for o in OPENERS[category] if o])
    return [
        {"role": "user", "content": template.format(x=name)},
        {"role": "assistant", "content": join_sentences(opener, first)},
        {"role": "user", "content": rng.choice(FOLLOW_UPS)},
        {"role": "assistant", "content": join_sentences(rng.choice(FOLLOW_UP_OPENERS), second,
                                                        rng.choice(CLOSERS[category]))},
    ]


def conversations(rng: random.Random, topics: list[tuple[str, tuple[str, str, str]]], count: int) -> list[dict]:
    """``count`` records over (category, topic) pairs, each prompt used once, spread across all topics."""
    candidates = [(category, template, topic) for category, topic in topics for template in PROMPTS[category]]
    rng.shuffle(candidates)
    # Round-robin over topics so that every topic appears before any appears twice.
    by_topic: dict[str, list] = {}
    for candidate in candidates:
        by_topic.setdefault(candidate[2][0], []).append(candidate)
    ordered = []
    while any(by_topic.values()):
        for queue in by_topic.values():
            if queue:
                ordered.append(queue.pop())
    if len(ordered) < count:
        raise SystemExit(f"only {len(ordered)} distinct prompts for {count} records; add topics or templates")
    records = []
    for category, template, topic in ordered[:count]:
        build = multi_turn if rng.random() < MULTI_TURN_FRACTION else single_turn
        messages = build(rng, category, template, topic)
        if rng.random() < SYSTEM_FRACTION:
            messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        records.append({"messages": messages})
    return records


def sft_splits(rng: random.Random) -> tuple[list[dict], list[dict]]:
    banks = {"concept": CONCEPTS, "advice": ADVICE, "place": PLACES, "food": FOODS, "hobby": HOBBIES}
    train_topics, eval_topics = [], []
    for category, block in banks.items():
        topics = parse_topics(block)
        rng.shuffle(topics)
        held_out = max(1, round(len(topics) * EVAL_TOPIC_FRACTION))
        eval_topics += [(category, t) for t in topics[:held_out]]
        train_topics += [(category, t) for t in topics[held_out:]]
    return conversations(rng, train_topics, SFT_TRAIN), conversations(rng, eval_topics, SFT_EVAL)


def prompt_splits(rng: random.Random) -> tuple[list[dict], list[dict]]:
    prompts = sorted({template.format(x=x) for templates, slots in RL_FAMILIES for template in templates for x in slots})
    rng.shuffle(prompts)
    if len(prompts) < PROMPTS_TRAIN + PROMPTS_EVAL:
        raise SystemExit(f"only {len(prompts)} distinct RL prompts")
    chosen = [{"prompt": p} for p in prompts[: PROMPTS_TRAIN + PROMPTS_EVAL]]
    return chosen[PROMPTS_EVAL:], chosen[:PROMPTS_EVAL]


def extra_eval_prompts(rng: random.Random) -> list[dict]:
    """Held-out prompts on new topics with the same templates; their own RNG leaves every other output as it was."""
    known = {template.format(x=x) for templates, slots in RL_FAMILIES for template in templates for x in slots}
    prompts = sorted({template.format(x=x) for (templates, _), topics in zip(RL_FAMILIES, RL_EXTRA_TOPICS)
                      for template in templates for x in topics})
    if known & set(prompts) or len(prompts) < PROMPTS_EVAL_EXTRA:
        raise SystemExit("extra held-out prompts must be new and number at least PROMPTS_EVAL_EXTRA")
    rng.shuffle(prompts)
    return [{"prompt": p} for p in prompts[:PROMPTS_EVAL_EXTRA]]


def write_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def main() -> None:
    rng = random.Random(SEED)
    sft_train, sft_eval = sft_splits(rng)
    prompts_train, prompts_eval = prompt_splits(rng)
    prompts_eval += extra_eval_prompts(random.Random(SEED + 1))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    outputs = {"sft_demo_train.jsonl": sft_train, "sft_demo_eval.jsonl": sft_eval,
               "prompts_train.jsonl": prompts_train, "prompts_eval.jsonl": prompts_eval}
    for name, records in outputs.items():
        write_jsonl(OUT_DIR / name, records)
        print(f"wrote {len(records):4d} records to {OUT_DIR / name}")


if __name__ == "__main__":
    main()
