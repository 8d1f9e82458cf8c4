// mcpcluster status page: polls this node's admin API and renders it.
// Plain DOM code, no framework, nothing loaded from elsewhere.
"use strict";

(function () {
  const POLL_MS = 2000;
  const TOKEN_KEY = "mcpcluster.token";
  let timer = null;
  let stopped = false; // waiting for a token

  // A token handed over in the URL fragment (#token=...) moves into this
  // tab's session storage and out of the address bar and history.
  function takeTokenFromFragment() {
    if (!location.hash || location.hash.length < 2) return;
    const params = new URLSearchParams(location.hash.slice(1));
    const tok = params.get("token");
    if (tok === null) return;
    if (tok) sessionStorage.setItem(TOKEN_KEY, tok);
    history.replaceState(null, "", location.pathname + location.search);
  }

  function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

  class AuthError extends Error {}

  async function getJSON(path, optional) {
    const headers = { "Accept": "application/json" };
    const tok = token();
    if (tok) headers["Authorization"] = "Bearer " + tok;
    const resp = await fetch(path, { headers, cache: "no-store" });
    if (resp.status === 401 || resp.status === 403) {
      let msg = resp.status === 401 ? "this node needs an admin token" : "this token may not read the API";
      try { const body = await resp.json(); if (body.error) msg = body.error; } catch (_) { /* keep msg */ }
      throw new AuthError(msg);
    }
    if (!resp.ok) {
      if (optional) return null;
      let msg = resp.status + " " + resp.statusText;
      try { const body = await resp.json(); if (body.error) msg += ": " + body.error; } catch (_) { /* keep msg */ }
      throw new Error(path + ": " + msg);
    }
    return resp.json();
  }

  // h builds an element: h("td", {class: "x", "data-id": "n1"}, "text", child, ...).
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  const $ = (id) => document.getElementById(id);

  function setText(id, text, cls) {
    const el = $(id);
    el.textContent = text;
    el.className = "value" + (cls ? " " + cls : "");
    return el;
  }

  function fillBody(table, rows, cols, emptyText) {
    const tbody = $(table).tBodies[0];
    if (rows.length === 0) rows = [h("tr", {}, h("td", { class: "empty", colspan: cols }, emptyText))];
    tbody.replaceChildren(...rows);
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
  }

  function pad(n) { return String(n).padStart(2, "0"); }
  // when shows a time of day, with the date when it is not today.
  function when(iso) {
    const d = new Date(iso);
    if (isNaN(d)) return iso;
    const time = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
    if (d.toDateString() === new Date().toDateString()) return time;
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + time;
  }

  const stateClass = { alive: "ok", suspect: "warn", dead: "bad", left: "" };
  const statusClass = { running: "ok", starting: "warn", stopping: "warn" };

  function roleOf(id, st, servers) {
    const s = servers.get(id);
    if (!s) return { text: "not in raft", cls: "" };
    let text = { Voter: "voter", Nonvoter: "nonvoter", Staging: "staging" }[s.suffrage] || String(s.suffrage).toLowerCase();
    if (id === st.leader.id) text = "leader";
    return { text, cls: text === "leader" ? "leader" : (s.healthy ? "ok" : "bad"), healthy: s.healthy };
  }

  function renderStatus(st) {
    $("view").textContent = "view of " + st.node + " (" + String(st.raft.state).toLowerCase() + ")";
    const leader = st.leader && st.leader.id;
    setText("leader", leader || "none", leader ? "" : "bad").setAttribute("data-leader", leader || "");
    setText("term", st.raft.term);
    setText("commit", st.raft.commit_index);
    setText("applied", st.raft.applied_index);
    const v = st.voters || {};
    setText("voters", (v.healthy_voters ?? "–") + "/" + (v.wanted ?? "–") + " healthy", v.warning ? "warn" : "").title =
      (v.voters ?? 0) + " voters, " + (v.nonvoters ?? 0) + " nonvoters; " + (v.wanted ?? 0) + " voters wanted";
    const f = st.fsm || {};
    setText("sessions", f.Sessions ?? "–");
    setText("cache", (f.CacheEntries ?? "–") + " · " + bytes(f.CacheBytes || 0));
    setText("ready", st.ready ? "ready" : "not ready", st.ready ? "ok" : "bad").title = st.ready_error || "";
    const warn = $("voter-warning");
    warn.hidden = !v.warning;
    warn.textContent = v.warning || "";

    const servers = new Map((st.servers || []).map((s) => [s.id, s]));
    const members = new Map((st.members || []).map((m) => [m.id, m]));
    const ids = [...new Set([...members.keys(), ...servers.keys()])].sort();
    const rows = ids.map((id) => {
      const m = members.get(id) || { id, state: "unknown", status: "", inflight: 0, capacity: 0, zone: (servers.get(id) || {}).zone };
      const role = roleOf(id, st, servers);
      const ratio = m.capacity > 0 ? Math.min(1, m.inflight / m.capacity) : 0;
      const barCls = ratio >= 0.9 ? "bar bad" : ratio >= 0.7 ? "bar warn" : "bar";
      return h("tr", { "data-member": id, "data-role": role.text },
        h("td", {}, h("strong", {}, id), " ",
          id === st.node ? h("span", { class: "badge self" }, "this node") : null,
          m.nonvoting ? h("span", { class: "badge", title: "started with --voter=false" }, "pinned nonvoting") : null),
        h("td", {}, h("span", { class: "badge " + (stateClass[m.state] ?? "warn") }, m.state)),
        h("td", {}, m.status ? h("span", { class: "badge " + (statusClass[m.status] || "") }, m.status) : "–"),
        h("td", {}, h("span", { class: "load" },
          h("span", { class: barCls }, h("span", { "data-width": Math.round(ratio * 100) })),
          m.capacity > 0 ? m.inflight + " / " + m.capacity : String(m.inflight))),
        h("td", {}, h("span", { class: "badge " + role.cls }, role.text),
          role.healthy === false ? h("span", { class: "badge bad" }, "unhealthy") : null),
        h("td", {}, m.zone || "–"),
        h("td", { class: "mono" }, m.http_addr || "–"));
    });
    fillBody("members", rows, 7, "no members");
    // Widths are set through the CSSOM: the page's policy allows no inline style attributes.
    for (const bar of document.querySelectorAll("[data-width]")) bar.style.width = bar.getAttribute("data-width") + "%";
    return members;
  }

  function renderCatalog(cat, members) {
    const rows = (cat.tools || []).map((t) => {
      const holders = t.holders || [];
      return h("tr", { "data-tool": t.name, "data-holders": holders.join(",") },
        h("td", { class: "mono" }, t.name),
        h("td", {}, t.provider),
        h("td", {}, t.replicas > 0 ? "replicas: " + t.replicas : "everywhere"),
        h("td", {}, holders.length === 0 ? h("span", { class: "badge bad" }, "no holder") :
          holders.map((id) => {
            const m = members.get(id);
            const alive = m && m.state === "alive";
            return h("span", { class: "chip", "data-holder": id, title: alive ? "" : "not alive in gossip" }, alive ? id : id + " ⚠");
          })));
    });
    fillBody("tools", rows, 4, "no tools in the catalog");
  }

  function renderEvents(ev) {
    if (!ev) {
      fillBody("events", [], 3, "this node does not report events");
      return;
    }
    $("events-node").textContent = "as " + ev.node + " saw them";
    const rows = (ev.events || []).map((e) => h("tr", { "data-kind": e.kind },
      h("td", { class: "mono", title: e.time }, when(e.time)),
      h("td", {}, h("span", { class: "badge " + (e.kind === "leader" ? "leader" : "") }, e.kind)),
      h("td", {}, e.text)));
    fillBody("events", rows, 3, "nothing yet");
  }

  function banner(msg) {
    const b = $("banner");
    b.hidden = !msg;
    b.textContent = msg || "";
  }

  function askToken(msg) {
    stopped = true;
    banner(msg);
    const form = $("token-form");
    form.hidden = false;
    $("token-input").focus();
  }

  async function poll() {
    timer = null;
    try {
      const [st, cat, ev] = await Promise.all([
        getJSON("../v1/status"),
        getJSON("../v1/catalog?consistency=stale"),
        getJSON("../v1/events", true),
      ]);
      const members = renderStatus(st);
      renderCatalog(cat, members);
      renderEvents(ev);
      banner("");
      $("updated").textContent = "updated " + new Date().toLocaleTimeString();
      document.body.setAttribute("data-loaded", "true");
    } catch (err) {
      if (err instanceof AuthError) {
        askToken(err.message);
        return;
      }
      banner("cannot read this node: " + err.message);
    }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    takeTokenFromFragment();
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const tok = $("token-input").value.trim();
      if (!tok) return;
      sessionStorage.setItem(TOKEN_KEY, tok);
      $("token-input").value = "";
      $("token-form").hidden = true;
      banner("");
      stopped = false;
      if (timer) clearTimeout(timer);
      poll();
    });
    poll();
  });
})();
