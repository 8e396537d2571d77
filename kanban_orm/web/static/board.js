// The board's only script: drag-and-drop, the drawer, keyboard navigation and the live
// stream. Every decision (which moves exist, what a move needs) is the server's: a move
// is always sent, and the server answers with the move done, a question to ask first
// (428), or its refusal, which is shown as it is.
"use strict";
(() => {
  const body = document.body;
  const base = body.dataset.base || "";
  const csrf = body.dataset.csrf;
  const query = body.dataset.query || "";
  const writable = body.dataset.writable === "true";
  const board = document.getElementById("board");
  const drawer = document.getElementById("drawer");
  const flash = document.getElementById("flash");
  const live = document.getElementById("live");
  let lastEventId = Number(body.dataset.lastEventId || 0);

  // -- theme ------------------------------------------------------------------------
  const savedTheme = localStorage.getItem("kanban-theme");
  if (savedTheme) document.documentElement.dataset.theme = savedTheme;
  document.getElementById("theme").addEventListener("click", () => {
    const dark = document.documentElement.dataset.theme
      ? document.documentElement.dataset.theme === "dark"
      : matchMedia("(prefers-color-scheme: dark)").matches;
    const next = dark ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    localStorage.setItem("kanban-theme", next);
  });

  // -- messages ---------------------------------------------------------------------
  let flashTimer = null;
  function say(text, kind = "error") {
    flash.textContent = text; // text, never markup
    flash.className = "flash " + kind;
    flash.hidden = false;
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => { flash.hidden = true; }, 8000);
  }

  // -- requests ---------------------------------------------------------------------
  async function post(path, payload) {
    const response = await fetch(base + path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrf-token": csrf },
      body: JSON.stringify(payload),
    });
    let data = {};
    try { data = await response.json(); } catch (_) { data = { error: response.statusText }; }
    return { status: response.status, ok: response.ok, data };
  }

  async function getText(path) {
    const response = await fetch(base + path, { credentials: "same-origin" });
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    return response.text();
  }

  // -- questions --------------------------------------------------------------------
  const askDialog = document.getElementById("ask");
  function ask(question, reason) {
    return new Promise((resolve) => {
      const form = askDialog.querySelector("form");
      const text = askDialog.querySelector("textarea");
      askDialog.querySelector(".question").textContent = question;
      askDialog.querySelector(".reason-label").hidden = reason === "none";
      text.value = "";
      text.required = reason === "required";
      askDialog.returnValue = "";
      askDialog.addEventListener("close", function done() {
        askDialog.removeEventListener("close", done);
        resolve(askDialog.returnValue === "ok" ? { reason: text.value.trim() } : null);
      });
      askDialog.showModal();
      (reason === "none" ? form.querySelector("button.primary") : text).focus();
    });
  }

  // -- moves ------------------------------------------------------------------------
  async function move(taskId, to, extra = {}) {
    let payload = { to, ...extra };
    for (let round = 0; round < 3; round++) {
      const answer = await post(`/api/tasks/${taskId}/move`, payload);
      if (answer.ok) {
        refresh([taskId]);
        return true;
      }
      if (answer.status === 428 && answer.data.ask) {
        const reply = await ask(answer.data.question, answer.data.ask === "confirm" ? "optional" : answer.data.ask);
        if (!reply) return false;
        payload = { ...payload, reason: reply.reason || payload.reason, confirmed: true };
        continue;
      }
      say(answer.data.error || `refused (${answer.status})`);
      refresh([taskId]);
      return false;
    }
    return false;
  }

  // -- drag and drop ----------------------------------------------------------------
  if (writable) {
    board.addEventListener("dragstart", (event) => {
      const card = event.target.closest("[data-task-id]");
      if (!card) return;
      event.dataTransfer.setData("text/plain", card.dataset.taskId);
      event.dataTransfer.effectAllowed = "move";
      card.classList.add("dragging");
    });
    board.addEventListener("dragend", (event) => {
      const card = event.target.closest("[data-task-id]");
      if (card) card.classList.remove("dragging");
      board.querySelectorAll(".drop-target").forEach((c) => c.classList.remove("drop-target"));
    });
    board.addEventListener("dragover", (event) => {
      const column = event.target.closest("[data-column]");
      if (!column) return;
      event.preventDefault();
      board.querySelectorAll(".drop-target").forEach((c) => c !== column && c.classList.remove("drop-target"));
      column.classList.add("drop-target");
    });
    board.addEventListener("drop", (event) => {
      const column = event.target.closest("[data-column]");
      if (!column) return;
      event.preventDefault();
      column.classList.remove("drop-target");
      const id = event.dataTransfer.getData("text/plain");
      const card = board.querySelector(`[data-task-id="${CSS.escape(id)}"]`);
      if (!id || (card && card.closest("[data-column]") === column)) return;
      move(id, column.dataset.column);
    });
  }

  // -- cards, live ------------------------------------------------------------------
  function insertCard(column, card) {
    const list = column.querySelector(".cards");
    const more = list.querySelector(":scope > .more");
    const status = column.dataset.column;
    let before = more;
    if (status !== "done" && status !== "archived") {
      const prio = Number(card.dataset.priority);
      const id = Number(card.dataset.taskId);
      for (const other of list.querySelectorAll(":scope > [data-task-id]")) {
        const p = Number(other.dataset.priority);
        if (p < prio || (p === prio && Number(other.dataset.taskId) > id)) { before = other; break; }
      }
    } else {
      before = list.querySelector(":scope > [data-task-id]") || more;
    }
    list.insertBefore(card, before);
  }

  const pending = new Set();
  let flushTimer = null;
  function refresh(ids) {
    ids.forEach((id) => pending.add(String(id)));
    if (!flushTimer) flushTimer = setTimeout(flush, 30);
  }
  async function flush() {
    flushTimer = null;
    const ids = [...pending];
    pending.clear();
    if (!ids.length) return;
    const sep = query ? "&" : "";
    let data;
    try {
      const response = await fetch(`${base}/api/cards?${query}${sep}ids=${ids.join(",")}`, { credentials: "same-origin" });
      if (!response.ok) throw new Error(String(response.status));
      data = await response.json();
    } catch (_) {
      ids.forEach((id) => pending.add(id));
      flushTimer = setTimeout(flush, 1000);
      return;
    }
    const template = document.createElement("template");
    for (const gone of data.gone) {
      board.querySelectorAll(`[data-task-id="${gone}"]`).forEach((el) => el.remove());
    }
    for (const item of data.cards) {
      const focused = document.activeElement && document.activeElement.dataset && document.activeElement.dataset.taskId === String(item.id);
      board.querySelectorAll(`[data-task-id="${item.id}"]`).forEach((el) => el.remove());
      const column = board.querySelector(`[data-column="${item.status}"]`);
      if (!column) continue;
      template.innerHTML = item.html;
      const card = template.content.firstElementChild;
      insertCard(column, card);
      if (focused) card.focus();
    }
    for (const [status, count] of Object.entries(data.counts)) {
      const badge = board.querySelector(`[data-column="${status}"] [data-count]`);
      if (badge) badge.textContent = count;
    }
    const open = drawer.querySelector("[data-drawer-task]");
    if (open && ids.includes(open.dataset.drawerTask) && !drawer.contains(document.activeElement)) {
      openDrawer(open.dataset.drawerTask, false);
    }
    scheduleStats();
  }

  let source = null;
  function connect() {
    source = new EventSource(`${base}/stream?after=${lastEventId}`);
    source.onopen = () => { live.classList.add("on"); live.classList.remove("off"); };
    source.onmessage = (message) => {
      const event = JSON.parse(message.data);
      lastEventId = Math.max(lastEventId, Number(message.lastEventId || event.id));
      body.dataset.lastEventId = String(lastEventId);
      refresh([event.task_id]);
    };
    source.onerror = () => {
      live.classList.remove("on"); live.classList.add("off");
      // The browser retries by itself (with Last-Event-ID); after a refusal it gives
      // up, so start again from the last id seen.
      if (source.readyState === EventSource.CLOSED) {
        source = null;
        setTimeout(connect, 1000);
      }
    };
  }
  connect();

  // -- paging -----------------------------------------------------------------------
  board.addEventListener("click", async (event) => {
    const more = event.target.closest("button[data-more]");
    if (more) {
      more.disabled = true;
      try {
        const html = await getText(more.dataset.more.slice(base.length));
        const template = document.createElement("template");
        template.innerHTML = html;
        more.replaceWith(template.content);
      } catch (error) {
        more.disabled = false;
        say(String(error));
      }
      return;
    }
    const opener = event.target.closest("[data-open]");
    const card = event.target.closest("[data-task-id]");
    if (opener || card) {
      event.preventDefault();
      openDrawer(opener ? opener.dataset.open : card.dataset.taskId, true);
    }
  });

  // -- drawer -----------------------------------------------------------------------
  let returnFocus = null;
  async function openDrawer(id, focus) {
    try {
      drawer.innerHTML = await getText(`/tasks/${id}`);
    } catch (error) {
      say(String(error));
      return;
    }
    drawer.hidden = false;
    body.classList.add("drawer-open");
    if (focus) {
      returnFocus = document.activeElement;
      const close = drawer.querySelector("[data-close]");
      if (close) close.focus();
    }
  }
  function closeDrawer() {
    drawer.hidden = true;
    drawer.innerHTML = "";
    body.classList.remove("drawer-open");
    if (returnFocus && document.contains(returnFocus)) returnFocus.focus();
  }
  drawer.addEventListener("click", async (event) => {
    if (event.target.closest("[data-close]")) return closeDrawer();
    const opener = event.target.closest("[data-open]");
    if (opener) { event.preventDefault(); return openDrawer(opener.dataset.open, true); }
    const task = drawer.querySelector("[data-drawer-task]");
    if (!task) return;
    const id = task.dataset.drawerTask;
    const button = event.target.closest("button[data-move]");
    if (button) {
      const needs = button.dataset.reason;
      let extra = {};
      if (button.dataset.confirm || needs !== "none") {
        const reply = await ask(button.dataset.confirm || button.textContent, needs);
        if (!reply) return;
        extra = { reason: reply.reason, confirmed: true };
      }
      if (await move(id, button.dataset.move, extra)) openDrawer(id, false);
      return;
    }
    const unlink = event.target.closest("button[data-unlink-parent], button[data-unlink-child]");
    if (unlink) {
      const payload = unlink.dataset.unlinkParent ? { parent_id: unlink.dataset.unlinkParent } : { child_id: unlink.dataset.unlinkChild };
      const answer = await post(`/api/tasks/${id}/unlink`, payload);
      if (!answer.ok) say(answer.data.error);
      openDrawer(id, false);
    }
  });
  drawer.addEventListener("submit", async (event) => {
    const form = event.target.closest("form[data-form]");
    if (!form) return;
    event.preventDefault();
    const id = drawer.querySelector("[data-drawer-task]").dataset.drawerTask;
    const fields = Object.fromEntries(new FormData(form).entries());
    const path = { comment: "comments", edit: "edit", link: "link" }[form.dataset.form];
    const answer = await post(`/api/tasks/${id}/${path}`, fields);
    if (!answer.ok) { say(answer.data.error || `refused (${answer.status})`); return; }
    document.activeElement.blur();
    openDrawer(id, false);
    refresh([id]);
  });

  // -- create -----------------------------------------------------------------------
  const createDialog = document.getElementById("create");
  if (createDialog) {
    document.getElementById("new-task").addEventListener("click", () => createDialog.showModal());
    createDialog.addEventListener("close", async () => {
      if (createDialog.returnValue !== "ok") return;
      const form = createDialog.querySelector("form");
      const fields = Object.fromEntries(new FormData(form).entries());
      fields.triage = fields.triage === "1";
      const answer = await post("/api/tasks", fields);
      if (!answer.ok) { say(answer.data.error || `refused (${answer.status})`); return; }
      form.reset();
      refresh([answer.data.id]);
    });
  }

  // -- filters in the URL -----------------------------------------------------------
  document.querySelectorAll("[data-autosubmit]").forEach((input) => {
    input.addEventListener("change", () => input.form.submit());
  });

  // -- keyboard ---------------------------------------------------------------------
  function cardsOf(column) { return [...column.querySelectorAll(".cards > [data-task-id]")]; }
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    const typing = target.closest && target.closest("input, textarea, select, dialog");
    if (event.key === "Escape" && !drawer.hidden && !document.querySelector("dialog[open]")) {
      closeDrawer();
      return;
    }
    if (typing) return;
    if (event.key === "/") { event.preventDefault(); document.querySelector("input[name=q]").focus(); return; }
    if (event.key === "n" && createDialog) { event.preventDefault(); createDialog.showModal(); return; }
    const card = target.closest && target.closest(".board [data-task-id]");
    if (!card) {
      if (event.key.startsWith("Arrow") && !drawer.contains(target)) {
        const first = board.querySelector("[data-task-id]");
        if (first) { event.preventDefault(); first.focus(); }
      }
      return;
    }
    const column = card.closest("[data-column]");
    const columns = [...board.querySelectorAll("[data-column]")];
    const list = cardsOf(column);
    const index = list.indexOf(card);
    let next = null;
    if (event.key === "ArrowDown") next = list[index + 1];
    else if (event.key === "ArrowUp") next = list[index - 1];
    else if (event.key === "ArrowLeft" || event.key === "ArrowRight") {
      const step = event.key === "ArrowLeft" ? -1 : 1;
      for (let c = columns.indexOf(column) + step; c >= 0 && c < columns.length; c += step) {
        const other = cardsOf(columns[c]);
        if (other.length) { next = other[Math.min(index, other.length - 1)]; break; }
      }
    } else if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      openDrawer(card.dataset.taskId, true);
      return;
    }
    if (next) { event.preventDefault(); next.focus(); next.scrollIntoView({ block: "nearest", inline: "nearest" }); }
  });

  // -- lease countdowns and the throughput panel ------------------------------------
  setInterval(() => {
    const now = Date.now();
    document.querySelectorAll("[data-lease-seconds]").forEach((el) => {
      if (!el.dataset.renderedAt) el.dataset.renderedAt = String(now);
      const left = Number(el.dataset.leaseSeconds) - (now - Number(el.dataset.renderedAt)) / 1000;
      el.textContent = left > 0 ? `${fmt(left)} left` : "expired";
      el.classList.toggle("expired", left <= 0);
    });
  }, 1000);
  function fmt(seconds) {
    if (seconds < 60) return `${Math.round(seconds)}s`;
    if (seconds < 3600) return `${Math.round(seconds / 60)}m`;
    if (seconds < 86400) return `${(seconds / 3600).toFixed(1)}h`;
    return `${(seconds / 86400).toFixed(1)}d`;
  }
  let statsTimer = null;
  function scheduleStats() {
    if (!statsTimer) statsTimer = setTimeout(updateStats, 5000);
  }
  async function updateStats() {
    statsTimer = null;
    const panel = document.getElementById("throughput");
    try {
      const tenant = panel.dataset.tenant ? `?tenant=${encodeURIComponent(panel.dataset.tenant)}` : "";
      const stats = JSON.parse(await getText(`/api/throughput${tenant}`));
      for (const el of panel.querySelectorAll("[data-stat]")) {
        const value = stats[el.dataset.stat];
        el.textContent = value === null ? "–" : el.dataset.stat.endsWith("seconds") ? fmt(value) : value.toFixed(1);
      }
    } catch (_) { /* the next change tries again */ }
  }
  setInterval(scheduleStats, 30000);
})();
