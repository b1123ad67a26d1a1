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
    ACCESS_MODES,
    DEFAULT_CRITERIA,
    TASK_TYPES,
    Assignment,
    Item,
    Label,
    Project,
    ProjectMember,
    Response,
    User,
    utcnow,
)
from alignloop.feedback.security import check_new_password, hash_password

ROLES = ("admin", "annotator")
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
CANDIDATE_WINDOW = 16  # pick among the first few open items so concurrent annotators rarely collide
MAX_CLAIM_ROUNDS = 50


class NotFound(AlignloopError):
    """The object does not exist or does not belong to the caller (both answer 404)."""


class Conflict(AlignloopError):
    """The request contradicts stored state (for example a second, different answer)."""


class Forbidden(AlignloopError):
    """The caller may not do this (an excluded or deactivated annotator); answers 403."""


def check_new_user(username: str, password: str, role: str) -> None:
    if not USERNAME_RE.match(username):
        raise AlignloopError("username: use 1-64 letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise AlignloopError(f"role: must be one of {', '.join(ROLES)}")
    check_new_password(password)


def create_user(session: Session, username: str, password: str, role: str = "annotator",
                password_hash: str | None = None) -> User:
    """``password_hash``, when given, is ``hash_password(password)`` computed by the caller outside the
    transaction (argon2 is slow by design and must not hold the database's writer lock)."""
    check_new_user(username, password, role)
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise Conflict(f"user {username!r} already exists")
    user = User(username=username, password_hash=password_hash or hash_password(password), role=role, active=True,
                excluded=False, must_change_password=False)
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
    access: str = "members"  # members: only annotators an admin added; all: every annotator
    members: tuple[str, ...] = ()  # usernames added as members at creation

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
        if self.access not in ACCESS_MODES:
            raise AlignloopError(f"access: must be one of {', '.join(ACCESS_MODES)}")


def create_project(session: Session, opts: ProjectOptions, status: str = "ready") -> Project:
    opts.validate()
    if session.scalar(select(Project).where(Project.name == opts.name)) is not None:
        raise Conflict(f"project {opts.name!r} already exists")
    project = Project(
        name=opts.name, task_type=opts.task_type, guidelines=opts.guidelines, overlap=opts.overlap,
        gold_rate=opts.gold_rate, allow_rationale=opts.allow_rationale, allow_edit=opts.allow_edit,
        criteria=list(opts.criteria), status=status, access=opts.access,
    )
    session.add(project)
    session.flush()
    for name in dict.fromkeys(opts.members):
        user_id = session.scalar(select(User.id).where(User.username == name))
        if user_id is None:
            raise AlignloopError(f"members: no user named {name!r}")
        session.add(ProjectMember(project_id=project.id, user_id=user_id))
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


def is_member(session: Session, user: User, project: Project) -> bool:
    return user.role == "admin" or project.access == "all" or session.scalar(
        select(ProjectMember.id).where(ProjectMember.project_id == project.id, ProjectMember.user_id == user.id)
    ) is not None


def visible_project(session: Session, user: User, project_id: int) -> Project:
    """The project, for a user allowed into it; any other project answers 404, like a missing one."""
    project = get_project(session, project_id)
    if not is_member(session, user, project):
        raise NotFound("project not found")
    return project


def visible_projects(session: Session, user: User) -> list[Project]:
    query = select(Project).order_by(Project.id)
    if user.role != "admin":
        mine = select(ProjectMember.project_id).where(ProjectMember.user_id == user.id)
        query = query.where((Project.access == "all") | Project.id.in_(mine))
    return list(session.scalars(query))


def may_annotate(session: Session, user: User, project: Project) -> None:
    """Raise unless ``user`` may get and label items of ``project`` now. Reads the user's row in this
    transaction (FOR SHARE on PostgreSQL), so an exclusion or deactivation applies at once."""
    fresh = session.get(User, user.id, with_for_update={"read": True})
    if fresh is None or not fresh.active:
        raise Forbidden("your account is deactivated")
    if fresh.excluded:
        raise Forbidden("an admin excluded you from annotating; ask them if you think this is a mistake")
    if not is_member(session, fresh, project):
        raise NotFound("project not found")


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
    may_annotate(session, user, project)
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
    may_annotate(session, user, project)
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


def load_item(session: Session, item_id: int) -> Item:
    return session.scalars(select(Item).options(selectinload(Item.responses)).where(Item.id == item_id)).one()
