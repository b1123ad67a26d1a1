"""What each role may see, as plain dicts (shared by the JSON API and the pages).

An annotator's view of an assignment holds the prompt and the responses in their displayed
order only: no model names, no gold answer, nothing from other annotators."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from alignloop.feedback.answers import LETTERS
from alignloop.feedback.models import Assignment, Item, Job, Label, Project, User
from alignloop.feedback.store import load_item


def project_view(project: Project) -> dict:
    return {"id": project.id, "name": project.name, "task_type": project.task_type,
            "guidelines": project.guidelines, "overlap": project.overlap, "criteria": list(project.criteria),
            "allow_rationale": project.allow_rationale, "allow_edit": project.allow_edit, "status": project.status,
            "access": project.access}


def project_admin_view(session: Session, project: Project) -> dict:
    def count(model, *conds) -> int:  # type: ignore[no-untyped-def]
        return session.scalar(
            select(func.count()).select_from(model).where(model.project_id == project.id, *conds)
        ) or 0

    return {**project_view(project), "gold_rate": project.gold_rate,
            "item_count": count(Item, Item.is_gold.is_(False)), "gold_items": count(Item, Item.is_gold.is_(True)),
            "labels": count(Label), "flagged": count(Assignment, Assignment.status == "flagged"),
            "skipped": count(Assignment, Assignment.status == "skipped"),
            # labels kept in the database but marked by their annotator's status (see export.py)
            "labels_excluded": count(Label, Label.user_id.in_(select(User.id).where(User.excluded.is_(True)))),
            "labels_deactivated": count(Label, Label.user_id.in_(
                select(User.id).where(User.active.is_(False), User.excluded.is_(False))))}


def assignment_view(session: Session, a: Assignment) -> dict:
    item = load_item(session, a.item_id)
    by_idx = {r.idx: r for r in item.responses}
    return {
        "id": a.id, "project_id": a.project_id, "item_id": a.item_id, "status": a.status, "prompt": item.prompt,
        "responses": [{"position": pos, "letter": LETTERS[pos], "text": by_idx[idx].text}
                      for pos, idx in enumerate(a.display_order)],
    }


def label_view(label: Label) -> dict:
    return {"id": label.id, "assignment_id": label.assignment_id, "item_id": label.item_id,
            "project_id": label.project_id, "answer": label.answer, "rationale": label.rationale,
            "edited_response": label.edited_response, "duration_ms": label.duration_ms,
            "created_at": label.created_at.isoformat() + "Z",
            "updated_at": label.updated_at.isoformat() + "Z" if label.updated_at else None,
            "history": list(label.history or [])}


def job_view(job: Job) -> dict:
    return {"id": job.id, "project_id": job.project_id, "kind": job.kind, "status": job.status,
            "done": job.done, "total": job.total, "message": job.message}


def flagged_view(session: Session, project_id: int) -> list[dict]:
    rows = session.execute(
        select(Assignment, Item.prompt).join(Item, Item.id == Assignment.item_id)
        .where(Assignment.project_id == project_id, Assignment.status == "flagged").order_by(Assignment.id)
    ).all()
    return [{"assignment_id": a.id, "item_id": a.item_id, "user_id": a.user_id, "reason": a.flag_reason,
             "prompt": prompt} for a, prompt in rows]
