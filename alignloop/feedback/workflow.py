"""An annotator's way through a project: progress with what is left, undo of the last answer or skip, and
edits of any of one's own earlier labels."""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alignloop.feedback.answers import canonical_answer
from alignloop.feedback.models import Assignment, Item, Label, Project, User, utcnow
from alignloop.feedback.store import Conflict, NotFound, get_project, may_annotate, own_assignment

FINISHED = ("done", "skipped", "flagged")
MAX_HISTORY = 20  # earlier versions kept per label: the original and the latest ones


def progress(session: Session, user: User, project: Project) -> dict:
    """Counts of the user's answers, and ``left``: the items still open to them (their open one plus
    the items they have not had whose overlap is not full; others may take some of those first)."""
    def count(*conds) -> int:  # type: ignore[no-untyped-def]
        return session.scalar(select(func.count()).select_from(Assignment).where(
            Assignment.user_id == user.id, Assignment.project_id == project.id, *conds)) or 0

    total_regular = session.scalar(select(func.count()).select_from(Item).where(
        Item.project_id == project.id, Item.is_gold.is_(False))) or 0
    seen = select(Assignment.item_id).where(Assignment.user_id == user.id, Assignment.project_id == project.id)
    used = (select(func.count()).select_from(Assignment)
            .where(Assignment.item_id == Item.id, Assignment.slot.is_not(None)).scalar_subquery())
    fresh = session.scalar(select(func.count()).select_from(Item).where(
        Item.project_id == project.id, Item.is_gold.is_(False), Item.id.not_in(seen), used < project.overlap)) or 0
    done, skipped, flagged = (count(Assignment.status == s) for s in FINISHED)
    left = fresh + count(Assignment.status == "open") if project.status == "ready" else 0
    return {"done": done, "skipped": skipped, "flagged": flagged, "left": left,
            "total_items": total_regular, "target_labels": total_regular * project.overlap}


def last_finished(session: Session, user: User, project_id: int) -> Assignment | None:
    """The user's most recently finished assignment in the project: the one "Undo" takes back."""
    return session.scalar(
        select(Assignment).where(Assignment.user_id == user.id, Assignment.project_id == project_id,
                                 Assignment.status.in_(FINISHED))
        .order_by(Assignment.completed_at.desc(), Assignment.id.desc()).limit(1))


def undo(session: Session, user: User, assignment_id: int) -> Assignment:
    """Take back the user's last answer, skip or flag in a project: the label (if any) is deleted and
    the assignment is open again, so the item comes back first. A skipped item needs a free overlap
    slot again; if others have filled the item meanwhile, undo is refused."""
    a = own_assignment(session, user, assignment_id)
    project = get_project(session, a.project_id)
    may_annotate(session, user, project)
    last = last_finished(session, user, project.id)
    if last is None or last.id != a.id:
        raise Conflict("only your last answer or skip in this project can be undone")
    item = session.get(Item, a.item_id)
    if a.slot is None and not item.is_gold:
        taken = set(session.scalars(select(Assignment.slot).where(Assignment.item_id == a.item_id,
                                                                   Assignment.slot.is_not(None))))
        free = [s for s in range(project.overlap) if s not in taken]
        if not free:
            raise Conflict("other annotators have taken this item since you skipped it")
        a.slot = free[0]
    try:
        with session.begin_nested():  # a concurrent annotator may claim the same free slot first
            session.execute(delete(Label).where(Label.assignment_id == a.id))
            a.status, a.completed_at, a.flag_reason = "open", None, None
            session.flush()
    except IntegrityError:
        raise Conflict("other annotators have taken this item since you skipped it") from None
    return a


def own_label(session: Session, user: User, label_id: int) -> Label:
    label = session.get(Label, label_id)
    if label is None or label.user_id != user.id:
        raise NotFound("label not found")
    return label


def edit_label(session: Session, user: User, label_id: int, raw: dict, rationale: str | None = None,
               edited_response: str | None = None) -> Label:
    """Change one of the user's own labels, however old, within the project's rules:

    * only while the user may still annotate the project (active, not excluded, still a member);
    * the answer is checked like a new one, against the order the responses were shown in;
    * a rationale only where the project takes rationales, an ideal response only where it takes edits
      (``None`` leaves a text as it is, ``""`` clears it);
    * the label's item, assignment, overlap slot and time taken stay; the earlier version is kept in
      ``history`` (the original and the latest ``MAX_HISTORY - 1``) with the time it was replaced.
    """
    label = own_label(session, user, label_id)
    project = get_project(session, label.project_id)
    may_annotate(session, user, project)
    a = session.get(Assignment, label.assignment_id)
    answer = canonical_answer(project.task_type, raw, list(a.display_order), list(project.criteria))
    new_rationale = label.rationale if rationale is None or not project.allow_rationale else (rationale or None)
    new_edit = label.edited_response if edited_response is None or not project.allow_edit else (edited_response or None)
    if (answer, new_rationale, new_edit) == (label.answer, label.rationale, label.edited_response):
        return label  # nothing changed: no new version
    now = utcnow()
    old = {"answer": label.answer, "rationale": label.rationale, "edited_response": label.edited_response,
           "replaced_at": now.isoformat() + "Z"}
    history = [*(label.history or []), old]
    label.history = history if len(history) <= MAX_HISTORY else [history[0], *history[-(MAX_HISTORY - 1):]]
    label.answer, label.rationale, label.edited_response, label.updated_at = answer, new_rationale, new_edit, now
    session.flush()
    return label
