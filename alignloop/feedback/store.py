"""Users, projects, assignment of items to annotators, and labels written exactly once."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from alignloop.errors import AlignloopError
from alignloop.feedback.answers import canonical_answer
from alignloop.feedback.importers import ItemSpec
from alignloop.feedback.models import (
    DEFAULT_CRITERIA,
    TASK_TYPES,
    Assignment,
    Item,
    Label,
    Project,
    Response,
    User,
    utcnow,
)
from alignloop.feedback.security import hash_password

ROLES = ("admin", "annotator")
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
CANDIDATE_WINDOW = 16  # pick among the first few open items so concurrent annotators rarely collide
MAX_CLAIM_ROUNDS = 50


class NotFound(AlignloopError):
    """The object does not exist or does not belong to the caller (both answer 404)."""


class Conflict(AlignloopError):
    """The request contradicts stored state (for example a second, different answer)."""


def create_user(session: Session, username: str, password: str, role: str = "annotator") -> User:
    if not USERNAME_RE.match(username):
        raise AlignloopError("username: use 1-64 letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise AlignloopError(f"role: must be one of {', '.join(ROLES)}")
    if len(password) < 8:
        raise AlignloopError("password: must be at least 8 characters")
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise Conflict(f"user {username!r} already exists")
    user = User(username=username, password_hash=hash_password(password), role=role, active=True, excluded=False)
    session.add(user)
    session.flush()
    return user


@dataclass
class ProjectOptions:
    name: str
    task_type: str = "pairwise"
    guidelines: str = ""
    overlap: int = 1
    gold_rate: float = 0.0
    allow_rationale: bool = True
    allow_edit: bool = False
    criteria: tuple[str, ...] = tuple(DEFAULT_CRITERIA)

    def validate(self) -> None:
        if not self.name.strip() or len(self.name) > 128:
            raise AlignloopError("name: must be 1-128 characters")
        if self.task_type not in TASK_TYPES:
            raise AlignloopError(f"task_type: must be one of {', '.join(TASK_TYPES)}")
        if not 1 <= self.overlap <= 50:
            raise AlignloopError("overlap: must be between 1 and 50")
        if not 0.0 <= self.gold_rate <= 1.0:
            raise AlignloopError("gold_rate: must be between 0 and 1")
        if self.task_type == "criteria" and not self.criteria:
            raise AlignloopError("criteria: name at least one criterion")


def create_project(session: Session, opts: ProjectOptions, status: str = "ready") -> Project:
    opts.validate()
    if session.scalar(select(Project).where(Project.name == opts.name)) is not None:
        raise Conflict(f"project {opts.name!r} already exists")
    project = Project(
        name=opts.name, task_type=opts.task_type, guidelines=opts.guidelines, overlap=opts.overlap,
        gold_rate=opts.gold_rate, allow_rationale=opts.allow_rationale, allow_edit=opts.allow_edit,
        criteria=list(opts.criteria), status=status,
    )
    session.add(project)
    session.flush()
    return project


def add_items(session: Session, project: Project, specs: list[ItemSpec]) -> int:
    start = session.scalar(select(func.count()).select_from(Item).where(Item.project_id == project.id)) or 0
    for n, spec in enumerate(specs):
        item = Item(project_id=project.id, position=start + n, prompt=spec.prompt,
                    is_gold=spec.gold_best is not None, gold_best=spec.gold_best)
        item.responses = [
            Response(idx=i, text=c.text, model=c.model, names_own_model=names_model(c.text, c.model))
            for i, c in enumerate(spec.candidates)
        ]
        session.add(item)
    session.flush()
    return len(specs)


def names_model(text: str, model: str | None) -> bool:
    """Does a response name the model that wrote it (which would break anonymity)?"""
    if not model:
        return False
    stem = re.split(r"[/\\]", model.rstrip("/\\"))[-1].lower()
    words = {stem, stem.split("-")[0]} - {""}
    low = text.lower()
    return any(len(w) >= 4 and w in low for w in words)


def get_project(session: Session, project_id: int) -> Project:
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound("project not found")
    return project


def own_assignment(session: Session, user: User, assignment_id: int) -> Assignment:
    a = session.get(Assignment, assignment_id)
    if a is None or a.user_id != user.id:
        raise NotFound("assignment not found")
    return a


def next_assignment(
    session: Session, user: User, project: Project, rng: random.Random | None = None
) -> Assignment | None:
    """The caller's open assignment in this project, or a new one; None when nothing is left.

    Never an item the user already had, never an item whose overlap slots are all claimed.
    Gold items are mixed in at ``gold_rate`` and do not use overlap slots."""
    rng = rng or random.Random()
    if project.status != "ready":
        return None
    open_one = session.scalar(
        select(Assignment).where(Assignment.user_id == user.id, Assignment.project_id == project.id,
                                 Assignment.status == "open").order_by(Assignment.id).limit(1)
    )
    if open_one is not None:
        return open_one
    seen = select(Assignment.item_id).where(Assignment.user_id == user.id, Assignment.project_id == project.id)
    want_gold = project.gold_rate > 0 and rng.random() < project.gold_rate
    for gold in ((True, False) if want_gold else (False, True)):
        if gold and project.gold_rate <= 0:
            continue
        # Concurrent annotators may win every candidate we looked at; look again until we get one
        # or no candidate is left (never report "nothing left" because of a lost race).
        for _attempt in range(MAX_CLAIM_ROUNDS):
            picked, contended = _claim(session, user, project, seen, gold, rng)
            if picked is not None:
                return picked
            if not contended:
                break
    return None


def _claim(session: Session, user: User, project: Project, seen, gold: bool,
           rng: random.Random) -> tuple[Assignment | None, bool]:
    """Try to claim one of the first open items; returns (assignment, lost_a_race)."""
    used = (select(func.count()).select_from(Assignment)
            .where(Assignment.item_id == Item.id, Assignment.slot.is_not(None)).scalar_subquery())
    query = select(Item).where(Item.project_id == project.id, Item.is_gold.is_(gold), Item.id.not_in(seen))
    if not gold:
        query = query.where(used < project.overlap)
    candidates = list(session.scalars(query.order_by(Item.position).limit(CANDIDATE_WINDOW)))
    rng.shuffle(candidates)
    contended = False
    for item in candidates:
        slot = None
        if not gold:
            taken = set(session.scalars(select(Assignment.slot).where(Assignment.item_id == item.id,
                                                                       Assignment.slot.is_not(None))))
            free = [s for s in range(project.overlap) if s not in taken]
            if not free:
                contended = True
                continue
            slot = free[0]
        k = session.scalar(select(func.count()).select_from(Response).where(Response.item_id == item.id)) or 0
        order = list(range(k))
        rng.shuffle(order)  # randomised and stored, so position bias can be measured
        a = Assignment(item_id=item.id, user_id=user.id, project_id=project.id, slot=slot,
                       display_order=order, status="open")
        try:
            with session.begin_nested():  # a lost race on (item, slot) only undoes this insert
                session.add(a)
                session.flush()
        except IntegrityError:
            contended = True
            continue
        return a, False
    return None, contended


def submit_label(session: Session, user: User, assignment_id: int, raw: dict, rationale: str | None = None,
                 edited_response: str | None = None) -> tuple[Label, bool]:
    """Store the answer for an assignment once. Returns ``(label, created)``: a repeated submit
    (double click, client retry) of the same answer returns the stored label and creates nothing."""
    a = own_assignment(session, user, assignment_id)
    project = get_project(session, a.project_id)
    answer = canonical_answer(project.task_type, raw, list(a.display_order), list(project.criteria))
    existing = session.scalar(select(Label).where(Label.assignment_id == a.id))
    if existing is not None:
        if existing.answer != answer:
            raise Conflict("this assignment is already labelled; edit the label instead")
        return existing, False
    if a.status != "open":
        raise Conflict(f"this assignment was {a.status}")
    now = utcnow()
    label = Label(
        assignment_id=a.id, item_id=a.item_id, user_id=user.id, project_id=a.project_id, answer=answer,
        rationale=(rationale or None) if project.allow_rationale else None,
        edited_response=(edited_response or None) if project.allow_edit else None,
        duration_ms=int((now - a.created_at).total_seconds() * 1000), created_at=now,
    )
    try:
        with session.begin_nested():
            session.add(label)
            session.flush()
    except IntegrityError:  # a concurrent identical submit won the race
        session.expire_all()
        other = session.scalar(select(Label).where(Label.assignment_id == a.id))
        if other is None or other.answer != answer:
            raise Conflict("this assignment is already labelled; edit the label instead") from None
        return other, False
    session.execute(update(Assignment).where(Assignment.id == a.id).values(status="done", completed_at=now))
    return label, True


def edit_label(session: Session, user: User, label_id: int, raw: dict, rationale: str | None = None) -> Label:
    label = session.get(Label, label_id)
    if label is None or label.user_id != user.id:
        raise NotFound("label not found")
    a = session.get(Assignment, label.assignment_id)
    project = get_project(session, label.project_id)
    label.answer = canonical_answer(project.task_type, raw, list(a.display_order), list(project.criteria))
    if rationale is not None and project.allow_rationale:
        label.rationale = rationale or None
    label.updated_at = utcnow()
    session.flush()
    return label


def release(session: Session, user: User, assignment_id: int, status: str, reason: str | None = None) -> Assignment:
    """Skip or flag an open assignment. Its overlap slot is freed so another annotator gets the item;
    the user never sees it again (their assignment row stays)."""
    a = own_assignment(session, user, assignment_id)
    if a.status != "open":
        raise Conflict(f"this assignment was already {a.status}")
    a.status = status
    a.slot = None
    a.flag_reason = (reason or "unsafe or broken")[:2000] if status == "flagged" else None
    a.completed_at = utcnow()
    session.flush()
    return a


def progress(session: Session, user: User, project: Project) -> dict:
    def count(*conds) -> int:
        return session.scalar(select(func.count()).select_from(Assignment).where(
            Assignment.user_id == user.id, Assignment.project_id == project.id, *conds)) or 0

    total_regular = session.scalar(select(func.count()).select_from(Item).where(
        Item.project_id == project.id, Item.is_gold.is_(False))) or 0
    return {"done": count(Assignment.status == "done"), "skipped": count(Assignment.status == "skipped"),
            "flagged": count(Assignment.status == "flagged"), "total_items": total_regular,
            "target_labels": total_regular * project.overlap}


def load_item(session: Session, item_id: int) -> Item:
    return session.scalars(select(Item).options(selectinload(Item.responses)).where(Item.id == item_id)).one()
