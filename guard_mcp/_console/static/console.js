// guard-mcp console: countdowns, live updates (server-sent events, polling as the fallback) and the
// passkey ceremonies. Nothing here builds markup from data: the queue rows arrive as server-rendered,
// escaped HTML from this same origin.
"use strict";
(function () {
  const body = document.body;
  const skew = Number(body.dataset.now) * 1000 - Date.now();
  const csrf = (document.querySelector('meta[name="csrf"]') || {}).content || "";

  function countdown(seconds) {
    if (seconds <= 0) return "overdue";
    const s = Math.floor(seconds);
    if (s >= 3600) return Math.floor(s / 3600) + "h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
    if (s >= 60) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
    return s + "s";
  }
  function tick() {
    const now = (Date.now() + skew) / 1000;
    document.querySelectorAll(".countdown[data-deadline]").forEach(function (el) {
      el.textContent = countdown(Number(el.dataset.deadline) - now);
    });
  }
  setInterval(tick, 1000);

  function live(url, onQueue) {
    let polling = null;
    function poll() { if (!polling) polling = setInterval(function () { onQueue(null); }, 5000); }
    if (!window.EventSource) { poll(); return; }
    const source = new EventSource(url);
    source.addEventListener("queue", function (e) { onQueue(JSON.parse(e.data)); });
    source.addEventListener("signed-out", function () { source.close(); location.reload(); });
    source.onerror = function () { if (source.readyState === EventSource.CLOSED) poll(); };
  }

  const table = document.querySelector("table.queue");
  if (table) {
    const rows = document.getElementById("rows");
    live(table.dataset.events, function () {
      fetch(table.dataset.rows, { credentials: "same-origin" }).then(function (r) {
        if (r.status === 401) { location.reload(); return null; }
        return r.ok ? r.text() : null;
      }).then(function (html) { if (html !== null && html !== undefined) { rows.innerHTML = html; tick(); } });
    });
  }

  const card = document.querySelector("article.card");
  if (card && card.dataset.state === "pending") {
    live(card.dataset.events, function (data) {
      if (!data || data.pending.indexOf(card.dataset.id) < 0) location.reload();
    });
  }

  function status(text) { const el = document.getElementById("passkey-status"); if (el) el.textContent = text; }
  function options(url) {
    return fetch(url, { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf } })
      .then(function (r) { return r.json().then(function (j) { if (!r.ok) throw new Error(j.error || "refused"); return j; }); });
  }
  function supported() {
    return window.PublicKeyCredential && PublicKeyCredential.parseRequestOptionsFromJSON;
  }

  const signin = document.getElementById("signin-form");
  const signinButton = document.getElementById("passkey-signin");
  if (signin && signinButton) {
    const token = signin.querySelector('input[name="csrf"]').value;
    signinButton.addEventListener("click", function () {
      if (!supported()) { status("This browser cannot use passkeys here; use the code instead."); return; }
      status("Waiting for your passkey…");
      fetch(signin.dataset.options, { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": token } })
        .then(function (r) { return r.json().then(function (j) { if (!r.ok) throw new Error(j.error || "refused"); return j; }); })
        .then(function (json) {
          return navigator.credentials.get({ publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(json) });
        })
        .then(function (cred) {
          signin.querySelector('input[name="assertion"]').value = JSON.stringify(cred.toJSON());
          signin.submit();
        })
        .catch(function (err) { status("No passkey sign-in: " + err.message); });
    });
  }

  const enrol = document.getElementById("enrol-form");
  const enrolButton = document.getElementById("passkey-enrol");
  if (enrol && enrolButton) {
    const token = enrol.querySelector('input[name="csrf"]').value;
    enrolButton.addEventListener("click", function () {
      if (!window.PublicKeyCredential || !PublicKeyCredential.parseCreationOptionsFromJSON) {
        status("This browser cannot create passkeys here."); return;
      }
      status("Follow your browser's prompt…");
      fetch(enrol.dataset.options, { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": token } })
        .then(function (r) { return r.json().then(function (j) { if (!r.ok) throw new Error(j.error || "refused"); return j; }); })
        .then(function (json) {
          return navigator.credentials.create({ publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(json) });
        })
        .then(function (cred) {
          enrol.querySelector('input[name="credential"]').value = JSON.stringify(cred.toJSON());
          enrol.submit();
        })
        .catch(function (err) { status("The passkey was not created: " + err.message); });
    });
  }

  const decide = document.getElementById("decide-form");
  if (decide && decide.dataset.stepup === "passkey") {
    let confirmed = false;
    decide.addEventListener("submit", function (event) {
      const submitter = event.submitter;
      const code = decide.querySelector('input[name="code"]');
      if (confirmed || !submitter || submitter.value !== "approve" || (code && code.value)) return;
      event.preventDefault();
      if (!supported()) { status("This browser cannot use passkeys here; enter a code instead."); return; }
      status("Confirm with your passkey…");
      options(decide.dataset.challenge)
        .then(function (json) {
          return navigator.credentials.get({ publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(json) });
        })
        .then(function (cred) {
          decide.querySelector('input[name="assertion"]').value = JSON.stringify(cred.toJSON());
          confirmed = true;
          decide.requestSubmit(submitter);
        })
        .catch(function (err) { status("Not approved: " + err.message); });
    });
  }
})();
