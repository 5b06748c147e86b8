// kapflow screens: what the operations dashboard and the client page share.
// The bearer credential (an API key, or a person's access token from their identity
// provider; kept in this tab's sessionStorage only), JSON calls, the sign-in form (OpenID
// Connect authorization code + PKCE when the server offers it, an API key otherwise), small
// DOM helpers, and the work queue's task actions (claim, complete, cancel, reassign), which
// are recorded by the server as operations events. Only ids and codes are ever shown.
"use strict";

window.Kapflow = (() => {
  const KEY_STORAGE = "kapflow.apiKey";
  const PENDING_STORAGE = "kapflow.oidcPending"; // the PKCE verifier and state, one sign-in
  const OWNERS = ["scheduler", "clinician", "billing", "prescriber_liaison", "client"];
  const PRIORITIES = ["stat", "asap", "urgent", "routine"];
  const CANCEL_REASONS = ["not_applicable", "duplicate_request", "client_declined", "done_elsewhere"];
  let apiKey = sessionStorage.getItem(KEY_STORAGE) || "";
  let me = null;

  class AuthError extends Error {}
  class ApiFailure extends Error {
    constructor(status, body) {
      super(body.detail || "HTTP " + status);
      this.status = status;
      this.body = body;
    }
  }

  const $ = (id) => document.getElementById(id);

  async function api(path, options) {
    const headers = { ...(options && options.headers) };
    if (apiKey) headers.Authorization = "Bearer " + apiKey;
    const init = { cache: "no-store", ...options, headers };
    const response = await fetch(path, init);
    if (response.headers.get("X-Kapflow-Insecure-Dev") === "true") {
      const banner = $("insecure-banner");
      if (banner) banner.hidden = false;
    }
    if (response.status === 401) {
      const body = await response.json().catch(() => ({}));
      throw new AuthError(body.detail || "sign in with an API key");
    }
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new ApiFailure(response.status, body);
    }
    return response.json();
  }

  function post(path, body, idempotencyKey) {
    const headers = { "Content-Type": "application/json" };
    if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
    return api(path, { method: "POST", headers, body: JSON.stringify(body || {}) });
  }

  async function whoAmI() {
    if (!me) me = await api("/v1/me");
    return me;
  }

  function setKey(value) {
    apiKey = value;
    me = null;
    if (value) sessionStorage.setItem(KEY_STORAGE, value);
    else sessionStorage.removeItem(KEY_STORAGE);
  }
  const hasKey = () => Boolean(apiKey);
  const key = () => apiKey;

  // --- sign in with OpenID Connect (authorization code + PKCE, RFC 7636) ------------------
  // The browser is a public client: no secret; the PKCE verifier proves the code is ours,
  // the state that the answer is to our request. The token endpoint is called from here
  // (the page's CSP allows the provider's origin, and the provider allows ours by CORS).
  // The same public document names the clinic's time zone (KAPFLOW_CLINIC_TZ).
  let pageOptions = null;

  async function loadPageOptions() {
    if (pageOptions === null) {
      const response = await fetch("/dashboard/sign-in.json", { cache: "no-store" });
      pageOptions = response.ok ? await response.json() : {};
      if (pageOptions.clinic_time_zone) setZone(pageOptions.clinic_time_zone);
    }
    return pageOptions;
  }

  async function oidcOptions() {
    return (await loadPageOptions()).oidc || null;
  }

  const base64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
    .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  const randomText = (n) => base64url(crypto.getRandomValues(new Uint8Array(n)));
  const redirectUri = (options) => location.origin + options.redirect_path;

  async function discover(issuer) {
    const response = await fetch(issuer.replace(/\/$/, "") + "/.well-known/openid-configuration");
    if (!response.ok) throw new AuthError("the identity provider cannot be reached");
    const metadata = await response.json();
    if (metadata.issuer !== issuer) throw new AuthError("the identity provider names another issuer");
    return metadata;
  }

  async function beginSignIn() {
    const options = await oidcOptions();
    const provider = await discover(options.issuer);
    const verifier = randomText(48);
    const challenge = base64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
    const state = randomText(16);
    sessionStorage.setItem(PENDING_STORAGE, JSON.stringify({
      verifier, state, tokenEndpoint: provider.token_endpoint, back: location.pathname,
    }));
    const params = new URLSearchParams({
      response_type: "code", client_id: options.client_id, redirect_uri: redirectUri(options),
      scope: options.scope, state, code_challenge: challenge, code_challenge_method: "S256",
    });
    if (options.resource) params.set("resource", options.resource);
    location.assign(provider.authorization_endpoint + "?" + params.toString());
  }

  // Back from the provider (`?code=&state=` or `?error=`): the code for a token, kept as the
  // bearer. True: signed in and staying; false: nothing to finish. Throws AuthError.
  async function finishSignIn() {
    const query = new URLSearchParams(location.search);
    if (!query.has("code") && !query.has("error")) return false;
    const pending = JSON.parse(sessionStorage.getItem(PENDING_STORAGE) || "null");
    sessionStorage.removeItem(PENDING_STORAGE);
    history.replaceState(null, "", location.pathname); // the code is single use: off the URL
    const options = await oidcOptions();
    if (query.has("error")) throw new AuthError("sign-in refused: " + (query.get("error_description") || query.get("error")));
    if (!options || !pending || pending.state !== query.get("state")) throw new AuthError("sign-in answer not ours: sign in again");
    if (query.has("iss") && query.get("iss") !== options.issuer) throw new AuthError("sign-in answer from another issuer");
    const form = new URLSearchParams({
      grant_type: "authorization_code", code: query.get("code"), redirect_uri: redirectUri(options),
      client_id: options.client_id, code_verifier: pending.verifier,
    });
    if (options.resource) form.set("resource", options.resource);
    const response = await fetch(pending.tokenEndpoint, { method: "POST", body: form });
    const body = await response.json().catch(() => ({}));
    if (!response.ok || !body.access_token) throw new AuthError("sign-in failed: " + (body.error_description || body.error || response.status));
    setKey(body.access_token);
    if (pending.back && pending.back !== location.pathname) {
      location.replace(pending.back);
      return new Promise(() => {}); // leaving
    }
    return true;
  }

  // --- sign in ----------------------------------------------------------------------------
  async function offerProvider() {
    const options = await oidcOptions().catch(() => null);
    if (!options || $("login-oidc")) return Boolean(options);
    const box = html("div", "oidc");
    box.id = "login-oidc";
    const button = html("button", "primary", "Sign in with " + options.provider);
    button.type = "button";
    button.id = "login-oidc-button";
    button.addEventListener("click", () => {
      button.disabled = true;
      beginSignIn().catch((error) => { button.disabled = false; showLogin(error.message); });
    });
    box.append(button, html("p", "muted small or", "or, for services and development, an API key:"));
    $("login-form").querySelector("p").before(box);
    return true;
  }

  function showLogin(message) {
    $("login").hidden = false;
    $("login-error").hidden = !message;
    $("login-error").textContent = message || "";
    offerProvider().then((offered) => (offered ? $("login-oidc-button") : $("login-key")).focus());
  }

  function wireLogin(start) {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      setKey($("login-key").value.trim());
      $("login-key").value = "";
      $("login").hidden = true;
      start();
    });
    const signout = $("signout");
    if (signout) {
      signout.addEventListener("click", () => {
        setKey("");
        signout.hidden = true;
        showLogin("");
      });
    }
  }

  // --- DOM helpers --------------------------------------------------------------------------
  function html(tag, className, text) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined && text !== null) el.textContent = text;
    return el;
  }
  const fmt = (n) => (n === undefined || n === null ? "—" : Number(n).toLocaleString("en-US"));
  const label = (state) => (state || "—").replace(/_/g, " ");
  // Every time on the screens is the clinic's, with its zone named ("09:00 CET"): staff
  // read a due time as the clinic's morning, whatever the browser's own zone is.
  let zone = "UTC";
  let dayFormat = null, clockFormat = null, whenFormat = null;
  function setZone(name) {
    const common = { timeZone: name, hourCycle: "h23" };
    try {
      dayFormat = new Intl.DateTimeFormat("en-CA", { timeZone: name, year: "numeric", month: "2-digit", day: "2-digit" });
      clockFormat = new Intl.DateTimeFormat("en-GB", { ...common, hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short" });
      whenFormat = new Intl.DateTimeFormat("en-CA", { ...common, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", timeZoneName: "short" });
      zone = name;
    } catch {
      if (name !== "UTC") setZone("UTC");
    }
  }
  setZone("UTC");
  const parts = (format, d) => Object.fromEntries(format.formatToParts(d).map((p) => [p.type, p.value]));
  function clock(iso) {
    const d = new Date(iso);
    if (isNaN(d)) return "—";
    const p = parts(clockFormat, d);
    return `${p.hour}:${p.minute}:${p.second} ${p.timeZoneName}`;
  }
  function when(iso) {
    const d = new Date(iso);
    if (isNaN(d)) return "—";
    const p = parts(whenFormat, d);
    return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute} ${p.timeZoneName}`;
  }
  // The calendar day (YYYY-MM-DD) in the clinic's zone: "due today" is the clinic's today.
  function clinicDay(iso) {
    const d = new Date(iso);
    return isNaN(d) ? "" : dayFormat.format(d);
  }
  const clinicZone = () => zone;
  function clientLink(clientId) {
    const a = html("a", "client", clientId);
    a.href = "/dashboard/clients/" + encodeURIComponent(clientId);
    return a;
  }
  function isOverdue(task, now) {
    return (task.status === "requested" || task.status === "in-progress") && task.due < now;
  }
  // Status in words and a symbol, never by colour alone.
  function dueCell(task, now) {
    const cell = html("span", "due");
    cell.append(html("span", "due-time", when(task.due)));
    if (isOverdue(task, now)) {
      const flag = html("span", "flag overdue-flag", "⚠ overdue");
      cell.append(" ", flag);
    }
    return cell;
  }
  function priorityChip(priority) {
    const marks = { stat: "▲▲▲", asap: "▲▲", urgent: "▲", routine: "·" };
    const chip = html("span", "chip prio prio-" + priority);
    chip.append(html("span", "prio-mark", marks[priority] || ""), " " + priority);
    return chip;
  }
  // `claimedBy`: who claimed the task (the operations event's actor), so the queue shows who
  // is on it; the owner column stays the role.
  function statusChip(status, claimedBy) {
    let text = status === "in-progress" ? "in progress" : status;
    if (status === "in-progress" && claimedBy) text += ` — claimed by ${claimedBy}`;
    return html("span", "chip status status-" + status, text);
  }

  // --- task actions -----------------------------------------------------------------------------
  // A fresh Idempotency-Key per click: a retried request (not a second click) is a duplicate.
  function requestId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return Date.now().toString(16) + "-" + Math.random().toString(16).slice(2);
  }

  // One row's buttons. `onDone(message)` is called after the server recorded the action.
  function taskActions(task, onDone) {
    const box = html("div", "actions");
    const what = `${task.code} for ${task.for}`;
    const act = async (action, body, button) => {
      button.disabled = true;
      try {
        const result = await post(`/v1/tasks/${encodeURIComponent(task.id)}/${action}`, body, requestId());
        onDone(`${action}: ${what} — ${result.outcome}; now ${result.task ? result.task.status : "closed"}`);
      } catch (error) {
        button.disabled = false;
        const reason = error instanceof ApiFailure && error.status === 403
          ? "this key may not act on tasks (an operations key may)"
          : error.message;
        onDone(`${action} failed: ${what} — ${reason}`, true);
      }
    };
    const button = (text, action, body, hint) => {
      const b = html("button", "act act-" + action, text);
      b.type = "button";
      b.id = `${action}-${task.id}`;
      b.setAttribute("aria-label", `${hint || text} ${what}`);
      b.addEventListener("click", () => act(action, typeof body === "function" ? body() : body, b));
      return b;
    };
    if (task.status === "requested") box.append(button("Claim", "claim", {}, "Claim"));
    box.append(button("Complete", "complete", {}, "Complete"));

    const more = html("details", "more");
    const summary = html("summary", null, "More");
    summary.id = "more-" + task.id;
    summary.setAttribute("aria-label", `More actions for ${what}`);
    more.append(summary);
    const panel = html("div", "more-panel");
    const reasonId = "reason-" + task.id;
    const reasonLabel = html("label", "small", "Reason");
    reasonLabel.htmlFor = reasonId;
    const reason = html("select");
    reason.id = reasonId;
    for (const code of CANCEL_REASONS) {
      const option = html("option", null, label(code));
      option.value = code;
      reason.append(option);
    }
    panel.append(reasonLabel, reason, button("Cancel task", "cancel", () => ({ reason: reason.value }), "Cancel task"));
    const roleId = "role-" + task.id;
    const roleLabel = html("label", "small", "Owner");
    roleLabel.htmlFor = roleId;
    const role = html("select");
    role.id = roleId;
    for (const owner of OWNERS) {
      if (owner === task.owner) continue;
      const option = html("option", null, label(owner));
      option.value = owner;
      role.append(option);
    }
    panel.append(roleLabel, role, button("Reassign", "reassign", () => ({ to_role: role.value }), "Reassign"));
    more.append(panel);
    box.append(more);
    return box;
  }

  // A table of tasks with their actions (or, for keys that may not act, without them).
  function taskTable(tasks, { now, mayAct, onDone, showClient = true, caption }) {
    const table = html("table", "table queue-table");
    if (caption) table.append(html("caption", "sr-only", caption));
    const head = html("thead");
    const tr = html("tr");
    const columns = ["Due", "Priority", "Task", ...(showClient ? ["Client"] : []), "Owner", "Status", ...(mayAct ? ["Actions"] : [])];
    for (const column of columns) {
      const th = html("th", null, column);
      th.scope = "col";
      tr.append(th);
    }
    head.append(tr);
    table.append(head);
    const body = html("tbody");
    for (const task of tasks) {
      const row = html("tr");
      row.dataset.task = task.id;
      row.dataset.code = task.code;
      if (isOverdue(task, now)) row.classList.add("is-overdue");
      const cells = [dueCell(task, now), priorityChip(task.priority)];
      const what = html("span", "task-what");
      what.append(html("span", "code", task.code), html("span", "desc muted small", task.description || ""));
      cells.push(what);
      if (showClient) cells.push(clientLink(task.for));
      cells.push(html("span", "owner", task.owner), statusChip(task.status, task.claimed_by));
      if (mayAct) cells.push(taskActions(task, onDone));
      cells.forEach((content, i) => {
        const td = html("td");
        td.dataset.label = columns[i]; // the column's name, shown when rows stack (narrow screens)
        td.append(content);
        row.append(td);
      });
      body.append(row);
    }
    table.append(body);
    return table;
  }

  // Replace a task table without losing what the person was doing in it: a live update must
  // not close an open "More" panel or move the keyboard focus.
  function replaceKeepingFocus(container, table) {
    const open = [...container.querySelectorAll("details[open]")].map((d) => d.closest("tr").dataset.task);
    const focused = document.activeElement && container.contains(document.activeElement)
      ? document.activeElement.id : "";
    container.replaceChildren(table);
    for (const id of open) {
      const details = container.querySelector(`tr[data-task="${CSS.escape(id)}"] details`);
      if (details) details.open = true;
    }
    if (focused) {
      const again = document.getElementById(focused);
      if (again) again.focus();
    }
  }

  function announce(message, isError) {
    const region = $("announcer");
    if (!region) return;
    region.textContent = message;
    region.classList.toggle("error", Boolean(isError));
  }

  return {
    OWNERS, PRIORITIES, AuthError, ApiFailure, api, post, whoAmI, setKey, hasKey, key,
    showLogin, wireLogin, finishSignIn, loadPageOptions, html, fmt, label, clock, when, clinicDay,
    clinicZone, clientLink, isOverdue,
    dueCell, priorityChip, statusChip, taskTable, replaceKeepingFocus, announce, $,
  };
})();
