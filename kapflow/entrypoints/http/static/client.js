// kapflow client page: where one client stands, what they still need before dosing, what is
// open, and what happened. Data: /v1/clients/{id}, its readiness, its history, and its
// replay (the "as of" selector). Task actions come from common.js. Ids and codes only.
"use strict";

(() => {
  const K = window.Kapflow;
  const { api, html, label, when, $ } = K;
  const clientId = decodeURIComponent(location.pathname.split("/").pop() || "");
  let entries = [];
  let rejections = []; // dead letters about this client (keys that may read them only)
  let moments = []; // distinct event times, ascending: the "as of" stops
  let me = null;
  let replayTimer = null;

  const nowIso = () => new Date().toISOString().slice(0, 19) + "Z";

  // --- the client's facts ------------------------------------------------------------------
  function fact(dl, name, value) {
    dl.append(html("dt", null, name));
    const dd = html("dd");
    if (value instanceof Node) dd.append(value);
    else dd.textContent = value === null || value === undefined || value === "" ? "—" : String(value);
    dl.append(dd);
  }

  function stateChip(state) {
    return html("span", "chip state-chip s-" + (state || "new"), label(state || "new"));
  }

  function renderFacts(view) {
    const dl = $("facts");
    dl.replaceChildren();
    fact(dl, "State", stateChip(view.state));
    if (view.held_from) fact(dl, "Held from", label(view.held_from));
    fact(dl, "Pathway", view.pathway ? label(view.pathway) : "not yet cleared");
    fact(dl, "Prescriber", view.prescriber ? label(view.prescriber) : null);
    fact(dl, "Doses remaining", view.doses_remaining);
    fact(dl, "Dosing sessions", view.dosing_sessions);
    fact(dl, "Preparation sessions", view.preparation_sessions);
    fact(dl, "Clearance valid until", view.clearance_valid_until);
    if (view.pathway === "low_dose") {
      fact(dl, "Subscription", view.subscription_active ? `active, paid until ${view.subscription_paid_until}` : "not active");
    }
    const reasons = html("span");
    for (const reason of view.reasons || []) reasons.append(html("span", "chip reason", reason), " ");
    fact(dl, "Reasons (hold or ineligibility)", (view.reasons || []).length ? reasons : "none");
    fact(dl, "Last event", view.last_event_time ? when(view.last_event_time) : null);
  }

  // --- readiness for the next dosing -------------------------------------------------------------
  async function renderReadiness() {
    const list = $("readiness");
    list.replaceChildren();
    let readiness;
    try {
      readiness = await api(`/v1/clients/${encodeURIComponent(clientId)}/readiness?action=dose`);
    } catch (error) {
      if (error instanceof K.AuthError) throw error;
      $("readiness-unavailable").hidden = false;
      $("readiness-unavailable").textContent = "Readiness unavailable" +
        (error instanceof K.ApiFailure && error.status !== 404 ? ` (${error.message})` : ".");
      $("readiness-verdict").textContent = "";
      return;
    }
    $("readiness-unavailable").hidden = true;
    const verdict = $("readiness-verdict");
    verdict.textContent = readiness.ready ? "✓ ready" : "✗ not ready";
    verdict.className = "small verdict " + (readiness.ready ? "pass" : "fail");
    for (const check of readiness.checks || []) {
      const li = html("li", "check " + (check.passed ? "pass" : "fail"));
      li.dataset.rule = check.rule;
      li.append(
        html("span", "mark", check.passed ? "✓ passed" : "✗ failed"),
        html("span", "chip rule", check.rule),
        html("span", "asks", check.checks || ""),
      );
      if (!check.passed) li.append(html("span", "why", check.why || ""));
      list.append(li);
    }
  }

  // --- open tasks ----------------------------------------------------------------------------------
  function renderTasks(view, asOf) {
    const tasks = view.open_tasks || [];
    $("tasks-title").textContent = asOf ? `Open tasks as of ${when(asOf)}` : "Open tasks";
    $("tasks-count").textContent = `${tasks.length} open`;
    const table = K.taskTable(tasks, {
      now: asOf || nowIso(),
      mayAct: Boolean(me && me.may_act_on_tasks) && !asOf,
      onDone: (message, isError) => { K.announce(message, isError); load(); },
      showClient: false,
      caption: "This client's open tasks",
    });
    K.replaceKeepingFocus($("client-tasks"), table);
    $("tasks-empty").hidden = tasks.length > 0;
  }

  // --- history, deviations, "as of" ----------------------------------------------------------------
  function taskLine(change) {
    const symbols = { opened: "+ opened", closed: "✓ closed", updated: "↻ updated" };
    const task = change.task;
    const text = `${symbols[change.change] || change.change} ${task.code}` +
      (change.change === "closed" ? ` (${task.status})` : change.change === "updated" ? ` (${task.status}, ${task.priority}, ${task.owner})` : "");
    return html("span", "task-change " + change.change, text);
  }

  function rejectedAt(record) {
    try {
      const time = JSON.parse(record.original).time;
      if (typeof time === "string") return new Date(time).toISOString().slice(0, 19) + "Z";
    } catch { /* an unparseable input: place it when it was recorded */ }
    return record.recorded_at;
  }

  function rejectionItem(record, asOf) {
    const at = rejectedAt(record);
    const later = asOf && at > asOf;
    const li = html("li", "rejected-item" + (later ? " later" : ""));
    const what = html("span", "what");
    what.append(html("span", "flag rejected-flag", "✗ rejected"), html("span", "type", record.type || "unparseable"));
    for (const reason of record.reasons || []) what.append(html("span", "chip reason", reason.code));
    if (later) what.append(html("span", "later-note", "(after the selected time)"));
    li.append(html("span", "time", when(at)), what);
    return { at, li };
  }

  function renderTimeline(asOf) {
    const list = $("timeline");
    list.replaceChildren();
    const ordered = [...entries].sort((a, b) => a.occurred_at.localeCompare(b.occurred_at) || a.seq - b.seq);
    const refused = rejections.map((record) => rejectionItem(record, asOf));
    const placeRefusedBefore = (at) => {
      while (refused.length && refused[0].at <= at) list.append(refused.shift().li);
    };
    refused.sort((a, b) => a.at.localeCompare(b.at));
    for (const entry of ordered) {
      placeRefusedBefore(entry.occurred_at);
      const later = asOf && entry.occurred_at > asOf;
      const li = html("li", later ? "later" : "");
      li.dataset.seq = String(entry.seq);
      const t = html("span", "time", when(entry.occurred_at));
      const what = html("span", "what");
      what.append(html("span", "type", entry.type));
      if (entry.from_state !== entry.to_state) {
        what.append(stateChip(entry.from_state === "new" ? null : entry.from_state), html("span", "arrow", "→"), stateChip(entry.to_state));
      }
      const outcome = entry.outcome || {};
      if (outcome.outcome === "deviation") {
        what.append(html("span", "flag deviation-flag", "⚑ deviation"));
        for (const d of outcome.deviations || []) what.append(html("span", "chip reason", d.code));
      }
      for (const change of outcome.tasks || []) what.append(taskLine(change));
      if (later) what.append(html("span", "later-note", "(after the selected time)"));
      li.append(t, what);
      list.append(li);
    }
    placeRefusedBefore("9999");
    $("timeline-count").textContent = `${entries.length} recorded events` +
      (rejections.length ? ` · ${rejections.length} rejected` : "");
  }

  function renderDeviations(view) {
    const list = $("deviations");
    list.replaceChildren();
    const recorded = entries.filter((e) => (e.outcome || {}).outcome === "deviation");
    for (const entry of recorded) {
      const li = html("li");
      const what = html("span", "what");
      what.append(html("span", "type", entry.type));
      for (const d of entry.outcome.deviations || []) {
        what.append(html("span", "chip reason", d.code), html("span", "why", d.message));
      }
      li.append(html("span", "time", when(entry.occurred_at)), what);
      list.append(li);
    }
    const open = (view.open_deviations || []).length;
    $("deviations-count").textContent = `${recorded.length} recorded · ${open} open`;
    $("deviations-empty").hidden = recorded.length > 0;
  }

  function setUpAsOf() {
    moments = [...new Set(entries.map((e) => e.occurred_at))].sort();
    const slider = $("as-of");
    slider.max = String(moments.length);
    slider.value = String(moments.length);
    slider.disabled = moments.length === 0;
    $("as-of-value").textContent = "now";
  }

  async function showAsOf() {
    const index = Number($("as-of").value);
    if (index >= moments.length) {
      $("as-of-value").textContent = "now";
      $("as-of-label").textContent = "now";
      await load();
      return;
    }
    const at = moments[index];
    $("as-of-value").textContent = when(at);
    const view = await api(`/v1/clients/${encodeURIComponent(clientId)}/replay?as_of=${encodeURIComponent(at)}`);
    $("as-of-label").textContent = `as of ${when(at)} (replayed)`;
    renderFacts(view);
    renderTasks(view, at);
    renderTimeline(at);
  }

  function scheduleAsOf() {
    clearTimeout(replayTimer);
    replayTimer = setTimeout(() => showAsOf().catch(handleError), 150);
  }

  // --- loading ---------------------------------------------------------------------------------------
  async function load() {
    $("client-id").textContent = clientId;
    document.title = `kapflow · ${clientId}`;
    me = await K.whoAmI();
    $("signout").hidden = !K.hasKey();
    let view;
    try {
      view = await api(`/v1/clients/${encodeURIComponent(clientId)}`);
    } catch (error) {
      if (error instanceof K.ApiFailure && error.status === 404) {
        $("not-found").hidden = false;
        $("not-found").textContent = `No client ${clientId} is recorded. Check the id and search again.`;
        return;
      }
      throw error;
    }
    $("not-found").hidden = true;
    $("as-of-label").textContent = "now";
    renderFacts(view);
    renderTasks(view, null);
    await renderReadiness();
    if (!me.may_read_history) {
      $("timeline-unavailable").hidden = false;
      $("timeline-unavailable").textContent = "The history needs an operations, auditor or admin key.";
      $("as-of-form").hidden = true;
      renderDeviations(view);
      return;
    }
    entries = await api(`/v1/clients/${encodeURIComponent(clientId)}/history`);
    rejections = me.may_read_rejections
      ? await api(`/v1/rejections?limit=200&client=${encodeURIComponent(clientId)}`)
      : [];
    renderTimeline(null);
    renderDeviations(view);
    if (Number($("as-of").max) !== new Set(entries.map((e) => e.occurred_at)).size) setUpAsOf();
  }

  function handleError(error) {
    if (error instanceof K.AuthError || (error instanceof K.ApiFailure && error.status === 403)) {
      K.showLogin(error.message);
    } else {
      K.announce("Could not load the client: " + error.message, true);
    }
  }

  function start() {
    $("login").hidden = true;
    // The clinic's time zone first: every time on the page is shown in it.
    K.loadPageOptions().catch(() => null).then(load).catch(handleError);
  }

  K.wireLogin(start);
  $("as-of").addEventListener("input", scheduleAsOf);
  $("as-of-now").addEventListener("click", () => {
    $("as-of").value = $("as-of").max;
    scheduleAsOf();
  });
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("search-client").value.trim();
    if (id) window.location.href = "/dashboard/clients/" + encodeURIComponent(id);
  });
  $("search-client").value = clientId;
  start();
})();
