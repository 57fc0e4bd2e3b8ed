// Steelyard dashboard: polls the admin API once a second and follows /api/v1/events.
// Written for this project; no third-party code. The chart is plain SVG built here.
"use strict";

(function () {
  const TOKEN_KEY = "steelyard-admin-token";
  const POLL_MS = 1000;
  const STATUS_EVERY = 5; // polls
  const MAX_EVENTS = 100;
  const PALETTE = [
    "#2f6db5", "#d9822b", "#2f9e6e", "#c2455b", "#7b5cc4",
    "#8c6d31", "#1aa3b8", "#b84fa0", "#5d7a1f", "#6b7280",
  ];
  const SVG_NS = "http://www.w3.org/2000/svg";

  const state = {
    waitingForToken: false,
    polls: 0,
    backends: [],
    stats: null,
    events: [],
    views: new Map(), // backend name -> {section, tbody, rows: Map, svg, legend, rates}
    streamAbort: null,
  };

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- API

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const t = token();
    if (t) h["Authorization"] = "Bearer " + t;
    return h;
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const init = { method: method, headers: headers(), cache: "no-store" };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    const res = await fetch(path, init);
    let data = null;
    try {
      data = await res.json();
    } catch (e) {
      data = null;
    }
    if (res.status === 401) {
      askForToken();
      throw new ApiError(401, "token required");
    }
    if (!res.ok) {
      throw new ApiError(res.status, (data && data.error) || res.statusText);
    }
    return data;
  }

  // ---------------------------------------------------------------- token dialog

  function askForToken() {
    if (state.waitingForToken) return;
    state.waitingForToken = true;
    setConn("err", "token required");
    const dialog = $("token-dialog");
    $("token-input").value = "";
    if (!dialog.open) dialog.showModal();
    $("token-input").focus();
  }

  function setupToken() {
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const value = $("token-input").value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      $("token-dialog").close();
      state.waitingForToken = false;
      restartStream();
      poll();
    });
    $("token-cancel").addEventListener("click", () => {
      // polling stays paused (it would only ask again); the Token button reopens the dialog
      $("token-dialog").close();
    });
    $("token-button").addEventListener("click", () => {
      state.waitingForToken = false;
      askForToken();
    });
  }

  // ---------------------------------------------------------------- formatting

  function fmtRate(v) {
    if (v === null || v === undefined) return "–";
    if (v >= 100) return v.toFixed(0);
    if (v >= 10) return v.toFixed(1);
    return v.toFixed(2);
  }

  function fmtMs(v) {
    if (v === null || v === undefined) return "–";
    if (v >= 1000) return (v / 1000).toFixed(2) + " s";
    if (v >= 100) return v.toFixed(0) + " ms";
    if (v >= 10) return v.toFixed(1) + " ms";
    return v.toFixed(2) + " ms";
  }

  function fmtPct(v) {
    if (!v) return "0%";
    const p = v * 100;
    return (p >= 10 ? p.toFixed(0) : p.toFixed(1)) + "%";
  }

  function fmtUptime(s) {
    s = Math.floor(s);
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = s % 60;
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + sec + "s";
    return sec + "s";
  }

  function fmtTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    if (isNaN(d.getTime())) return String(iso);
    return d.toLocaleTimeString([], { hour12: false });
  }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (k === "text") node.textContent = v;
        else if (k === "class") node.className = v;
        else if (k.startsWith("data-")) node.setAttribute(k, v);
        else node[k] = v;
      }
    }
    for (const c of children || []) node.appendChild(c);
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  function setConn(kind, text) {
    const c = $("conn");
    c.className = "conn conn-" + kind;
    c.textContent = text;
  }

  function notice(text, isError) {
    const n = $("notice");
    if (!text) {
      n.hidden = true;
      return;
    }
    n.textContent = text;
    n.className = "notice" + (isError ? " error" : "");
    n.hidden = false;
    clearTimeout(notice.timer);
    notice.timer = setTimeout(() => (n.hidden = true), 6000);
  }

  // ---------------------------------------------------------------- actions

  function serverPath(backend, server) {
    return (
      "/api/v1/backends/" + encodeURIComponent(backend) +
      "/servers/" + encodeURIComponent(server)
    );
  }

  async function act(backend, server, action, button) {
    if (button) button.disabled = true;
    try {
      if (action === "weight") {
        const input = button.form.querySelector("input");
        const weight = Number(input.value);
        await api("PUT", serverPath(backend, server) + "/weight", { weight: weight });
        input.dataset.dirty = "";
        notice(backend + "/" + server + ": weight set to " + weight);
      } else {
        const result = await api("POST", serverPath(backend, server) + "/" + action);
        notice(backend + "/" + server + ": " + action + " → " + result.state);
      }
    } catch (e) {
      if (e.status !== 401) notice(backend + "/" + server + ": " + action + " failed: " + e.message, true);
    } finally {
      if (button) button.disabled = false;
      poll();
    }
  }

  // ---------------------------------------------------------------- rendering

  function backendView(b) {
    let view = state.views.get(b.name);
    if (view) return view;
    const rates = el("span", { class: "backend-rates" });
    const panic = el("span", { class: "panic", text: "panic", hidden: true });
    const head = el("div", { class: "backend-head" }, [
      el("h2", { text: b.name }),
      el("span", { class: "algo", text: b.algorithm }),
      panic,
      rates,
    ]);
    const thead = el("thead", {}, [
      el("tr", {}, [
        ["Server", ""], ["Address", ""], ["State", ""], ["Weight", ""], ["In-flight", "num"],
        ["Req/s", "num"], ["Errors", "num"], ["p50", "num"], ["p99", "num"],
        ["Last check", ""], ["Actions", ""],
      ].map(([t, c]) => el("th", { text: t, class: c }))),
    ]);
    const tbody = el("tbody");
    const table = el("table", { class: "servers" }, [thead, tbody]);
    const chart = svg("svg", {
      class: "chart",
      viewBox: "0 0 600 170",
      role: "img",
      "aria-label": "requests per second per server, last 60 seconds",
      "data-max": "0",
    });
    const legend = el("div", { class: "legend" });
    const chartBox = el("div", { class: "chart-box" }, [
      el("p", { class: "chart-title", text: "Requests/s per server · last 60 s" }),
      chart,
      legend,
    ]);
    const section = el("section", { class: "backend", "data-backend": b.name }, [
      head,
      el("div", { class: "backend-body" }, [el("div", { class: "table-box" }, [table]), chartBox]),
    ]);
    $("backends").appendChild(section);
    view = {
      section, tbody, rows: new Map(), colours: new Map(), chart, legend, rates, panic,
      algo: head.children[1],
    };
    state.views.set(b.name, view);
    return view;
  }

  function serverRow(view, backend, s, colour) {
    let row = view.rows.get(s.name);
    if (row) return row;
    const tr = el("tr", { "data-server": s.name });
    const cells = {};
    const add = (key, cls) => {
      const td = el("td", { class: cls || "" });
      cells[key] = td;
      tr.appendChild(td);
      return td;
    };
    const nameCell = add("name", "name");
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = colour;
    nameCell.appendChild(swatch);
    nameCell.appendChild(document.createTextNode(s.name));
    add("address", "addr");
    const stateCell = add("state");
    const pill = el("span", { class: "state" });
    stateCell.appendChild(pill);
    const weightCell = add("weight");
    const input = el("input", { type: "number", min: 0, max: 1000, step: 1, "data-role": "weight" });
    input.addEventListener("input", () => (input.dataset.dirty = "1"));
    const setBtn = el("button", { type: "submit", class: "small", text: "Set", "data-action": "weight" });
    const form = el("form", { class: "weight-form" }, [input, setBtn]);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      act(backend, s.name, "weight", setBtn);
    });
    weightCell.appendChild(form);
    add("active", "num");
    add("rps", "num");
    add("errors", "num");
    add("p50", "num");
    add("p99", "num");
    add("check", "check");
    const actions = add("actions");
    const box = el("span", { class: "actions" });
    for (const [action, cls] of [["drain", "warn"], ["enable", ""], ["disable", "danger"]]) {
      const btn = el("button", {
        type: "button",
        class: "small " + cls,
        text: action[0].toUpperCase() + action.slice(1),
        "data-action": action,
      });
      btn.addEventListener("click", () => act(backend, s.name, action, btn));
      box.appendChild(btn);
    }
    actions.appendChild(box);
    row = { tr, cells, pill, input };
    view.rows.set(s.name, row);
    view.tbody.appendChild(tr);
    return row;
  }

  function statsFor(backendName) {
    const stats = state.stats;
    if (!stats) return null;
    for (const b of stats.backends) if (b.name === backendName) return b;
    return null;
  }

  function render() {
    const seen = new Set();
    for (const b of state.backends) {
      seen.add(b.name);
      const view = backendView(b);
      view.algo.textContent = b.algorithm;
      view.panic.hidden = !b.panic;
      const bstats = statsFor(b.name);
      const sstats = new Map();
      if (bstats) for (const s of bstats.servers) sstats.set(s.name, s);
      if (bstats) {
        view.rates.textContent =
          fmtRate(bstats.rps) + " req/s · " + fmtPct(bstats.error_rate) + " errors · p50 " +
          fmtMs(bstats.p50_ms) + " · p99 " + fmtMs(bstats.p99_ms) + " (last minute)";
      }
      const names = new Set();
      b.servers.forEach((s) => {
        names.add(s.name);
        const colour = colourOf(view, s.name);
        const row = serverRow(view, b.name, s, colour);
        row.colour = colour;
        row.cells.address.textContent = s.address;
        row.pill.textContent = s.state;
        row.pill.className = "state st-" + s.state;
        row.tr.dataset.state = s.state;
        if (document.activeElement !== row.input && !row.input.dataset.dirty) {
          row.input.value = String(s.weight);
        }
        row.cells.active.textContent = String(s.active);
        const st = sstats.get(s.name);
        row.cells.rps.textContent = st ? fmtRate(st.rps) : "–";
        row.cells.errors.textContent = st ? fmtPct(st.error_rate) : "–";
        row.cells.errors.className = "num" + (st && st.error_rate >= 0.05 ? " err-high" : "");
        row.cells.p50.textContent = st ? fmtMs(st.p50_ms) : "–";
        row.cells.p99.textContent = st ? fmtMs(st.p99_ms) : "–";
        const check = s.last_check;
        row.cells.check.textContent = check ? check.result + (check.reason ? " · " + check.reason : "") : "–";
        row.cells.check.title = check ? fmtTime(check.time) + " " + (check.reason || "") : "";
        row.pill.title = check ? "last check: " + check.result + " (" + (check.reason || "") + ")" : "";
      });
      for (const [name, row] of view.rows) {
        if (!names.has(name)) {
          row.tr.remove();
          view.rows.delete(name);
        }
      }
      drawChart(view, b, sstats);
    }
    for (const [name, view] of state.views) {
      if (!seen.has(name)) {
        view.section.remove();
        state.views.delete(name);
      }
    }
  }

  // a server keeps its colour for the life of the page, even when others come and go
  function colourOf(view, name) {
    let colour = view.colours.get(name);
    if (!colour) {
      colour = PALETTE[view.colours.size % PALETTE.length];
      view.colours.set(name, colour);
    }
    return colour;
  }

  function niceMax(v) {
    if (v <= 1) return 1;
    const exp = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * exp >= v) return m * exp;
    return 10 * exp;
  }

  function drawChart(view, b, sstats) {
    // the viewBox follows the element's size, so text and lines are never stretched
    const W = Math.max(200, Math.round(view.chart.clientWidth || 600));
    const H = Math.max(100, Math.round(view.chart.clientHeight || 170));
    const L = 34, R = 10, T = 10, B = 20;
    view.chart.setAttribute("viewBox", "0 0 " + W + " " + H);
    const series = b.servers.map((s) => ({
      name: s.name,
      colour: colourOf(view, s.name),
      values: (sstats.get(s.name) || {}).series || [],
    }));
    let max = 0;
    for (const s of series) for (const v of s.values) if (v > max) max = v;
    const top = niceMax(max);
    const chart = view.chart;
    while (chart.firstChild) chart.removeChild(chart.firstChild);
    const plotW = W - L - R, plotH = H - T - B;
    for (const frac of [0, 0.5, 1]) {
      const y = T + plotH * (1 - frac);
      chart.appendChild(svg("line", { class: "grid", x1: L, x2: W - R, y1: y, y2: y }));
      const label = svg("text", { class: "axis-label", x: L - 4, y: y + 3, "text-anchor": "end" });
      const value = top * frac;
      label.textContent = value >= 10 || value === 0 ? value.toFixed(0) : value.toFixed(1);
      chart.appendChild(label);
    }
    const ticks = [[L, "-60s", "start"], [L + plotW / 2, "-30s", "middle"], [W - R, "now", "end"]];
    for (const [x, text, anchor] of ticks) {
      const label = svg("text", { class: "axis-label", x: x, y: H - 5, "text-anchor": anchor });
      label.textContent = text;
      chart.appendChild(label);
    }
    let total = 0;
    for (const s of series) {
      const n = s.values.length;
      if (!n) continue;
      const pts = s.values.map((v, i) => {
        const x = L + (n === 1 ? plotW : (plotW * i) / (n - 1));
        const y = T + plotH * (1 - v / top);
        return x.toFixed(1) + "," + y.toFixed(1);
      });
      total += s.values[n - 1];
      const line = svg("polyline", { points: pts.join(" "), stroke: s.colour, "data-server": s.name });
      chart.appendChild(line);
    }
    chart.setAttribute("data-max", String(max));
    chart.setAttribute("data-last-total", String(total));
    const legend = view.legend;
    while (legend.firstChild) legend.removeChild(legend.firstChild);
    for (const s of series) {
      const sw = el("span", { class: "swatch" });
      sw.style.background = s.colour;
      const last = s.values.length ? s.values[s.values.length - 1] : 0;
      legend.appendChild(el("span", {}, [sw, document.createTextNode(s.name + " " + last + "/s")]));
    }
  }

  function renderStatus(status) {
    $("meta-version").textContent = status.version;
    $("meta-uptime").textContent = fmtUptime(status.uptime_s);
    const hash = status.config_hash ? status.config_hash.slice(0, 10) : "–";
    $("meta-config").textContent = (status.config_file || "(inline)") + " · " + hash;
    $("meta-listeners").textContent =
      status.listeners.map((l) => l.name + " " + l.protocol + " " + (l.address || l.bind)).join(", ") ||
      "none";
  }

  function renderEvents() {
    const list = $("events");
    while (list.firstChild) list.removeChild(list.firstChild);
    $("events-empty").hidden = state.events.length > 0;
    for (const ev of state.events) {
      const who = ev.backend ? ev.backend + (ev.server ? "/" + ev.server : "") : "";
      list.appendChild(
        el("li", { "data-type": ev.type }, [
          el("span", { class: "ev-time", text: fmtTime(ev.time) }),
          el("span", { class: "ev-type t-" + ev.type, text: ev.type }),
          el("span", { class: "ev-who", text: who }),
          el("span", { class: "ev-state", text: ev.state || "" }),
          el("span", { class: "ev-reason", text: ev.reason || "" }),
        ])
      );
    }
  }

  function addEvent(ev) {
    state.events.unshift(ev);
    if (state.events.length > MAX_EVENTS) state.events.length = MAX_EVENTS;
    renderEvents();
  }

  // ---------------------------------------------------------------- polling and events

  let pollTimer = null;
  let polling = false;

  async function poll() {
    clearTimeout(pollTimer);
    if (polling) {
      pollTimer = setTimeout(poll, POLL_MS);
      return;
    }
    polling = true;
    try {
      if (!state.waitingForToken) {
        const wantStatus = state.polls % STATUS_EVERY === 0;
        const [backends, stats, status] = await Promise.all([
          api("GET", "/api/v1/backends"),
          api("GET", "/api/v1/stats"),
          wantStatus ? api("GET", "/api/v1/status") : Promise.resolve(null),
        ]);
        state.backends = backends.backends;
        state.stats = stats;
        if (status) renderStatus(status);
        state.polls += 1;
        render();
        setConn("ok", "live");
        document.body.dataset.ready = "1";
      }
    } catch (e) {
      if (e.status !== 401) setConn("err", "admin API unreachable");
    } finally {
      polling = false;
      pollTimer = setTimeout(poll, POLL_MS);
    }
  }

  function restartStream() {
    if (state.streamAbort) state.streamAbort.abort();
    streamEvents();
  }

  // Server-sent events read through fetch (EventSource cannot send an Authorization header).
  async function streamEvents() {
    const ctrl = new AbortController();
    state.streamAbort = ctrl;
    let res;
    try {
      res = await fetch("/api/v1/events?history=50", { headers: headers(), signal: ctrl.signal });
    } catch (e) {
      if (!ctrl.signal.aborted) setTimeout(streamEvents, 2000);
      return;
    }
    if (res.status === 401) {
      askForToken();
      return;
    }
    if (!res.ok || !res.body) {
      setTimeout(streamEvents, 5000);
      return;
    }
    state.events = [];
    renderEvents();
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          handleBlock(block);
        }
      }
    } catch (e) {
      // aborted or dropped: reconnect below
    }
    if (!ctrl.signal.aborted) setTimeout(streamEvents, 2000);
  }

  function handleBlock(block) {
    let data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("data:")) data += line.slice(5).trim();
    }
    if (!data) return;
    try {
      const ev = JSON.parse(data);
      addEvent(ev);
      if (ev.backend) poll();
    } catch (e) {
      // ignore a malformed block
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    setupToken();
    renderEvents();
    poll();
    streamEvents();
  });
})();
