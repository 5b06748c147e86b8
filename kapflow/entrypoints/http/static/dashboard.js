// kapflow operations dashboard: no framework, no external files (served with a strict CSP).
// Data: /v1/pathway once, /v1/stats on load and (debounced) after every streamed change,
// /v1/stream/recent to fill the recent-changes and rejections lists on load, then
// /v1/stream (Server-Sent Events) from exactly there, opened with a single-use ticket so the
// API key (or a person's access token) never goes into a URL; /v1/tasks for the work queue, whose actions (common.js) are
// recorded as operations events, and for the client's own reminders (messages to send);
// /v1/clients?state= when a state or funnel stage is chosen. Times are the clinic's.
// Only ids and codes are shown: client ids, states, event types, reason codes.
"use strict";

(() => {
  const K = window.Kapflow;
  const { api, html, fmt, label, clock } = K;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const MAX_ITEMS = 40;
  const QUEUE_ROWS = 200;
  const OWNERS = K.OWNERS;
  const ACTIVE = ["inquiry", "assessed", "cleared", "prepared", "dosed", "integrating"];

  let source = null;
  let resumeAfter = null;
  let queueTimer = null;
  let pathway = null;
  let refreshTimer = null;
  let retryTimer = null;
  let retryDelay = 1000;
  let streamAttempt = 0;
  let liveSince = 0;
  const seen = new Set();
  const nodes = {};
  const $ = K.$;

  // --- connection indicator ------------------------------------------------------------
  function setConnection(state, text) {
    const el = $("connection");
    el.className = "conn conn-" + state;
    el.dataset.state = state;
    el.querySelector(".label").textContent = text || state;
  }

  // --- helpers ---------------------------------------------------------------------------
  function svg(tag, attrs, parent) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
    if (parent) parent.appendChild(el);
    return el;
  }
  function setNumber(id, value, zeroClass) {
    const el = $(id);
    el.textContent = fmt(value);
    if (zeroClass) el.classList.toggle("zero", !value);
  }

  // --- pathway diagram (drawn from /v1/pathway: the machine's own states) ---------------
  function drawPathway() {
    const root = $("pathway-svg");
    root.replaceChildren();
    const defs = svg("defs", {}, root);
    const marker = svg("marker", {
      id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5",
      markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse",
    }, defs);
    svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }, marker);

    const main = pathway.main_line;
    const side = pathway.states.filter((s) => !main.includes(s));
    const w = 142, h = 74, gap = (1000 - main.length * w) / (main.length - 1), y = 56;
    const xOf = (i) => 20 + i * (w + gap);

    main.forEach((state, i) => {
      if (i > 0) {
        svg("line", {
          x1: xOf(i - 1) + w, y1: y + h / 2, x2: xOf(i) - 2, y2: y + h / 2,
          class: "edge", "marker-end": "url(#arrow)",
        }, root);
      }
    });
    const di = main.indexOf("dosed"), ii = main.indexOf("integrating");
    if (di >= 0 && ii >= 0) {
      const x1 = xOf(ii) + w / 2, x2 = xOf(di) + w / 2;
      svg("path", {
        d: `M ${x1} ${y - 2} C ${x1} ${y - 44}, ${x2} ${y - 44}, ${x2} ${y - 4}`,
        class: "edge loop", "marker-end": "url(#arrow)",
      }, root);
      const t = svg("text", { x: (x1 + x2) / 2, y: y - 36, "text-anchor": "middle", class: "edge-label" }, root);
      t.textContent = "next dosing";
    }
    main.forEach((state, i) => drawNode(root, state, xOf(i), y, w, h, true));

    const gy = 168, sw = 200, sh = 62;
    svg("rect", { x: 12, y: gy - 22, width: 1016, height: sh + 36, rx: 10, class: "group" }, root);
    const gl = svg("text", { x: 26, y: gy - 7, class: "group-label" }, root);
    gl.textContent = "off the main line";
    const sgap = (1000 - side.length * sw) / Math.max(side.length - 1, 1);
    side.forEach((state, i) => drawNode(root, state, 20 + i * (sw + sgap), gy, sw, sh, false));
  }

  function drawNode(root, state, x, y, w, h, isMain) {
    const g = svg("g", {
      class: "node " + state + (isMain ? " main" : ""), "data-state": state,
      role: "button", tabindex: "0", // named by what it shows ("inquiry 12"); the group says what it does
    }, root);
    g.addEventListener("click", () => listClients(state));
    g.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        listClients(state);
      }
    });
    svg("rect", { x, y, width: w, height: h, rx: 9 }, g);
    const l = svg("text", { x: x + 12, y: y + 20, class: "label" }, g);
    l.textContent = label(state);
    const c = svg("text", { x: x + 12, y: y + h - 16, class: "count", "data-count": state }, g);
    c.textContent = "—";
    const bar = svg("rect", { x: x + 1, y: y + h - 5, width: 0, height: 4, rx: 2, class: "bar" }, g);
    nodes[state] = { g, count: c, bar, x, w, value: null };
  }

  function updatePathway(byState) {
    const max = Math.max(1, ...Object.values(byState));
    for (const [state, node] of Object.entries(nodes)) {
      const value = byState[state] || 0;
      if (node.value !== null && node.value !== value) {
        node.g.classList.add("flash");
        setTimeout(() => node.g.classList.remove("flash"), 1200);
      }
      node.value = value;
      node.count.textContent = fmt(value);
      node.bar.setAttribute("width", String(Math.max(0, (node.w - 2) * (value / max))));
    }
  }

  // --- stats -----------------------------------------------------------------------------
  function renderStats(stats) {
    const by = stats.clients_by_state;
    setNumber("kpi-clients", stats.clients_total);
    setNumber("kpi-active", ACTIVE.reduce((sum, s) => sum + (by[s] || 0), 0));
    setNumber("kpi-hold", by.on_hold || 0, true);
    setNumber("kpi-open", stats.open_tasks);
    setNumber("kpi-overdue", stats.overdue_tasks, true);
    setNumber("kpi-rejections", stats.totals.rejections);
    setNumber("kpi-parked", stats.totals.parked);
    updatePathway(by);
    renderFunnel(stats.funnel);
    renderTasks(stats.open_tasks_by_owner, stats.overdue_tasks_by_owner);
    $("pathway-version").textContent = "pathway " + stats.pathway_version;
    $("updated").textContent = clock(new Date().toISOString());
  }

  function renderFunnel(funnel) {
    const root = $("funnel");
    const top = Math.max(1, funnel.length ? funnel[0].reached : 1);
    if (root.children.length !== funnel.length) {
      root.replaceChildren();
      for (const stage of funnel) {
        const row = html("div", "funnel-row");
        row.dataset.stage = stage.stage;
        const name = html("button", "funnel-stage", label(stage.stage));
        name.type = "button";
        name.setAttribute("aria-label", `${label(stage.stage)}: list the clients there now`);
        name.addEventListener("click", () => listClients(stage.stage));
        row.append(name);
        const track = html("div", "funnel-track");
        track.append(html("div", "funnel-fill"));
        row.append(track);
        const num = html("div", "funnel-num");
        num.append(html("b"), html("span"));
        row.append(num);
        root.append(row);
      }
    }
    funnel.forEach((stage, i) => {
      const row = root.children[i];
      row.querySelector(".funnel-fill").style.width = (100 * stage.reached / top).toFixed(1) + "%";
      row.querySelector(".funnel-num b").textContent = fmt(stage.reached);
      row.querySelector(".funnel-num span").textContent = Math.round(100 * stage.reached / top) + "%";
      row.title = `${fmt(stage.reached)} reached · ${fmt(stage.current)} there now`;
    });
  }

  function renderTasks(open, overdue) {
    const body = $("tasks-body");
    body.replaceChildren();
    const max = Math.max(1, ...OWNERS.map((o) => open[o] || 0));
    for (const owner of OWNERS) {
      const o = open[owner] || 0, d = overdue[owner] || 0;
      const tr = html("tr");
      tr.dataset.owner = owner;
      tr.append(html("td", "owner", owner));
      tr.append(html("td", "num", fmt(o)));
      tr.append(html("td", "num overdue" + (d ? "" : " none"), fmt(d)));
      const barCell = html("td");
      const bar = html("div", "minibar");
      const due = html("div", "d");
      due.style.width = (100 * d / max) + "%";
      const rest = html("div", "o");
      rest.style.width = (100 * (o - d) / max) + "%";
      bar.append(due, rest);
      barCell.append(bar);
      tr.append(barCell);
      body.append(tr);
    }
  }

  async function refreshStats() {
    renderStats(await api("/v1/stats"));
  }

  function scheduleRefresh() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(async () => {
      refreshTimer = null;
      try { await refreshStats(); } catch (error) { handleError(error); }
    }, 300);
  }

  // --- recent lists ----------------------------------------------------------------------
  function prepend(listId, emptyId, item) {
    const list = $(listId);
    if (Date.now() - liveSince > 1500) item.classList.add("fresh");
    list.prepend(item);
    while (list.children.length > MAX_ITEMS) list.lastChild.remove();
    $(emptyId).hidden = list.children.length > 0;
  }

  function addStateChange(m) {
    const li = html("li");
    li.dataset.client = m.client_id;
    li.dataset.to = m.to_state;
    const t = html("span", "time", clock(m.recorded_at));
    t.title = m.recorded_at;
    const what = html("span", "what");
    what.append(
      K.clientLink(m.client_id),
      html("span", "chip s-" + (m.from_state || "new"), label(m.from_state || "new")),
      html("span", "arrow", "→"),
      html("span", "chip s-" + m.to_state, label(m.to_state)),
      html("span", "type", m.event_type),
    );
    li.append(t, what);
    prepend("changes", "changes-empty", li);
  }

  function addRejection(m) {
    const li = html("li");
    const t = html("span", "time", clock(m.recorded_at));
    t.title = m.recorded_at;
    const what = html("span", "what");
    what.append(
      m.subject ? K.clientLink(m.subject) : html("span", "client", "—"),
      html("span", "type", m.type || "unparseable"),
    );
    for (const reason of m.reasons || []) what.append(html("span", "chip reason", reason.code));
    li.append(t, what);
    prepend("rejections", "rejections-empty", li);
  }

  function onMessage(kind, event) {
    // Reconnecting by hand (after an error) resumes at this row; `seen` drops repeats.
    const position = parseInt(event.lastEventId || "", 10);
    if (!isNaN(position)) resumeAfter = Math.max(position - 1, 0);
    let m;
    try { m = JSON.parse(event.data); } catch { return; }
    if (seen.has(m.id)) return;
    seen.add(m.id);
    if (seen.size > 5000) seen.delete(seen.values().next().value);
    if (kind === "state") addStateChange(m);
    if (kind === "rejected") addRejection(m);
    if (kind === "task") {
      $("queue-live").textContent =
        `last change: ${m.change} ${m.task.code} for ${m.client_id} at ${clock(m.recorded_at)}`;
      scheduleQueue();
    }
    scheduleRefresh();
  }

  // Fill the lists from the backlog, then follow the stream from exactly where it ended.
  async function loadRecent() {
    const recent = await api("/v1/stream/recent?limit=" + MAX_ITEMS);
    liveSince = Date.now();
    for (const message of recent.messages) {
      if (message.event === "state-changes") onMessage("state", { data: JSON.stringify(message.data) });
      if (message.event === "rejected") onMessage("rejected", { data: JSON.stringify(message.data) });
    }
    resumeAfter = recent.position;
  }

  // --- the clients in one state (a pathway node or funnel stage, chosen) ---------------------
  async function listClients(state) {
    const panel = $("state-clients");
    panel.hidden = false;
    panel.dataset.state = state;
    $("state-clients-title").textContent = `Clients in ${label(state)} now`;
    $("state-clients-count").textContent = "loading…";
    try {
      const clients = await api("/v1/clients?" + new URLSearchParams({ state, limit: "500" }));
      if (panel.dataset.state !== state) return; // another state was chosen meanwhile
      const items = clients.map((c) => {
        const li = html("li");
        li.append(K.clientLink(c.client_id), " ", html("span", "chip s-" + c.state, label(c.state)));
        return li;
      });
      $("state-clients-list").replaceChildren(...items);
      $("state-clients-count").textContent = `${fmt(clients.length)} clients`;
      $("state-clients-empty").hidden = clients.length > 0;
    } catch (error) {
      $("state-clients-count").textContent = "could not load the clients";
      handleError(error);
    }
    panel.scrollIntoView({ block: "nearest" });
    $("state-clients-title").focus();
  }

  // --- the work queue ------------------------------------------------------------------------
  // The views: what a person asks of the queue first (issue 20). "Mine" is what the signed-in
  // person (or key) claimed; "due today" is the clinic's today, in its time zone.
  const VIEWS = {
    all: () => true,
    mine: (t, me) => t.claimed_by === me.name,
    unclaimed: (t) => t.status === "requested",
    today: (t, me, now) => K.clinicDay(t.due) === K.clinicDay(now),
    overdue: (t, me, now) => K.isOverdue(t, now),
  };
  const currentView = () => (document.querySelector('#queue-views input[name="view"]:checked') || {}).value || "all";

  async function loadQueue() {
    const [me, tasks] = await Promise.all([K.whoAmI(), api("/v1/tasks?open=true&limit=5000")]);
    const owner = $("filter-owner").value;
    const priority = $("filter-priority").value;
    const view = VIEWS[currentView()] || VIEWS.all;
    const now = new Date().toISOString().slice(0, 19) + "Z";
    const rank = (t) => K.PRIORITIES.indexOf(t.priority);
    // The client's own reminders are messages to send, never staff tasks to claim.
    const staff = tasks.filter((t) => t.owner !== "client");
    const shown = staff
      .filter((t) => (!owner || t.owner === owner) && (!priority || t.priority === priority))
      .filter((t) => view(t, me, now))
      .sort((a, b) => rank(a) - rank(b) || a.due.localeCompare(b.due));
    const overdue = shown.filter((t) => K.isOverdue(t, now)).length;
    $("queue-count").textContent = `${fmt(shown.length)} open · ${fmt(overdue)} overdue` +
      (shown.length > QUEUE_ROWS ? ` · showing the first ${QUEUE_ROWS}` : "");
    $("queue-role").textContent = me.may_act_on_tasks
      ? `signed in as ${me.name} (${me.role})`
      : `signed in as ${me.name} (${me.role}): read only — an operations key may act on tasks`;
    const table = K.taskTable(shown.slice(0, QUEUE_ROWS), {
      now, mayAct: me.may_act_on_tasks, onDone: afterAction, caption: "Open tasks, most urgent first",
    });
    K.replaceKeepingFocus($("queue"), table);
    $("queue-empty").hidden = shown.length > 0;
    renderMessages(tasks.filter((t) => t.owner === "client"), now);
  }

  function renderMessages(messages, now) {
    messages.sort((a, b) => a.due.localeCompare(b.due));
    const table = html("table", "table queue-table messages-table");
    table.append(html("caption", "sr-only", "Messages to send to clients, soonest first"));
    const head = html("tr");
    for (const column of ["Send by", "Message", "Client"]) {
      const th = html("th", null, column);
      th.scope = "col";
      head.append(th);
    }
    const thead = html("thead");
    thead.append(head);
    const body = html("tbody");
    for (const task of messages.slice(0, QUEUE_ROWS)) {
      const row = html("tr");
      row.dataset.task = task.id;
      row.dataset.code = task.code;
      const what = html("span", "task-what");
      what.append(html("span", "code", task.code), html("span", "desc muted small", task.description || ""));
      for (const [name, content] of [["Send by", K.dueCell(task, now)], ["Message", what], ["Client", K.clientLink(task.for)]]) {
        const td = html("td");
        td.dataset.label = name;
        td.append(content);
        row.append(td);
      }
      body.append(row);
    }
    table.append(thead, body);
    $("messages").replaceChildren(table);
    $("messages-count").textContent = `${fmt(messages.length)} to send`;
    $("messages-empty").hidden = messages.length > 0;
  }

  function afterAction(message, isError) {
    K.announce(message, isError);
    scheduleQueue();
    scheduleRefresh();
  }

  function scheduleQueue() {
    if (queueTimer) return;
    queueTimer = setTimeout(async () => {
      queueTimer = null;
      try { await loadQueue(); } catch (error) { handleError(error); }
    }, 250);
  }

  // --- the live stream -------------------------------------------------------------------
  // EventSource cannot send headers, and a key in a URL ends up in logs and history: each
  // connection first asks for a single-use stream ticket (key in the header), then opens the
  // stream with it. A spent ticket cannot reconnect, so EventSource's own reconnection is
  // replaced by ours: close, new ticket, resume after the last row seen (`seen` drops the
  // repeats). A revoked key is refused the ticket, which brings back the sign-in form.
  function stopStream() {
    streamAttempt += 1; // a connection still asking for its ticket will not open
    clearTimeout(retryTimer);
    if (source) source.close();
    source = null;
  }

  async function connectStream() {
    stopStream();
    const attempt = streamAttempt;
    setConnection("reconnecting", "connecting");
    let ticket;
    try {
      ticket = (await K.post("/v1/stream/ticket")).ticket;
    } catch (error) {
      if (attempt === streamAttempt) handleError(error);
      return;
    }
    if (attempt !== streamAttempt) return;
    const params = new URLSearchParams({ ticket });
    if (resumeAfter !== null) params.set("after", String(resumeAfter));
    const opened = new EventSource("/v1/stream?" + params.toString());
    source = opened;
    opened.onopen = () => {
      retryDelay = 250; // a stream that ended after running reconnects almost at once
      liveSince = Date.now();
      setConnection("live", "live");
      scheduleRefresh();
    };
    opened.onerror = () => {
      opened.close();
      if (source !== opened) return;
      setConnection("reconnecting", "reconnecting");
      retryTimer = setTimeout(connectStream, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 30000); // the server may be down, or full (429)
    };
    opened.addEventListener("state-changes", (e) => onMessage("state", e));
    opened.addEventListener("rejected", (e) => onMessage("rejected", e));
    opened.addEventListener("tasks", (e) => onMessage("task", e));
  }

  // --- login -----------------------------------------------------------------------------
  function showLogin(message) {
    stopStream();
    setConnection("offline", "signed out");
    K.showLogin(message);
  }

  function handleError(error) {
    if (error instanceof K.AuthError || (error instanceof K.ApiFailure && error.status === 403)) {
      // Nobody signed in yet: the sign-in form, not the server's "missing API key".
      showLogin(K.hasKey() ? error.message : "");
    } else {
      setConnection("offline", "offline");
      clearTimeout(retryTimer);
      retryTimer = setTimeout(start, 5000);
    }
  }

  async function start() {
    try {
      await K.loadPageOptions().catch(() => null); // the clinic's time zone, before any time
      if (!pathway) {
        pathway = await api("/v1/pathway");
        drawPathway();
      }
      await refreshStats();
      $("login").hidden = true;
      $("signout").hidden = !K.hasKey();
      if (resumeAfter === null) await loadRecent();
      await loadQueue();
      connectStream();
    } catch (error) {
      handleError(error);
    }
  }

  K.wireLogin(start);
  $("signout").addEventListener("click", () => {
    stopStream();
    setConnection("offline", "signed out");
  });
  for (const id of ["filter-owner", "filter-priority", "queue-views"]) {
    $(id).addEventListener("change", scheduleQueue);
  }
  $("state-clients-close").addEventListener("click", () => {
    $("state-clients").hidden = true;
    delete $("state-clients").dataset.state;
  });
  $("queue-filters").addEventListener("submit", (event) => event.preventDefault());
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("search-client").value.trim();
    if (id) window.location.href = "/dashboard/clients/" + encodeURIComponent(id);
  });
  setInterval(() => { if (source && source.readyState === EventSource.OPEN) scheduleRefresh(); }, 30000);
  // Back from the identity provider: exchange the code first, then start signed in.
  K.finishSignIn().then(start, (error) => showLogin(error.message));
})();
