// shadowrl dashboard: deployments, verdicts, rehearsal history and timelines, read from the
// service's JSON API with a read bearer token. No build step and no dependency: strings from
// the API only ever reach the page through textContent or attribute values, never as HTML.
"use strict";

(() => {
  const API = new URL("../api/v1/", location.href); // /dashboard/ -> /api/v1/
  const POLL_MS = 5000;
  const TOKEN_KEY = "shadowrl.token";
  const SVG = "http://www.w3.org/2000/svg";

  const state = {
    selected: null, // the deployment shown in detail
    timeline: null, // {job, run} of the open timeline
    keys: {}, // what each region was last drawn from, to leave unchanged regions alone
    timer: null,
    busy: false,
    pending: false,
  };

  const $ = (id) => document.getElementById(id);

  class AuthError extends Error {}

  // ---------------------------------------------------------------- token

  function tokenFromFragment() {
    // #token=... (other fragment parameters are kept); removed from the address bar at once
    const parts = location.hash.replace(/^#/, "").split("&").filter(Boolean);
    const keep = [];
    let token = null;
    for (const part of parts) {
      if (part.startsWith("token=")) token = decodeURIComponent(part.slice(6));
      else keep.push(part);
    }
    if (token === null) return;
    history.replaceState(null, "", location.pathname + location.search +
                         (keep.length ? "#" + keep.join("&") : ""));
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
  }

  const token = () => sessionStorage.getItem(TOKEN_KEY);

  // ---------------------------------------------------------------- API

  async function detailOf(res) {
    try {
      const body = await res.json();
      if (typeof body.detail === "string") return body.detail;
      return JSON.stringify(body.detail ?? body);
    } catch {
      return res.statusText;
    }
  }

  async function api(path) {
    const t = token();
    if (!t) throw new AuthError("A token with the read scope is needed to see the deployments.");
    let res;
    try {
      res = await fetch(new URL(path, API), {
        headers: { Authorization: "Bearer " + t, Accept: "application/json" },
        cache: "no-store",
      });
    } catch (e) {
      throw new Error("Cannot reach the service: " + e.message);
    }
    if (res.status === 401) {
      throw new AuthError("The token was refused (401: " + await detailOf(res) + "). Enter a valid token.");
    }
    if (res.status === 403) {
      throw new AuthError("The token lacks the read scope (403: " + await detailOf(res) + ").");
    }
    if (!res.ok) {
      const err = new Error(`GET ${path}: HTTP ${res.status}: ${await detailOf(res)}`);
      err.status = res.status;
      throw err;
    }
    return res.json();
  }

  // ---------------------------------------------------------------- formatting

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v !== null && v !== undefined) node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : String(c ?? ""));
    return node;
  }

  function duration(s) {
    s = Math.abs(s);
    if (s < 60) return `${Math.round(s)}s`;
    if (s < 3600) return `${Math.round(s / 60)}m`;
    if (s < 86400) return `${(s / 3600).toFixed(1)}h`;
    return `${(s / 86400).toFixed(1)}d`;
  }

  const secondsUntil = (iso) => (Date.parse(iso) - Date.now()) / 1000;
  const num = (x, digits = 1) => (Number.isFinite(x) ? x.toFixed(digits) : "–");
  const pct = (x, digits = 1) => (Number.isFinite(x) ? (100 * x).toFixed(digits) + "%" : "–");
  const clock = (d) => d.toLocaleTimeString([], { hour12: false });

  function changed(region, data) {
    const key = JSON.stringify(data);
    if (state.keys[region] === key) return false;
    state.keys[region] = key;
    return true;
  }

  // ---------------------------------------------------------------- views

  function showAuth(message) {
    $("main").hidden = true;
    $("auth").hidden = false;
    $("signout").hidden = true;
    const err = $("auth-error");
    err.textContent = message;
    err.hidden = !message;
    $("status").textContent = "not signed in";
    $("token-input").focus();
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = !message;
  }

  function verdictBadge(v) {
    if (!v) {
      return el("span", { class: "badge none", "data-testid": "verdict", "data-status": "none" },
                "no rehearsal yet");
    }
    return el("span", {
      class: "badge " + (v.healthy ? "healthy" : "unhealthy"),
      "data-testid": "verdict",
      "data-healthy": String(v.healthy),
      "data-status": v.status,
      title: `job #${v.job}, ${v.runs} runs, ${v.recovered} recovered`,
    }, v.status);
  }

  function reasonsList(v) {
    const ul = el("ul", { class: "reasons", "data-testid": "verdict-reasons" });
    for (const r of (v && v.reasons) || []) ul.append(el("li", {}, r));
    return ul;
  }

  function renderDeployments(deps) {
    const body = $("deployments").querySelector("tbody");
    body.replaceChildren();
    $("no-deployments").hidden = deps.length > 0;
    for (const d of deps) {
      const v = d.verdict;
      const row = el("tr", {
        "data-testid": "deployment-row",
        "data-name": d.name,
        class: d.name === state.selected ? "selected" : null,
      });
      const pick = el("button", { type: "button", class: "link", "data-testid": "select-deployment" }, d.name);
      pick.addEventListener("click", () => select(d.name));
      row.append(el("td", {}, pick, el("div", { class: "muted" }, d.scenario || "")));
      row.append(el("td", { "data-testid": "backend" }, d.backend));
      row.append(el("td", {}, verdictBadge(v), reasonsList(v)));
      row.append(el("td", { "data-testid": "verdict-age", title: v ? v.rehearsed_at : null },
                    v ? `${duration(v.age_s)} ago` : "–"));
      const drift = d.drift ?? 0;
      row.append(el("td", {
        "data-testid": "drift", "data-drift": String(drift),
        class: drift ? "warn" : null,
        title: d.synced_at ? `last sync ${d.synced_at}` : "never synced",
      }, d.synced_at ? (drift ? `${drift} changes` : "in sync") : "never synced"));
      const p = d.procedure || {};
      const proc = el("td", { "data-testid": "procedure", "data-source": p.source || "" }, p.source || "–");
      if (p.job !== null && p.job !== undefined) proc.append(` (job #${p.job})`);
      if (p.published_at) proc.title = `published ${p.published_at}`;
      row.append(proc);
      const next = d.schedules && d.schedules.rehearse && d.schedules.rehearse.next_at;
      let when = "not scheduled";
      if (next) {
        const s = secondsUntil(next);
        when = s > 0 ? `in ${duration(s)}` : "due";
      }
      row.append(el("td", { "data-testid": "next-rehearsal", title: next || null }, when));
      body.append(row);
    }
  }

  function renderVerdictDetail(v) {
    const box = $("verdict-detail");
    box.replaceChildren();
    if (!v) {
      box.append(el("p", { class: "empty" }, "No rehearsal yet: no verdict."));
      return;
    }
    const facts = [
      ["verdict", verdictBadge(v)],
      ["rehearsed", `${v.rehearsed_at} (job #${v.job}, ${v.backend}, at ${v.at})`],
      ["recovered", `${v.recovered} of ${v.runs} runs (${pct(v.recovered_share, 0)})`],
      ["downtime", `mean ${num(v.downtime_s.mean)}s, p95 ${num(v.downtime_s.p95)}s, max ${num(v.downtime_s.max)}s`],
      ["budget burn", `mean ${pct(v.budget_burn.mean)}, p95 ${pct(v.budget_burn.p95)}, max ${pct(v.budget_burn.max)}`],
      ["alerts", `${v.alerts.critical} critical, ${v.alerts.warning} warning`],
    ];
    if (v.forecast) facts.push(["forecast peak", `${v.forecast.peak_at} (load ×${num(v.forecast.load, 2)})`]);
    const dl = el("dl", { class: "facts" });
    for (const [k, val] of facts) dl.append(el("dt", {}, k), el("dd", {}, val));
    box.append(dl, reasonsList(v));
  }

  function renderTrends(verdicts) {
    const old = [...verdicts].reverse(); // oldest first
    $("no-history").hidden = old.length > 0;
    const xs = old.map((_, i) => i);
    const tips = old.map((v) => `job #${v.job} ${v.rehearsed_at}`);
    const draw = (testid, name, values, fmt) => {
      const box = document.querySelector(`[data-testid="${testid}"] .chart`);
      box.replaceChildren();
      if (!old.length) return;
      box.append(lineChart({
        xs, series: [{ name, values }], tips, markers: true, yFmt: fmt,
        xFmt: (i) => `#${old[i] ? old[i].job : ""}`, width: 420, height: 150,
      }));
    };
    draw("trend-downtime", "downtime_mean", old.map((v) => v.downtime_s.mean), (y) => num(y, 0));
    draw("trend-burn", "budget_burn_mean", old.map((v) => 100 * v.budget_burn.mean), (y) => num(y, 1));
  }

  function renderJobs(jobs) {
    const body = $("jobs").querySelector("tbody");
    body.replaceChildren();
    $("no-jobs").hidden = jobs.length > 0;
    for (const j of jobs) {
      const row = el("tr", { "data-testid": "job-row", "data-id": String(j.id), "data-status": j.status });
      const pr = j.progress || { done: 0, total: 0 };
      const bar = el("progress", { max: String(pr.total || 1), value: String(pr.done || 0) });
      const reason = el("td", { class: "reason" }, j.reason || "");
      if (j.error) reason.append(el("div", { class: "error-text", "data-testid": "job-error" }, j.error));
      const action = el("td");
      if (j.kind === "rehearse" && j.status === "succeeded") {
        const b = el("button", { type: "button", "data-testid": "open-timeline", "data-job": String(j.id) },
                     "timeline");
        b.addEventListener("click", () => openTimeline(j.id, null));
        action.append(b);
      }
      row.append(
        el("td", {}, `#${j.id}`),
        el("td", {}, j.kind),
        el("td", {}, el("span", { class: "job-status " + j.status, "data-testid": "job-status" }, j.status)),
        el("td", { "data-testid": "job-progress" }, bar, ` ${pr.done}/${pr.total}`),
        reason,
        el("td", { title: j.created_at }, j.created_at ? `${duration((Date.now() - Date.parse(j.created_at)) / 1000)} ago` : ""),
        action,
      );
      body.append(row);
    }
  }

  // ---------------------------------------------------------------- timeline

  function stepBands(series) {
    // contiguous samples of the same (non-null) step -> [{step, t0, t1}]
    const bands = [];
    const t = series.t || [];
    const steps = series.step || [];
    for (let i = 0; i < t.length; i++) {
      const s = steps[i];
      if (!s) continue;
      const last = bands[bands.length - 1];
      if (last && last.step === s && last.end === i - 1) {
        last.end = i;
        last.t1 = t[i + 1] ?? t[i];
      } else {
        bands.push({ step: s, start: i, end: i, t0: t[i], t1: t[i + 1] ?? t[i] });
      }
    }
    return bands;
  }

  async function openTimeline(job, run) {
    state.timeline = { job, run };
    const section = $("timeline");
    section.hidden = false;
    $("timeline-error").hidden = true;
    try {
      const tl = await api(`jobs/${job}/timeline` + (run === null ? "" : `?run=${run}`));
      if (!state.timeline || state.timeline.job !== job) return; // another one was opened meanwhile
      renderTimeline(tl);
    } catch (e) {
      if (e instanceof AuthError) return showAuth(e.message);
      $("timeline-error").textContent = e.message;
      $("timeline-error").hidden = false;
    }
    section.scrollIntoView({ block: "start" });
  }

  function renderTimeline(tl) {
    state.timeline = { job: tl.job, run: tl.run };
    const section = $("timeline");
    section.dataset.job = String(tl.job);
    section.dataset.run = String(tl.run);
    $("timeline-title").textContent = `job #${tl.job}, run ${tl.run} (${tl.incident})`;
    const picker = $("run-picker");
    picker.replaceChildren();
    for (const r of tl.runs || []) {
      const opt = el("option", { value: String(r.run) },
                     `run ${r.run}: ${r.incident} (failed ${num(r.failed, 0)})`);
      opt.selected = r.run === tl.run;
      picker.append(opt);
    }
    const s = tl.series || {};
    const bands = stepBands(s);
    const charts = [
      ["error_rate", (s.error_rate || []).map((x) => (x === null ? null : 100 * x)), (y) => num(y, 1)],
      ["latency_p99_ms", s.latency_p99_ms || [], (y) => num(y, 0)],
    ];
    for (const [name, values, yFmt] of charts) {
      const box = document.querySelector(`[data-testid="chart-${name}"] .chart`);
      box.replaceChildren(lineChart({
        xs: s.t || [], series: [{ name, values }], bands, vline: 0, yFmt,
        xFmt: (x) => `${Math.round(x)}s`, width: 820, height: 210,
      }));
    }
    const list = $("timeline-steps");
    list.replaceChildren();
    for (const b of bands) {
      list.append(el("li", { "data-testid": "timeline-step" },
                     `${b.step}: ${num(b.t0, 0)}s to ${num(b.t1, 0)}s`));
    }
  }

  // ---------------------------------------------------------------- SVG charts

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function niceTicks(lo, hi, count) {
    const span = hi - lo || 1;
    const raw = span / count;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const ticks = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) ticks.push(v);
    return ticks;
  }

  // One line per series, drawn into a fresh <svg>: one <path> per series, "M x y" to start a
  // stretch and "L x y" for each further point (a null value breaks the line). Step bands are
  // shaded rectangles under the lines, labelled where wide enough.
  function lineChart({ xs, series, bands = [], vline = null, tips = null, markers = false,
                       yFmt = String, xFmt = String, width = 600, height = 180 }) {
    const m = { l: 48, r: 12, t: 16, b: 24 };
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img" });
    const finite = series.flatMap((s) => s.values.filter(Number.isFinite));
    let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    if (!xs.length) [x0, x1] = [0, 1];
    if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
    const yMax = finite.length ? Math.max(...finite) : 1;
    const y0 = Math.min(0, ...finite);
    const y1 = yMax > y0 ? yMax * 1.08 : y0 + 1;
    const X = (x) => m.l + ((x - x0) / (x1 - x0)) * (width - m.l - m.r);
    const Y = (y) => height - m.b - ((y - y0) / (y1 - y0)) * (height - m.t - m.b);

    bands.forEach((b, i) => {
      const g = svg("g", { class: "band", "data-step": b.step });
      const bx = X(b.t0);
      const bw = Math.max(1, X(b.t1) - bx);
      g.append(svg("rect", { x: bx, y: m.t, width: bw, height: height - m.t - m.b,
                             class: i % 2 ? "band-b" : "band-a" }));
      g.append(svg("title", {}, `${b.step} (${num(b.t0, 0)}s to ${num(b.t1, 0)}s)`));
      // numbered like the step list under the chart; named too where there is room
      const name = b.step.length > 18 ? b.step.slice(0, 17) + "…" : b.step;
      const label = bw > 7 * (name.length + 4) ? `${i + 1}. ${name}` : bw > 12 ? String(i + 1) : "";
      if (label) g.append(svg("text", { x: bx + 2, y: m.t + 11, class: "band-label" }, label));
      root.append(g);
    });

    // axes and grid
    for (const v of niceTicks(y0, y1, 4)) {
      root.append(svg("line", { x1: m.l, x2: width - m.r, y1: Y(v), y2: Y(v), class: "grid" }));
      root.append(svg("text", { x: m.l - 4, y: Y(v) + 4, class: "tick", "text-anchor": "end" }, yFmt(v)));
    }
    const every = Math.ceil(xs.length / 10);
    const xTicks = tips ? xs.filter((_, i) => i % every === 0) : niceTicks(x0, x1, 8);
    for (const v of xTicks) {
      root.append(svg("text", { x: X(v), y: height - 6, class: "tick", "text-anchor": "middle" }, xFmt(v)));
    }
    root.append(svg("line", { x1: m.l, x2: m.l, y1: m.t, y2: height - m.b, class: "axis" }));
    root.append(svg("line", { x1: m.l, x2: width - m.r, y1: height - m.b, y2: height - m.b, class: "axis" }));
    if (vline !== null && vline >= x0 && vline <= x1) {
      root.append(svg("line", { x1: X(vline), x2: X(vline), y1: m.t, y2: height - m.b, class: "breach" }));
    }

    series.forEach((s, k) => {
      let d = "";
      let open = false;
      let points = 0;
      s.values.forEach((v, i) => {
        if (!Number.isFinite(v) || !Number.isFinite(xs[i])) {
          open = false;
          return;
        }
        d += `${open ? "L" : "M"}${X(xs[i]).toFixed(1)} ${Y(v).toFixed(1)} `;
        open = true;
        points += 1;
        if (markers) {
          const c = svg("circle", { cx: X(xs[i]), cy: Y(v), r: 3, class: `marker s${k}` });
          c.append(svg("title", {}, `${tips ? tips[i] + ": " : ""}${yFmt(v)}`));
          root.append(c);
        }
      });
      root.append(svg("path", { d: d.trim(), class: `line s${k}`, "data-series": s.name,
                                "data-points": String(points) }));
    });
    return root;
  }

  // ---------------------------------------------------------------- polling

  function select(name) {
    state.selected = name;
    state.keys = {};
    for (const row of document.querySelectorAll('[data-testid="deployment-row"]')) {
      row.classList.toggle("selected", row.dataset.name === name);
    }
    refresh();
  }

  async function refresh() {
    if (state.busy) {
      state.pending = true; // asked for while one is under way: run again right after it
      return;
    }
    clearTimeout(state.timer);
    state.busy = true;
    let again = true;
    try {
      const deps = await api("deployments");
      if (!deps.some((d) => d.name === state.selected)) state.selected = deps.length ? deps[0].name : null;
      renderDeployments(deps);
      const dep = deps.find((d) => d.name === state.selected);
      $("detail").hidden = !dep;
      if (dep) {
        const q = encodeURIComponent(dep.name);
        const [verdicts, jobs] = await Promise.all([
          api(`deployments/${q}/verdicts?limit=50`),
          api(`jobs?deployment=${q}&limit=15`),
        ]);
        $("detail-name").textContent = dep.name;
        const stable = (v) => v && { ...v, age_s: undefined };
        if (changed("verdict", stable(dep.verdict))) renderVerdictDetail(dep.verdict);
        if (changed("verdicts", verdicts.map(stable))) renderTrends(verdicts);
        renderJobs(jobs);
      }
      $("auth").hidden = true;
      $("main").hidden = false;
      $("signout").hidden = false;
      showError("");
      $("status").textContent = `updated ${clock(new Date())}, every ${POLL_MS / 1000}s`;
    } catch (e) {
      if (e instanceof AuthError) {
        again = false; // wait for a new token
        showAuth(e.message);
      } else {
        showError(e.message);
        $("status").textContent = `update failed ${clock(new Date())}, retrying`;
      }
    } finally {
      state.busy = false;
      if (state.pending) {
        state.pending = false;
        refresh();
      } else if (again) {
        state.timer = setTimeout(refresh, POLL_MS);
      }
    }
  }

  $("auth-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token-input").value.trim();
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    $("token-input").value = "";
    state.keys = {};
    refresh();
  });
  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    clearTimeout(state.timer);
    showAuth("");
  });
  $("run-picker").addEventListener("change", (ev) => {
    if (state.timeline) openTimeline(state.timeline.job, Number(ev.target.value));
  });
  $("timeline-close").addEventListener("click", () => {
    state.timeline = null;
    $("timeline").hidden = true;
  });
  window.addEventListener("hashchange", () => {
    if (/(^#|&)token=/.test(location.hash)) {
      tokenFromFragment();
      state.keys = {};
      refresh();
    }
  });

  tokenFromFragment();
  refresh();
})();
