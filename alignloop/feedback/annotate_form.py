"""The annotate page's form: turn fields into the API's answer, check the text limits with a message the
annotator can act on, and keep very long texts out of the page (they load on demand)."""

from __future__ import annotations

from starlette.datastructures import FormData

from alignloop.feedback.answers import LETTERS, AnswerError
from alignloop.feedback.limits import MAX_EDITED_RESPONSE_CHARS, MAX_RATIONALE_CHARS

LONG_RESPONSE_CHARS = 1500  # longer responses start collapsed (phones)
DISPLAY_CHARS = 20_000  # beyond this a text is cut on the page, with a link that shows all of it
MARKDOWN_MAX_CHARS = 200_000  # the full view renders longer texts as plain text (Markdown would take seconds)
TEXT_FIELDS = {"rationale": ("Your reason", MAX_RATIONALE_CHARS),
               "edited_response": ("The ideal response", MAX_EDITED_RESPONSE_CHARS)}


def _letters(positions: list[int]) -> str:
    return ", ".join(LETTERS[p] for p in positions)


def form_answer(task_type: str, form: FormData, k: int, criteria: list[str]) -> dict:
    """Turn the page's form fields into the API's answer object; a missing value names what is missing."""
    if task_type == "pairwise":
        if not form.get("choice"):
            raise AnswerError("choose A, B, tie or both bad")
        return {"choice": form.get("choice")}
    if task_type == "criteria":
        missing = [c for c in criteria if not form.get(f"crit_{c}")]
        if missing:
            raise AnswerError(f"choose A, B or tie for: {', '.join(missing)}")
        return {"criteria": {c: form.get(f"crit_{c}") for c in criteria}}
    field = "rank" if task_type == "ranking" else "score"
    raw = [str(form.get(f"{field}_{pos}") or "").strip() for pos in range(k)]
    missing = [pos for pos, v in enumerate(raw) if not v]
    if missing:
        what = "place every response" if task_type == "ranking" else "score every response"
        raise AnswerError(f"{what}: {_letters(missing)} {'has' if len(missing) == 1 else 'have'} no {field} yet")
    try:
        values = [int(v) for v in raw]
    except ValueError:
        raise AnswerError(f"every response needs a whole-number {field}") from None
    if task_type == "likert":
        return {"scores": values}
    if any(not 1 <= v <= k for v in values):
        raise AnswerError(f"ranks go from 1 to {k}")
    # Equal rank numbers are a tie: group positions by their rank, best (lowest number) first.
    return {"ranking": [[p for p in range(k) if values[p] == r] for r in sorted(set(values))]}


def text_field(form: FormData, name: str) -> str:
    """A free-text field, refused (never cut) when over its limit."""
    value = str(form.get(name) or "")
    label, limit = TEXT_FIELDS[name]
    if len(value) > limit:
        raise AnswerError(f"{label} is {len(value):,} characters; the limit is {limit:,}. "
                          "Shorten it and submit again (nothing was saved).")
    return value


def given_values(form: FormData) -> dict[str, str]:
    """What the annotator entered, to fill the form again when a submit is refused."""
    return {k: str(v) for k, v in form.items() if k != "csrf_token" and isinstance(v, str)}


def for_display(view: dict) -> dict:
    """The assignment view with very long texts cut for the page; each cut one says how much is left."""
    def cut(text: str) -> dict:
        return {"text": text[:DISPLAY_CHARS], "chars": len(text), "cut": len(text) > DISPLAY_CHARS}

    return {**view, "prompt_part": cut(view["prompt"]),
            "responses": [{**r, **cut(r["text"])} for r in view["responses"]]}


def answer_form_values(task_type: str, answer: dict, rationale: str | None, edited: str | None) -> dict[str, str]:
    """A stored answer as the form fields that would give it (in displayed positions): fills the edit form."""
    values = {"rationale": rationale or "", "edited_response": edited or ""}
    if task_type == "pairwise":
        values["choice"] = answer["choice"]
    elif task_type == "criteria":
        values.update({f"crit_{c}": v for c, v in answer["criteria_display"].items()})
    elif task_type == "ranking":
        groups = answer["ranking_display"]
        values.update({f"rank_{p}": str(rank) for rank, group in enumerate(groups, 1) for p in group})
    elif task_type == "likert":
        values.update({f"score_{p}": str(s) for p, s in enumerate(answer["scores_display"])})
    return values


def answer_summary(task_type: str, answer: dict) -> str:
    """A stored answer in one line, as the annotator saw the responses ("B > A = C", "A is better")."""
    if task_type == "pairwise":
        return {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both bad"}[answer["choice"]]
    if task_type == "criteria":
        return " · ".join(f"{c}: {v}" for c, v in answer["criteria_display"].items())
    if task_type == "ranking":
        return " > ".join(" = ".join(LETTERS[p] for p in group) for group in answer["ranking_display"])
    return " · ".join(f"{LETTERS[p]} {s}" for p, s in enumerate(answer["scores_display"]))
