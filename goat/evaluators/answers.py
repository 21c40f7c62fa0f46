"""Answer extraction and scoring for the NLG benchmarks of the GOAT paper (spec §6 CR, Math, Code).

Pure functions on strings: no model, no tokenizer. Each function documents where it follows the reference
protocol (LLM-Adapters, as used by Facico/GOAT-PEFT) and where goat deliberately fixes it (spec §9, bug 12).
"""

from __future__ import annotations

import math
import re

# LLM-Adapters keyword per task family (reference: `extract_cs_answer` in GOAT-PEFT `peta/tasks`).
_KEYWORDS: dict[str, tuple[str, ...]] = {
    "boolq": ("true", "false"),
    "piqa": ("solution1", "solution2"),
    "answer": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "hellaswag": ("ending1", "ending2", "ending3", "ending4"),
    "winogrande": ("option1", "option2"),
}

# Every accepted dataset name (data folder names of LLM-Adapters and the short task names) -> keyword family.
_DATASET_FAMILY: dict[str, str] = {
    "boolq": "boolq",
    "piqa": "piqa",
    "social_i_qa": "answer",
    "siqa": "answer",
    "arc-easy": "answer",
    "arc_e": "answer",
    "arc-challenge": "answer",
    "arc_c": "answer",
    "openbookqa": "answer",
    "obqa": "answer",
    "hellaswag": "hellaswag",
    "winogrande": "winogrande",
}

_PATTERNS: dict[str, re.Pattern[str]] = {
    family: re.compile("|".join(words), flags=re.IGNORECASE) for family, words in _KEYWORDS.items()
}

RESPONSE_MARKER = "### Response:"

# LLM-Adapters `evaluate.py` counts a math answer correct when |label - predict| <= miss = 0.001.
NUMBER_TOLERANCE = 1e-3


def commonsense_datasets() -> list[str]:
    """The dataset names that `extract_commonsense_answer` accepts (case-insensitive)."""
    return sorted(_DATASET_FAMILY)


def _family(dataset: str) -> str:
    """Keyword family of a dataset name; ValueError listing the valid names if it is unknown."""
    key = dataset.strip().lower()
    key = key.split("/")[-1]  # hub ids such as "allenai/social_i_qa" or "Rowan/hellaswag"
    if key not in _DATASET_FAMILY:
        raise ValueError(f"unknown commonsense dataset {dataset!r}; expected one of {commonsense_datasets()}")
    return _DATASET_FAMILY[key]


def extract_commonsense_answer(text: str, dataset: str) -> str | None:
    """The predicted label of a commonsense generation, by the LLM-Adapters protocol (spec §6 CR).

    Takes the text after the last "### Response:" when the generation still contains the prompt, then
    returns the FIRST occurrence of the dataset's answer keyword, lower-cased (e.g. "answer3"), or None
    when no keyword occurs. Matching is case-insensitive, so "Answer3" counts; the reference regex is
    case-sensitive and would miss it. Like the reference there are no word boundaries ("untrue" reads
    as "true"), which keeps the protocol comparable with published numbers.
    """
    family = _family(dataset)
    if RESPONSE_MARKER in text:
        text = text.rsplit(RESPONSE_MARKER, 1)[1]
    match = _PATTERNS[family].search(text)
    return match.group(0).lower() if match else None


# A number as written in GSM8K solutions: optional sign and "$" (adjacent: "10 - 5" has no -5), thousands
# commas only in groups of three ("1,234" but not the list "1, 2"), optional decimals, optional "/den" ("3/4").
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>-)?\$?(?P<sign2>-)?"
    r"(?P<int>\d{1,3}(?:,\d{3})+|\d+)?(?P<frac>\.\d+)?"
    r"(?:\s*/\s*(?P<den>\d+)(?![\d.]))?"
)
_ANSWER_IS = re.compile(r"the answer is\s*:?", flags=re.IGNORECASE)


def _numbers(text: str) -> list[float]:
    """Every number in `text`, in order, as floats ("$1,234.5" -> 1234.5, "-3/4" -> -0.75)."""
    values = []
    for m in _NUMBER.finditer(text):
        if m.group("int") is None and m.group("frac") is None:
            continue  # the pattern also matches an empty string or a lone "-" / "$"
        value = float((m.group("int") or "0").replace(",", "") + (m.group("frac") or ""))
        den = m.group("den")
        if den is not None and int(den) != 0:
            value /= int(den)
        if m.group("sign") or m.group("sign2"):
            value = -value
        values.append(value)
    return values


def extract_gsm8k_answer(text: str) -> float | None:
    """The predicted number of a GSM8K generation; goat's fix of the reference's "####"-only reader (§9 bug 12).

    Order of precedence, each time reading the FIRST number after the LAST marker:
    1. "The answer is X" / "The answer is: X" (MetaMathQA and LLM-Adapters style, case-insensitive);
    2. "#### X" (the official GSM8K style);
    3. otherwise the last number anywhere in the text.
    Numbers may carry a sign, "$", thousands commas, decimals and a "/den" fraction ("3/4" -> 0.75); a
    trailing period or unit is ignored. Returns None when the chosen span has no number (the reference
    scores such an answer as 0, which can be accidentally correct when the gold answer is 0).
    """
    for marker in (_ANSWER_IS, re.compile(r"####")):
        spans = list(marker.finditer(text))
        if spans:
            found = _numbers(text[spans[-1].end() :])
            if found:
                return found[0]
    found = _numbers(text)
    return found[-1] if found else None


def gsm8k_gold(answer_field: str) -> float:
    """The gold number of a GSM8K answer: the official "... #### 1,234" or LLM-Adapters' bare "576.0"."""
    tail = answer_field.rsplit("####", 1)[-1] if "####" in answer_field else answer_field
    found = _numbers(tail)
    if not found:
        raise ValueError(f"no number in the GSM8K gold answer {answer_field[-80:]!r}; expected '#### N' or 'N'")
    return found[0]


def numbers_equal(a: float | None, b: float | None, tol: float = NUMBER_TOLERANCE) -> bool:
    """True when both are numbers within `tol` (LLM-Adapters' 0.001); a missing prediction is never equal."""
    if a is None or b is None:
        return False
    return abs(a - b) <= tol


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem (Chen et al. 2021, Codex paper, Eq. 1): 1 - C(n-c, k) / C(n, k).

    n samples were drawn and c of them passed. Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which avoids
    the huge binomials; when fewer than k samples fail, every k-subset contains a pass and the value is 1.
    """
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise TypeError(f"pass_at_k takes integers, got n={n!r}, c={c!r}, k={k!r}")
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs n >= 1, 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
