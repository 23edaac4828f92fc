// The qflume status page: polls GET /status, searches with POST /batch/search.
// Every string from the server is hostile input (file names, record ids, skip reasons): it goes
// into the page only as text (textContent / text nodes), never as HTML.
"use strict";
(() => {
  const TOKEN_KEY = "qflume-token";
  const POLL_MS = 1500;
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  // The token: from sessionStorage, or from "#token=..." once (then taken out of the address).
  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  const fromHash = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (fromHash) {
    try { token = decodeURIComponent(fromHash[1]); } catch (e) { token = fromHash[1]; }
    sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, "", location.pathname + location.search);
  }

  class AuthError extends Error {}

  // An element with text children; attrs are fixed names set by this script.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else e.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  async function api(path, body) {
    const opts = { headers: {}, cache: "no-store" };
    if (token) opts.headers.Authorization = "Bearer " + token;
    if (body !== undefined) {
      opts.method = "POST";
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    try {
      opts.headers = new Headers(opts.headers);
    } catch (e) { // a pasted token with characters a header cannot carry
      askToken("this token cannot be sent in an HTTP header");
      throw new AuthError("bad token");
    }
    let r;
    try {
      r = await fetch(path, opts);
    } catch (e) {
      throw new Error(`cannot reach the service (${e.message})`);
    }
    let doc = null;
    try { doc = await r.json(); } catch (e) { doc = null; }
    if (r.status === 401) {
      askToken(token ? "the service refused this token" : "");
      throw new AuthError("token needed");
    }
    if (!r.ok) throw new Error((doc && doc.error) || `HTTP ${r.status}`);
    return doc;
  }

  function askToken(message) {
    $("token-form").hidden = false;
    $("token-error").textContent = message || "";
    $("token").focus();
  }

  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value.trim();
    $("token").value = "";
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token-form").hidden = true;
    poll();
  });

  function showError(message) {
    $("error").hidden = !message;
    $("error").textContent = message || "";
  }

  // Control characters and bidi overrides shown as escapes: a name cannot rewrite the page's
  // text ("evil\u202etxt.exe") or hide part of itself. Newlines and tabs stay where asked.
  const INVISIBLE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]/g;
  const INVISIBLE_NL = /[\n\t]/g;
  function visible(s, keepLines) {
    const out = String(s === null || s === undefined ? "" : s).replace(INVISIBLE, (c) => {
      const n = c.charCodeAt(0);
      return n < 0x100 ? `\\x${n.toString(16).padStart(2, "0")}` : `\\u${n.toString(16).padStart(4, "0")}`;
    });
    return keepLines ? out : out.replace(INVISIBLE_NL, (c) => (c === "\n" ? "\\n" : "\\t"));
  }

  const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en"));
  const short = (id) => String(id || "").slice(0, 8);
  const clock = (t) => (t ? new Date(t * 1000).toLocaleTimeString("en-GB") : "–");

  function ago(t, now) {
    if (!t) return "";
    const s = Math.max(0, Math.round(now - t));
    return s < 120 ? `${s} s ago` : `${Math.round(s / 60)} min ago`;
  }

  function storage(c) {
    const parts = [];
    if (c.disk_bytes !== null && c.disk_bytes !== undefined) parts.push(`${(c.disk_bytes / 1048576).toFixed(1)} MiB on disk`);
    if (c.optimizer) parts.push(`optimizer ${visible(c.optimizer)}`);
    return parts.length ? parts.join(" · ") : "–";
  }

  function renderCollections(collections) {
    const body = $("collection-body");
    const rows = [];
    for (const c of collections) {
      $("collection-name").textContent = visible(c.name);
      for (const [label, value] of [
        ["collection", visible(c.name)], ["target", visible(c.target)], ["documents", fmt(c.documents)],
        ["chunks (state)", fmt(c.chunks)], ["points", fmt(c.points)],
        ["vector size", fmt(c.vector_size)], ["segments", fmt(c.segments)],
        ["status", c.status || "–"], ["storage", storage(c)], ["sparse", c.sparse],
      ]) rows.push(el("tr", null, el("th", null, label), el("td", { class: "v-" + label.split(" ")[0] }, value)));
    }
    body.replaceChildren(...rows);
  }

  function renderHealth(health, alerts) {
    const badge = $("health-badge");
    const state = health.http_status >= 500 ? "fatal" : health.ok ? "ok" : "degraded";
    badge.className = "badge " + state;
    badge.textContent = `${state} · ${health.score}/100`;
    const mem = (health.checks || {}).memory || {};
    const disk = (health.checks || {}).disk || {};
    const parts = [`score ${health.score}/100`];
    if (mem.rss_bytes) parts.push(`memory ${fmt(Math.round(mem.rss_bytes / 1048576))} MiB`);
    if (disk.free_bytes) parts.push(`disk free ${fmt(Math.round(disk.free_bytes / 1073741824))} GiB`);
    const w = health.jobs || {};
    parts.push(`job worker ${w.worker_alive ? "alive" : "stopped"}`);
    $("health-summary").textContent = parts.join(" · ");
    const now = Date.now() / 1000;
    const items = alerts.map((a) =>
      el("li", { class: "alert " + (a.level || "warning") },
        el("span", { class: "level" }, a.level || "warning"),
        el("span", { class: "code" }, visible(a.code || a.source || "alert")), visible(a.message),
        a.raised_at ? el("span", { class: "muted" }, ` · since ${clock(a.raised_at)} (${ago(a.raised_at, now)})`) : null));
    if (!items.length) items.push(el("li", { class: "muted" }, "No alerts."));
    $("alerts").replaceChildren(...items);
  }

  function jobCard(job, now) {
    const done = Number(job.items_done) || 0;
    const items = Number(job.items) || 0;
    const frac = items > 0 ? Math.min(1, done / items) : job.status === "done" ? 1 : 0;
    const pct = Math.round(frac * 100);
    const fill = el("div", { class: "fill" });
    fill.style.width = `${frac * 100}%`; // CSSOM, allowed by the page's CSP
    const bar = el("div", {
      class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": items,
      "aria-valuenow": done,
    }, fill);
    const r = job.result || {};
    const facts = [];
    if (r.chunks_embedded !== undefined) facts.push(`${fmt(r.chunks_embedded)} chunks embedded`);
    if (r.documents_skipped) facts.push(`${fmt(r.documents_skipped)} skipped`);
    if (r.chunks_per_s) facts.push(`${fmt(r.chunks_per_s)} chunks/s`);
    if (r.failed) facts.push(`${fmt(r.failed)} items failed`);
    if (job.started_at && !job.finished_at) facts.push(`started ${ago(job.started_at, now)}`);
    if (job.finished_at) facts.push(`finished ${clock(job.finished_at)}`);
    if (job.resumed) facts.push("resumed");
    return el("div", { class: "job " + job.status, "data-job": job.id },
      el("div", { class: "head" },
        el("span", { class: "status " + job.status }, job.status),
        el("span", null, job.kind),
        el("span", { class: "id", title: job.id }, short(job.id)),
        el("span", { class: "progress" }, `${fmt(done)} / ${fmt(items)} items (${pct}%)`)),
      job.finished_at ? null : bar,
      facts.length ? el("div", { class: "muted" }, facts.join(" · ")) : null,
      job.error ? el("div", { class: "error" }, visible(job.error)) : null);
  }

  function renderJobs(jobs, now) {
    const c = jobs.counts || {};
    $("job-counts").textContent =
      `running ${fmt(c.running)} · queued ${fmt(c.queued)} · done ${fmt(c.done)} · failed ${fmt(c.failed)}`;
    const active = (jobs.active || []).map((j) => jobCard(j, now));
    const more = (jobs.active_total || 0) - active.length;
    if (more > 0) active.push(el("p", { class: "muted" }, `and ${fmt(more)} more queued`));
    if (!active.length) active.push(el("p", { class: "muted" }, "No running or queued jobs."));
    $("jobs-active").replaceChildren(...active);
    const finished = (jobs.finished || []).map((j) => jobCard(j, now));
    if (!finished.length) finished.push(el("p", { class: "muted" }, "None yet."));
    $("jobs-finished").replaceChildren(...finished);
  }

  function renderPlot(tp) {
    const plot = $("plot");
    const W = 600, H = 170, L = 48, R = 8, T = 10, B = 22;
    const samples = (tp.samples || []).filter((s) => Array.isArray(s) && isFinite(s[0]) && isFinite(s[1]));
    const parts = [svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }),
                   svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B })];
    const last = samples.length ? samples[samples.length - 1][1] : 0;
    $("throughput-now").textContent = `now ${fmt(last)} ${tp.unit || ""}`;
    if (samples.length >= 2) {
      const t0 = samples[0][0], t1 = samples[samples.length - 1][0];
      const ymax = Math.max(1, ...samples.map((s) => s[1])) * 1.1;
      const x = (t) => L + ((t - t0) / Math.max(1e-9, t1 - t0)) * (W - L - R);
      const y = (v) => H - B - (v / ymax) * (H - T - B);
      const pts = samples.map((s) => `${x(s[0]).toFixed(1)},${y(s[1]).toFixed(1)}`);
      parts.push(svg("polygon", {
        class: "area", points: `${L},${H - B} ${pts.join(" ")} ${x(t1).toFixed(1)},${H - B}`,
      }));
      parts.push(svg("polyline", { class: "line", points: pts.join(" ") }));
      parts.push(svg("text", { x: L - 4, y: T + 9, "text-anchor": "end" }, fmt(Math.round(ymax))));
      parts.push(svg("text", { x: L - 4, y: H - B, "text-anchor": "end" }, "0"));
      const span = Math.round(t1 - t0);
      parts.push(svg("text", { x: L, y: H - 6 }, span < 120 ? `-${span} s` : `-${Math.round(span / 60)} min`));
      parts.push(svg("text", { x: W - R, y: H - 6, "text-anchor": "end" }, "now"));
    } else {
      parts.push(svg("text", { x: L + 8, y: H / 2 }, "collecting samples…"));
    }
    plot.replaceChildren(...parts);
  }

  function renderSkips(skips) {
    const rows = skips.map((s) => el("tr", { class: "skip" },
      el("td", null, clock(s.time)),
      el("td", { class: "key mono" }, visible(s.key)),
      el("td", { class: "reason" }, visible(s.reason),
        s.detail ? el("div", { class: "muted" }, visible(s.detail)) : null),
      el("td", { class: "mono", title: s.job }, short(s.job))));
    if (!rows.length) rows.push(el("tr", null, el("td", { class: "muted", colspan: 4 }, "No skips.")));
    $("skips-body").replaceChildren(...rows);
  }

  function render(s) {
    renderCollections(s.collections || []);
    renderHealth(s.health || {}, s.alerts || []);
    renderJobs(s.jobs || {}, s.time);
    renderPlot(s.throughput || {});
    renderSkips(s.skips || []);
    $("updated").textContent = `updated ${clock(s.time)}`;
  }

  let timer = null;
  async function poll() {
    clearTimeout(timer);
    try {
      render(await api("/status"));
      showError("");
    } catch (e) {
      if (e instanceof AuthError) return; // polling resumes once a token is given
      showError(`status: ${e.message}`);
    }
    timer = setTimeout(poll, document.hidden ? 5 * POLL_MS : POLL_MS);
  }

  function renderHits(hits) {
    const items = hits.map((h) => {
      const where = h.start !== null && h.start !== undefined ? ` [${h.start}–${h.end}]` : "";
      const text = String(h.page_content || "");
      return el("li", { class: "hit" },
        el("span", { class: "score mono" }, Number(h.score).toFixed(3)), " ",
        el("span", { class: "source" }, h.source === null ? "(no source)" : visible(h.source)),
        el("span", { class: "offsets muted" }, where),
        el("p", { class: "snippet" }, visible(text.length > 400 ? text.slice(0, 400) + "…" : text, true)));
    });
    $("hits").replaceChildren(...items);
  }

  $("search-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const q = $("q").value;
    if (!q.trim()) return;
    const limit = Math.max(1, Math.min(100, parseInt($("limit").value, 10) || 5));
    $("search-status").textContent = "searching…";
    try {
      const t = performance.now();
      const doc = await api("/batch/search", { queries: [q], limit });
      const hits = (doc.results || [[]])[0] || [];
      renderHits(hits);
      $("search-status").textContent =
        `${hits.length} hit(s) in ${Math.round(performance.now() - t)} ms`;
    } catch (e) {
      $("search-status").textContent = e instanceof AuthError ? "a token is needed" : `search: ${e.message}`;
    }
  });

  document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(); });
  poll();
})();
