// Keyboard shortcuts, ranking moves (buttons, drag), undo, guidelines memory and double-submit guard.
// No inline scripts anywhere (the Content-Security-Policy forbids them).
(function () {
  "use strict";
  // Guidelines: open on the first visit to a project, collapsed after that (phones keep the task in view).
  const guide = document.getElementById("guidelines");
  if (guide) {
    const seenKey = "alignloop-guidelines-seen-" + guide.dataset.project;
    try {
      if (window.localStorage.getItem(seenKey)) guide.removeAttribute("open");
      window.localStorage.setItem(seenKey, "1");
    } catch (e) { /* storage off: leave them open */ }
  }
  const undoForm = document.getElementById("undo-form");
  const form = document.getElementById("label-form");
  if (!form) {
    if (undoForm) {
      document.addEventListener("keydown", function (ev) {
        if (!ev.ctrlKey && !ev.metaKey && !ev.altKey && ev.key.toLowerCase() === "u") undoForm.submit();
      });
    }
    return;
  }
  const task = form.dataset.task;
  const cards = () => Array.from(document.querySelectorAll("#responses .response"));
  let selected = null;  // response position picked with a letter key (ranking / likert)
  let criterion = 0;    // active criterion row (multi-criteria)

  // One submit per page: a double click or a held Enter must not post twice.
  let sent = false;
  form.addEventListener("submit", function (ev) {
    if (sent) { ev.preventDefault(); return; }
    sent = true;
  });

  function typing(ev) {
    const t = ev.target;
    return t && (t.tagName === "TEXTAREA" || (t.tagName === "INPUT" && t.type !== "radio" && t.type !== "checkbox"));
  }

  function select(pos) {
    selected = pos;
    cards().forEach(function (c) { c.classList.toggle("selected", Number(c.dataset.position) === pos); });
  }

  function renumberFromOrder() {
    cards().forEach(function (c, i) {
      const s = c.querySelector("select");
      if (s) s.value = String(i + 1);
    });
  }

  function move(card, dir) {
    const list = card.parentNode;
    if (dir < 0 && card.previousElementSibling) list.insertBefore(card, card.previousElementSibling);
    if (dir > 0 && card.nextElementSibling) list.insertBefore(card.nextElementSibling, card);
    renumberFromOrder();
  }

  function highlightCriterion() {
    document.querySelectorAll("fieldset.criterion").forEach(function (f, i) { f.classList.toggle("active", i === criterion); });
  }

  if (task === "ranking") {
    document.querySelectorAll("button.move").forEach(function (b) {
      b.addEventListener("click", function () { move(b.closest(".response"), Number(b.dataset.dir)); });
    });
    let dragged = null;
    cards().forEach(function (c) {
      c.addEventListener("dragstart", function () { dragged = c; c.classList.add("dragging"); });
      c.addEventListener("dragend", function () { c.classList.remove("dragging"); dragged = null; renumberFromOrder(); });
      c.addEventListener("dragover", function (ev) {
        ev.preventDefault();
        if (!dragged || dragged === c) return;
        const r = c.getBoundingClientRect();
        c.parentNode.insertBefore(dragged, ev.clientY < r.top + r.height / 2 ? c : c.nextSibling);
      });
    });
  }
  if (task === "criteria") highlightCriterion();

  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(ev)) return;
    const key = ev.key.toLowerCase();
    const skipForm = document.getElementById("skip-form");  // absent while editing an earlier label
    if (key === "s" && skipForm) { skipForm.submit(); return; }
    if (key === "u" && undoForm) { undoForm.submit(); return; }
    if (task === "pairwise") {
      const button = Array.from(form.querySelectorAll("button[data-key]")).find(function (b) {
        return b.dataset.key.split(" ").indexOf(key) >= 0;
      });
      if (button) { ev.preventDefault(); button.click(); }
      return;
    }
    if (key === "enter") { ev.preventDefault(); form.requestSubmit(); return; }
    if (task === "criteria") {
      const sets = document.querySelectorAll("fieldset.criterion");
      const value = { "1": "A", "2": "B", "3": "tie" }[key];
      if (value && sets[criterion]) {
        sets[criterion].querySelector('input[value="' + value + '"]').checked = true;
        criterion = Math.min(criterion + 1, sets.length - 1);
        highlightCriterion();
      }
      return;
    }
    // letters pick a response (u and s are taken by undo and skip above)
    const letterPos = key.length === 1 ? key.charCodeAt(0) - 97 : -1;
    const k = Number(form.dataset.k);
    if (letterPos >= 0 && letterPos < k) { select(letterPos); return; }
    const digit = Number(key);
    if (selected === null || !(digit >= 1)) return;
    if (task === "ranking" && digit <= k) {
      form.querySelector('select[name="rank_' + selected + '"]').value = String(digit);
    } else if (task === "likert" && digit <= 7) {
      form.querySelector('input[name="score_' + selected + '"][value="' + digit + '"]').checked = true;
    }
  });
})();
