"""Generate a small, deterministic, synthetic tool-calling chat dataset.

Each output line is one JSON object in the chat format used by Hugging Face
TRL's ``SFTTrainer``::

    {"messages": [
        {"role": "system", "content": "You are a helpful assistant ..."},
        {"role": "user", "content": "What is the weather in Oslo?"},
        {"role": "assistant", "content": "Let me check ... <tool_call>{...}</tool_call>"},
        {"role": "tool", "content": "{\\"condition\\": \\"sunny\\", \\"temp_c\\": 14}"},
        {"role": "assistant", "content": "It is sunny in Oslo ..."}]}

Only the roles ``system``, ``user``, ``assistant`` and ``tool`` are used. A tool
call is plain text inside assistant content: one short lead sentence followed
by ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``. It is followed
by a ``tool`` message holding a JSON result and a final assistant answer that
restates the result. About a fifth of the conversations need no tool, and a
small share use two tools or chain several requests over multiple turns, so
the word-count distribution has a long tail.

Everything is highly patterned (small vocabularies, a few phrasings per
template, consistent formatting) so that a tiny randomly initialised language
model can visibly reduce its loss within a few hundred steps. Tool results are
computed from their arguments only (the calculator really computes, the
weather is a CRC32 hash of the city into fixed lists), so answers always agree
with results.

Output is byte-identical for a given ``--rows``/``--seed``: the only source of
randomness is one ``random.Random(seed)`` instance, hashing uses ``zlib.crc32``
(not the salted built-in ``hash``), all choices are made from tuples, and no
clock or environment is consulted.

Example:
    python scripts/make_tool_chat.py --rows 3000 --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "preflight" / "embedded" / "tool_chat.jsonl"
DEFAULT_ROWS = 3000

Message = dict[str, str]
Conversation = list[Message]

SYSTEM_PROMPTS = (
    "You are a helpful assistant with tools.",
    "You are a helpful assistant that uses tools.",
)

# --------------------------------------------------------------------------
# Small vocabularies.
# --------------------------------------------------------------------------

# City name -> fixed UTC offset in hours (used by the time tool).
CITY_OFFSETS = {
    "Oslo": 1,
    "Paris": 1,
    "Tokyo": 9,
    "Cairo": 2,
    "Lima": -5,
    "Berlin": 1,
    "Sydney": 10,
    "Toronto": -5,
    "Madrid": 1,
    "Nairobi": 3,
    "Seoul": 9,
    "Dublin": 0,
}
CITIES = tuple(CITY_OFFSETS)

# Above freezing; at or below 0 °C the weather tool always reports "snowy".
CONDITIONS = ("sunny", "cloudy", "rainy", "windy", "foggy")

# (from_unit, to_unit, factor); the temperature pairs are handled specially.
UNIT_PAIRS = (
    ("kilometers", "miles", 0.621371),
    ("miles", "kilometers", 1.609344),
    ("kilograms", "pounds", 2.20462),
    ("pounds", "kilograms", 0.453592),
    ("meters", "feet", 3.28084),
    ("feet", "meters", 0.3048),
    ("liters", "gallons", 0.264172),
    ("gallons", "liters", 3.78541),
    ("celsius", "fahrenheit", 0.0),
    ("fahrenheit", "celsius", 0.0),
)
TEMPERATURE_UNITS = ("celsius", "fahrenheit")
UNIT_VALUES = (1, 2, 3, 5, 8, 10, 12, 15, 20, 25, 30, 40, 50, 75, 100)

# Value of one unit of each currency in USD.
CURRENCY_RATES = {
    "USD": 1.0,
    "EUR": 1.08,
    "GBP": 1.27,
    "JPY": 0.0067,
    "CAD": 0.74,
    "AUD": 0.66,
    "CHF": 1.12,
    "NOK": 0.094,
}
CURRENCIES = tuple(CURRENCY_RATES)
CURRENCY_AMOUNTS = (5, 10, 20, 25, 50, 100, 150, 200, 250, 500, 1000)

OPERATORS = ("+", "-", "*", "/")
OPERATOR_WORDS = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}

MINUTES = ("00", "15", "30", "45")

TICKERS = ("ACME", "BOLT", "CRUX", "DYNA", "EVRG", "FLUX", "GLOW", "HELX")
SHARE_COUNTS = (2, 3, 5, 10, 12, 20, 25, 50)

LANGUAGES = ("Spanish", "French", "German", "Italian")
# English word -> translations in the order of LANGUAGES.
DICTIONARY = {
    "hello": ("hola", "bonjour", "hallo", "ciao"),
    "water": ("agua", "eau", "Wasser", "acqua"),
    "house": ("casa", "maison", "Haus", "casa"),
    "cat": ("gato", "chat", "Katze", "gatto"),
    "dog": ("perro", "chien", "Hund", "cane"),
    "book": ("libro", "livre", "Buch", "libro"),
    "friend": ("amigo", "ami", "Freund", "amico"),
    "bread": ("pan", "pain", "Brot", "pane"),
    "sun": ("sol", "soleil", "Sonne", "sole"),
    "tree": ("árbol", "arbre", "Baum", "albero"),
    "apple": ("manzana", "pomme", "Apfel", "mela"),
    "thanks": ("gracias", "merci", "danke", "grazie"),
}
WORDS = tuple(DICTIONARY)

# A tiny made-up knowledge base.
KNOWLEDGE_BASE = {
    "Zorblax": "Zorblax is a small moon made of blue ice.",
    "Quillon": "Quillon is a river town famous for paper boats.",
    "Mirevale": "Mirevale is a valley where the grass is silver.",
    "Tobbit tea": "Tobbit tea is brewed from dried plum leaves.",
    "the Lumen Bridge": "The Lumen Bridge glows green after sunset.",
    "Project Kestrel": "Project Kestrel is a plan to map the old caves.",
    "Orlin stones": "Orlin stones are warm to the touch all year.",
    "the Varn festival": "The Varn festival is held every spring in Quillon.",
}
KB_TOPICS = tuple(KNOWLEDGE_BASE)
KB_UNKNOWN = ("Blenkor", "the Drift Tower", "Pell cheese")

USER_OPENERS = ("Hi!", "Hello.", "Quick question.", "Please help me.")
CLOSERS = (
    "Anything else?",
    "Can I help with anything else?",
    "Let me know if you need more help.",
)
FOLLOW_UPS = ("Also,", "Next question.", "One more thing.", "And now:")

# --------------------------------------------------------------------------
# Message helpers.
# --------------------------------------------------------------------------


def _crc(text: str) -> int:
    """Return a stable, unsalted 32-bit hash of ``text``.

    Args:
        text: Any string.

    Returns:
        The CRC32 of the UTF-8 encoding of ``text``.
    """
    return zlib.crc32(text.encode("utf-8"))


def _num(value: float) -> int | float:
    """Round to two decimals, returning an ``int`` for whole numbers.

    Args:
        value: The number to normalise.

    Returns:
        ``value`` rounded to two decimals, as an ``int`` when it is whole.
    """
    rounded = round(value, 2)
    if rounded == int(rounded):
        return int(rounded)
    return rounded


def _user(text: str) -> Message:
    """Build a user message.

    Args:
        text: The message text.

    Returns:
        A user message.
    """
    return {"role": "user", "content": text}


def _assistant(text: str) -> Message:
    """Build a plain assistant message.

    Args:
        text: The message text.

    Returns:
        An assistant message.
    """
    return {"role": "assistant", "content": text}


def _call(lead: str, name: str, arguments: dict[str, Any]) -> Message:
    """Build an assistant message that calls a tool.

    Args:
        lead: One short sentence said before the call.
        name: The tool name.
        arguments: The tool arguments, in a fixed insertion order.

    Returns:
        An assistant message: ``lead`` then a ``<tool_call>`` block.
    """
    payload = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return _assistant(f"{lead} <tool_call>{payload}</tool_call>")


def _result(result: dict[str, Any]) -> Message:
    """Build a tool message holding a JSON result.

    Args:
        result: The tool result, in a fixed insertion order.

    Returns:
        A tool message whose content is the JSON-encoded result.
    """
    return {"role": "tool", "content": json.dumps(result, ensure_ascii=False)}


def _lead(rng: random.Random, specific: str) -> str:
    """Pick the sentence an assistant says before a tool call.

    Args:
        rng: Random source.
        specific: The tool-specific lead sentence.

    Returns:
        ``specific`` most of the time, otherwise a generic lead.
    """
    return specific if rng.random() < 0.75 else "Sure, one moment."


def _ask(rng: random.Random, options: tuple[str, ...]) -> str:
    """Pick a user phrasing, sometimes with a short opener.

    Args:
        rng: Random source.
        options: Alternative phrasings of the same request.

    Returns:
        The user text.
    """
    text = rng.choice(options)
    if rng.random() < 0.3:
        text = f"{rng.choice(USER_OPENERS)} {text}"
    return text


def _answer(rng: random.Random, options: tuple[str, ...]) -> str:
    """Pick an assistant phrasing, sometimes with a closing question.

    Args:
        rng: Random source.
        options: Alternative phrasings of the same answer.

    Returns:
        The assistant text.
    """
    text = rng.choice(options)
    if rng.random() < 0.5:
        text = f"{text} {rng.choice(CLOSERS)}"
    return text


# --------------------------------------------------------------------------
# Tools: deterministic functions of their arguments.
# --------------------------------------------------------------------------


def tool_get_weather(city: str) -> dict[str, Any]:
    """Return the (fake) current weather for a city.

    Args:
        city: City name.

    Returns:
        ``{"condition", "temp_c"}`` derived from a CRC32 hash of ``city``.
    """
    h = _crc(city)
    temp = (h // 7) % 36 - 5
    condition = "snowy" if temp <= 0 else CONDITIONS[h % len(CONDITIONS)]
    return {"condition": condition, "temp_c": temp}


def tool_convert_units(value: int, from_unit: str, to_unit: str) -> dict[str, Any]:
    """Convert a value between two units.

    Args:
        value: The amount to convert.
        from_unit: Source unit name, e.g. ``"miles"``.
        to_unit: Target unit name, e.g. ``"kilometers"``.

    Returns:
        ``{"result"}`` rounded to two decimals.

    Raises:
        ValueError: If the unit pair is not supported.
    """
    if (from_unit, to_unit) == ("celsius", "fahrenheit"):
        converted = value * 9 / 5 + 32
    elif (from_unit, to_unit) == ("fahrenheit", "celsius"):
        converted = (value - 32) * 5 / 9
    else:
        for src, dst, factor in UNIT_PAIRS:
            if (src, dst) == (from_unit, to_unit):
                converted = value * factor
                break
        else:
            raise ValueError(f"unsupported units: {from_unit} -> {to_unit}")
    return {"result": _num(converted)}


def tool_convert_currency(amount: float, source: str, target: str) -> dict[str, Any]:
    """Convert money between currencies using fixed rates.

    Args:
        amount: The amount in ``source`` currency.
        source: ISO code of the source currency.
        target: ISO code of the target currency.

    Returns:
        ``{"rate", "result"}``; the rate has four significant decimals.
    """
    rate = CURRENCY_RATES[source] / CURRENCY_RATES[target]
    shown = round(rate, 4) if rate >= 0.01 else round(rate, 6)
    return {"rate": shown, "result": _num(amount * rate)}


def tool_calculate(expression: str) -> dict[str, Any]:
    """Evaluate a simple ``"a op b"`` arithmetic expression.

    Args:
        expression: Two numbers separated by one of ``+ - * /``, with spaces.

    Returns:
        ``{"result"}`` rounded to two decimals.

    Raises:
        ValueError: If the expression is malformed.
    """
    left, op, right = expression.split(" ")
    a, b = float(left), float(right)
    if op == "+":
        value = a + b
    elif op == "-":
        value = a - b
    elif op == "*":
        value = a * b
    elif op == "/":
        value = a / b
    else:
        raise ValueError(f"unsupported operator: {op}")
    return {"result": _num(value)}


def tool_get_time(city: str, utc_time: str) -> dict[str, Any]:
    """Convert a UTC time of day to a city's local time.

    Args:
        city: City name (must be in ``CITY_OFFSETS``).
        utc_time: Time of day in UTC as ``"HH:MM"``.

    Returns:
        ``{"timezone", "local_time"}``.
    """
    offset = CITY_OFFSETS[city]
    hours, minutes = utc_time.split(":")
    local_hour = (int(hours) + offset) % 24
    zone = "UTC" if offset == 0 else f"UTC{offset:+d}"
    return {"timezone": zone, "local_time": f"{local_hour:02d}:{minutes}"}


def tool_get_stock_price(ticker: str) -> dict[str, Any]:
    """Return a (fake) stock quote for a ticker.

    Args:
        ticker: Made-up ticker symbol.

    Returns:
        ``{"price", "change_pct"}`` derived from a hash of ``ticker``.
    """
    h = _crc(ticker)
    price = 20 + h % 380 + ((h // 380) % 100) / 100
    change = ((h // 38000) % 81 - 40) / 10
    return {"price": _num(price), "change_pct": _num(change)}


def tool_translate(word: str, language: str) -> dict[str, Any]:
    """Translate an English word using a tiny dictionary.

    Args:
        word: English word (must be in ``DICTIONARY``).
        language: One of ``LANGUAGES``.

    Returns:
        ``{"translation"}``.
    """
    return {"translation": DICTIONARY[word][LANGUAGES.index(language)]}


def tool_search_kb(query: str) -> dict[str, Any]:
    """Look a topic up in the tiny made-up knowledge base.

    Args:
        query: The topic to search for.

    Returns:
        ``{"result"}``; ``result`` is ``None`` when nothing matches.
    """
    return {"result": KNOWLEDGE_BASE.get(query)}


# --------------------------------------------------------------------------
# Single-tool tasks: user request, tool call, tool result, answer.
# --------------------------------------------------------------------------


def task_weather(rng: random.Random) -> Conversation:
    """Ask for the weather in one city.

    Args:
        rng: Random source.

    Returns:
        The task messages.
    """
    city = rng.choice(CITIES)
    ask = _ask(
        rng,
        (
            f"What is the weather in {city}?",
            f"How is the weather in {city} today?",
            f"Can you check the weather in {city} for me?",
            f"Is it warm in {city} right now?",
        ),
    )
    res = tool_get_weather(city)
    cond, temp = res["condition"], res["temp_c"]
    answer = _answer(
        rng,
        (
            f"It is {cond} in {city} with a temperature of {temp} °C.",
            f"The weather in {city} is {cond} and {temp} °C.",
            f"Right now {city} is {cond}, at {temp} °C.",
        ),
    )
    lead = _lead(rng, f"Let me check the weather in {city}.")
    return [
        _user(ask),
        _call(lead, "get_weather", {"city": city}),
        _result(res),
        _assistant(answer),
    ]


def task_units(rng: random.Random) -> Conversation:
    """Ask for a unit conversion.

    Args:
        rng: Random source.

    Returns:
        The task messages.
    """
    src, dst, _ = rng.choice(UNIT_PAIRS)
    value = rng.choice(UNIT_VALUES)
    res = tool_convert_units(value, src, dst)
    out = res["result"]
    if src in TEMPERATURE_UNITS:
        src_text = f"{value} degrees {src.capitalize()}"
        dst_text = f"degrees {dst.capitalize()}"
        out_text = f"{out} degrees {dst.capitalize()}"
    else:
        src_text, dst_text, out_text = f"{value} {src}", dst, f"{out} {dst}"
    ask = _ask(
        rng,
        (
            f"Convert {src_text} to {dst_text}.",
            f"How many {dst_text} is {src_text}?",
            f"What is {src_text} in {dst_text}?",
            f"Please convert {src_text} into {dst_text}.",
        ),
    )
    answer = _answer(
        rng,
        (
            f"{src_text} is {out_text}.",
            f"That is {out_text}.",
            f"{src_text} equals {out_text}.",
        ),
    )
    lead = _lead(rng, f"Let me convert {src} to {dst}.")
    return [
        _user(ask),
        _call(lead, "convert_units", {"value": value, "from": src, "to": dst}),
        _result(res),
        _assistant(answer),
    ]


def task_currency(rng: random.Random) -> Conversation:
    """Ask for a currency conversion.

    Args:
        rng: Random source.

    Returns:
        The task messages.
    """
    amount = rng.choice(CURRENCY_AMOUNTS)
    source, target = rng.sample(CURRENCIES, 2)
    ask = _ask(
        rng,
        (
            f"Convert {amount} {source} to {target}.",
            f"How much is {amount} {source} in {target}?",
            f"What is {amount} {source} worth in {target}?",
            f"I have {amount} {source}. How much is that in {target}?",
        ),
    )
    res = tool_convert_currency(amount, source, target)
    answer = _answer(
        rng,
        (
            f"{amount} {source} is {res['result']} {target}.",
            f"That is {res['result']} {target}, at a rate of {res['rate']}.",
            f"{amount} {source} equals about {res['result']} {target}.",
        ),
    )
    lead = _lead(rng, f"Let me convert {source} to {target}.")
    return [
        _user(ask),
        _call(lead, "convert_currency", {"amount": amount, "from": source, "to": target}),
        _result(res),
        _assistant(answer),
    ]


def _random_expression(rng: random.Random) -> str:
    """Draw a random ``"a op b"`` expression with small integers.

    Args:
        rng: Random source.

    Returns:
        The expression, e.g. ``"17 * 23"``.
    """
    op = rng.choice(OPERATORS)
    if op == "*":
        a, b = rng.randint(2, 99), rng.randint(2, 99)
    elif op == "/":
        b = rng.randint(2, 20)
        a = b * rng.randint(2, 50) if rng.random() < 0.5 else rng.randint(10, 999)
    else:
        a, b = rng.randint(10, 999), rng.randint(2, 999)
    return f"{a} {op} {b}"


def task_calculate(rng: random.Random) -> Conversation:
    """Ask for an arithmetic result.

    Args:
        rng: Random source.

    Returns:
        The task messages.
    """
    expression = _random_expression(rng)
    a, op, b = expression.split(" ")
    spoken = f"{a} {OPERATOR_WORDS[op]} {b}"
    ask = _ask(
        rng,
        (
            f"What is {spoken}?",
            f"Calculate {expression}.",
            f"Can you compute {expression} for me?",
            f"What do I get for {expression}?",
        ),
    )
    res = tool_calculate(expression)
    answer = _answer(
        rng,
        (
            f"{expression} = {res['result']}.",
            f"The result is {res['result']}.",
            f"{spoken} is {res['result']}.",
        ),
    )
    lead = _lead(rng, "Let me calculate that.")
    return [
        _user(ask),
        _call(lead, "calculate", {"expression": expression}),
        _result(res),
        _assistant(answer),
    ]


def task_time(rng: random.Random) -> Conversation:
    """Ask for the local time in a city given a UTC time.

    Args:
        rng: Random source.

    Returns:
        The task messages.
    """
    city = rng.choice(CITIES)
    utc_time = f"{rng.randrange(24):02d}:{rng.choice(MINUTES)}"
    ask = _ask(
        rng,
        (
            f"What time is it in {city} when it is {utc_time} UTC?",
            f"If it is {utc_time} UTC, what is the local time in {city}?",
            f"It is {utc_time} UTC. What time is it in {city}?",
        ),
    )
    res = tool_get_time(city, utc_time)
    local, zone = res["local_time"], res["timezone"]
    answer = _answer(
        rng,
        (
            f"It is {local} in {city}, which uses {zone}.",
            f"When it is {utc_time} UTC, it is {local} in {city}.",
            f"The local time in {city} is {local} ({zone}).",
        ),
    )
    lead = _lead(rng, f"Let me look up the time in {city}.")
    return [
        _user(ask),
        _call(lead, "get_time", {"city": city, "utc_time": utc_time}),
        _result(res),
        _assistant(answer),
    ]


def task_stock(rng: random.Random) -> Conversation:
    """Ask for a stock price.

    Args:
        rng: Random source.

    Returns:
        The task messages.
    """
    ticker = rng.choice(TICKERS)
    ask = _ask(
        rng,
        (
            f"What is the stock price of {ticker}?",
            f"How is {ticker} trading today?",
            f"Give me the current price of {ticker}.",
        ),
    )
    res = tool_get_stock_price(ticker)
    price, change = res["price"], res["change_pct"]
    if change > 0:
        move = f"up {change}%"
    elif change < 0:
        move = f"down {-change}%"
    else:
        move = "flat"
    answer = _answer(
        rng,
        (
            f"{ticker} is trading at {price} dollars, {move} today.",
            f"The price of {ticker} is {price} dollars ({move}).",
        ),
    )
    lead = _lead(rng, f"Let me look up {ticker}.")
    return [
        _user(ask),
        _call(lead, "get_stock_price", {"ticker": ticker}),
        _result(res),
        _assistant(answer),
    ]


def task_translate(rng: random.Random) -> Conversation:
    """Ask for the translation of one word.

    Args:
        rng: Random source.

    Returns:
        The task messages.
    """
    word = rng.choice(WORDS)
    language = rng.choice(LANGUAGES)
    ask = _ask(
        rng,
        (
            f"How do you say {word} in {language}?",
            f"Translate {word} into {language}.",
            f"What is the {language} word for {word}?",
        ),
    )
    res = tool_translate(word, language)
    translation = res["translation"]
    answer = _answer(
        rng,
        (
            f"In {language}, {word} is {translation}.",
            f"The {language} word for {word} is {translation}.",
        ),
    )
    lead = _lead(rng, f"Let me translate {word} into {language}.")
    return [
        _user(ask),
        _call(lead, "translate", {"word": word, "language": language}),
        _result(res),
        _assistant(answer),
    ]


def task_search(rng: random.Random) -> Conversation:
    """Ask the knowledge base about a topic (sometimes an unknown one).

    Args:
        rng: Random source.

    Returns:
        The task messages.
    """
    topic = rng.choice(KB_UNKNOWN) if rng.random() < 0.15 else rng.choice(KB_TOPICS)
    ask = _ask(
        rng,
        (
            f"Tell me about {topic}.",
            f"What does the knowledge base say about {topic}?",
            f"Search the knowledge base for {topic}.",
            f"What do you know about {topic}?",
        ),
    )
    res = tool_search_kb(topic)
    fact = res["result"]
    if fact is None:
        options: tuple[str, ...] = (
            f"I could not find anything about {topic} in the knowledge base.",
            f"The knowledge base has no entry for {topic}.",
        )
    else:
        options = (
            f"According to the knowledge base, {fact}",
            f"Here is what I found: {fact}",
            fact,
        )
    lead = _lead(rng, "Let me search the knowledge base.")
    return [
        _user(ask),
        _call(lead, "search_kb", {"query": topic}),
        _result(res),
        _assistant(_answer(rng, options)),
    ]


SINGLE_TASKS: tuple[Callable[[random.Random], Conversation], ...] = (
    task_weather,
    task_units,
    task_currency,
    task_calculate,
    task_time,
    task_stock,
    task_translate,
    task_search,
)

# --------------------------------------------------------------------------
# Direct answers (no tool needed).
# --------------------------------------------------------------------------

CAPABILITIES = (
    "I can check the weather, convert units and currencies, do math, tell the "
    "time in other cities, look up stock prices, translate words and search "
    "the knowledge base."
)

# (alternative user phrasings, assistant answer)
DIRECT_QA: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("Hi!", "Hello there.", "Good morning!", "Hey, are you there?"),
        f"Hello! {CAPABILITIES} What do you need today?",
    ),
    (
        ("What can you do?", "Which tools do you have?", "How can you help me?"),
        f"{CAPABILITIES} Just ask, and I will call the right tool for you.",
    ),
    (
        ("Thank you!", "Thanks a lot.", "Great, thanks."),
        (
            "You are welcome! I am happy to help. Let me know if you need "
            "anything else, like the weather or a quick calculation."
        ),
    ),
    (
        ("How many days are in a week?", "How many days does a week have?"),
        (
            "A week has 7 days: Monday, Tuesday, Wednesday, Thursday, Friday, "
            "Saturday and Sunday. No tool is needed for that."
        ),
    ),
    (
        ("How many minutes are in an hour?", "How many minutes does an hour have?"),
        (
            "An hour has 60 minutes, and each minute has 60 seconds, so an hour "
            "has 3600 seconds. No tool is needed for that."
        ),
    ),
    (
        ("How many months are in a year?", "How many months does a year have?"),
        ("A year has 12 months, from January to December. Most years have 365 days. No tool is needed for that."),
    ),
    (
        ("What color is the sky on a clear day?", "Why is the sky blue?"),
        (
            "On a clear day the sky is blue, because air scatters blue light more "
            "than red light. No tool is needed for that."
        ),
    ),
    (
        (
            "Can you book a flight for me?",
            "Please order a pizza for me.",
            "Can you send an email for me?",
        ),
        f"Sorry, I cannot do that. {CAPABILITIES}",
    ),
    (
        ("Tell me a joke.", "Do you know a joke?"),
        ("Why did the calculator stay calm? Because it always knew the answer. I hope that made you smile!"),
    ),
    (
        ("How do I ask about the weather?", "Which tool gives the weather?"),
        (
            "I use the get_weather tool. Just name a city, for example: What is "
            "the weather in Oslo? I will call the tool and tell you the result."
        ),
    ),
)


def direct_conversation(rng: random.Random) -> Conversation:
    """Build a conversation that needs no tool.

    Args:
        rng: Random source.

    Returns:
        User/assistant messages (without the system prompt).
    """
    messages: Conversation = []
    turns = 1 if rng.random() < 0.8 else 2
    for _ in range(turns):
        questions, answer = rng.choice(DIRECT_QA)
        messages += [_user(rng.choice(questions)), _assistant(answer)]
    return messages


# --------------------------------------------------------------------------
# Two-tool conversations: one request that needs two tool calls.
# --------------------------------------------------------------------------


def multi_weather_compare(rng: random.Random) -> Conversation:
    """Compare the weather in two cities (two tool calls).

    Args:
        rng: Random source.

    Returns:
        Conversation messages (without the system prompt).
    """
    city_a, city_b = rng.sample(CITIES, 2)
    ask = _ask(
        rng,
        (
            f"Which is warmer right now, {city_a} or {city_b}?",
            f"Compare the weather in {city_a} and {city_b}.",
        ),
    )
    res_a, res_b = tool_get_weather(city_a), tool_get_weather(city_b)
    ta, tb = res_a["temp_c"], res_b["temp_c"]
    if ta > tb:
        verdict = f"{city_a} is warmer by {ta - tb} °C."
    elif tb > ta:
        verdict = f"{city_b} is warmer by {tb - ta} °C."
    else:
        verdict = "Both cities have the same temperature."
    answer = f"{city_a} is {res_a['condition']} at {ta} °C, and {city_b} is {res_b['condition']} at {tb} °C. {verdict}"
    return [
        _user(ask),
        _call(f"Let me check {city_a} first.", "get_weather", {"city": city_a}),
        _result(res_a),
        _call(f"Now let me check {city_b}.", "get_weather", {"city": city_b}),
        _result(res_b),
        _assistant(answer),
    ]


def multi_currency_split(rng: random.Random) -> Conversation:
    """Convert currency, then split the result between people.

    Args:
        rng: Random source.

    Returns:
        Conversation messages (without the system prompt).
    """
    amount = rng.choice(CURRENCY_AMOUNTS)
    source, target = rng.sample(CURRENCIES, 2)
    people = rng.randint(2, 6)
    ask = _ask(
        rng,
        (
            (f"Convert {amount} {source} to {target} and split it between {people} people."),
            (f"We have {amount} {source} to share among {people} friends. How much does each get in {target}?"),
        ),
    )
    res_c = tool_convert_currency(amount, source, target)
    expression = f"{res_c['result']} / {people}"
    res_d = tool_calculate(expression)
    answer = (
        f"{amount} {source} is {res_c['result']} {target}. Split between {people} "
        f"people, each gets {res_d['result']} {target}."
    )
    args = {"amount": amount, "from": source, "to": target}
    return [
        _user(ask),
        _call(f"Let me convert {source} to {target} first.", "convert_currency", args),
        _result(res_c),
        _call("Now let me split it.", "calculate", {"expression": expression}),
        _result(res_d),
        _assistant(answer),
    ]


def multi_stock_cost(rng: random.Random) -> Conversation:
    """Look up a stock price, then compute the cost of several shares.

    Args:
        rng: Random source.

    Returns:
        Conversation messages (without the system prompt).
    """
    ticker = rng.choice(TICKERS)
    shares = rng.choice(SHARE_COUNTS)
    ask = _ask(
        rng,
        (
            f"What would {shares} shares of {ticker} cost right now?",
            f"How much do I need to buy {shares} shares of {ticker}?",
        ),
    )
    res_s = tool_get_stock_price(ticker)
    expression = f"{res_s['price']} * {shares}"
    res_c = tool_calculate(expression)
    answer = f"{ticker} trades at {res_s['price']} dollars, so {shares} shares cost {res_c['result']} dollars."
    return [
        _user(ask),
        _call(f"Let me look up {ticker} first.", "get_stock_price", {"ticker": ticker}),
        _result(res_s),
        _call("Now let me calculate the cost.", "calculate", {"expression": expression}),
        _result(res_c),
        _assistant(answer),
    ]


def multi_translate_two(rng: random.Random) -> Conversation:
    """Translate two words into the same language.

    Args:
        rng: Random source.

    Returns:
        Conversation messages (without the system prompt).
    """
    word_a, word_b = rng.sample(WORDS, 2)
    language = rng.choice(LANGUAGES)
    ask = _ask(
        rng,
        (
            f"How do you say {word_a} and {word_b} in {language}?",
            f"Translate {word_a} and {word_b} into {language}.",
        ),
    )
    res_a, res_b = tool_translate(word_a, language), tool_translate(word_b, language)
    answer = f"In {language}, {word_a} is {res_a['translation']} and {word_b} is {res_b['translation']}."
    return [
        _user(ask),
        _call(
            f"Let me translate {word_a} first.",
            "translate",
            {"word": word_a, "language": language},
        ),
        _result(res_a),
        _call(
            f"Now let me translate {word_b}.",
            "translate",
            {"word": word_b, "language": language},
        ),
        _result(res_b),
        _assistant(answer),
    ]


MULTI_TASKS: tuple[Callable[[random.Random], Conversation], ...] = (
    multi_weather_compare,
    multi_currency_split,
    multi_stock_cost,
    multi_translate_two,
)


def chain_conversation(rng: random.Random) -> Conversation:
    """Build a long multi-turn conversation of several tool requests.

    Args:
        rng: Random source.

    Returns:
        Conversation messages (without the system prompt).
    """
    messages: Conversation = []
    steps = rng.choice((3, 4, 5, 6))
    for index in range(steps):
        part = rng.choice(MULTI_TASKS)(rng) if rng.random() < 0.25 else rng.choice(SINGLE_TASKS)(rng)
        if index > 0 and rng.random() < 0.5:
            part[0] = _user(f"{rng.choice(FOLLOW_UPS)} {part[0]['content']}")
        messages += part
    if rng.random() < 0.5:
        messages += [
            _user("Thanks, that is all."),
            _assistant("You are welcome! Have a nice day."),
        ]
    return messages


# --------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------


def make_row(rng: random.Random) -> dict[str, Conversation]:
    """Build one conversation row.

    About 20% of rows need no tool, 74% use one tool, 5% need two tool calls
    for one request and 1% chain three to six requests over multiple turns.

    Args:
        rng: Random source.

    Returns:
        ``{"messages": [...]}`` in TRL chat format.
    """
    system = {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}
    kind = rng.random()
    if kind < 0.20:
        body = direct_conversation(rng)
    elif kind < 0.94:
        body = rng.choice(SINGLE_TASKS)(rng)
    elif kind < 0.99:
        body = rng.choice(MULTI_TASKS)(rng)
    else:
        body = chain_conversation(rng)
    return {"messages": [system, *body]}


def generate(rows: int, seed: int) -> list[dict]:
    """Generate the dataset in memory.

    Args:
        rows: Number of conversations to produce.
        seed: Seed for the private ``random.Random`` instance.

    Returns:
        A list of ``{"messages": [...]}`` rows; identical for equal arguments.
    """
    rng = random.Random(seed)
    return [make_row(rng) for _ in range(rows)]


def word_count(row: dict) -> int:
    """Count whitespace-separated words over all messages of a row.

    Args:
        row: A ``{"messages": [...]}`` row.

    Returns:
        The total number of words in all message contents.
    """
    return sum(len(message["content"].split()) for message in row["messages"])


def write_jsonl(rows: list[dict], out: Path) -> None:
    """Write rows as JSON Lines with ``\\n`` line endings.

    Args:
        rows: Rows to write.
        out: Destination path; parent directories are created.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse command-line arguments.

    Args:
        argv: Argument list; ``sys.argv[1:]`` when ``None``.

    Returns:
        The parsed arguments.
    """
    parser = argparse.ArgumentParser(description="Generate a deterministic synthetic tool-calling chat dataset.")
    parser.add_argument(
        "--rows",
        type=int,
        default=DEFAULT_ROWS,
        help="number of conversations (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output JSONL path (default: preflight/embedded/tool_chat.jsonl)",
    )
    args = parser.parse_args(argv)
    if args.rows < 0:
        parser.error("--rows must be non-negative")
    return args


def main(argv: list[str] | None = None) -> None:
    """Generate the dataset and write it to disk.

    Args:
        argv: Argument list; ``sys.argv[1:]`` when ``None``.
    """
    args = parse_args(argv)
    rows = generate(args.rows, args.seed)
    write_jsonl(rows, args.out)
    counts = sorted(word_count(row) for row in rows)
    summary = ""
    if counts:
        median = counts[len(counts) // 2]
        summary = f" (words: min {counts[0]}, median {median}, max {counts[-1]})"
    print(f"wrote {len(rows)} rows to {args.out}{summary}")


if __name__ == "__main__":
    main()
