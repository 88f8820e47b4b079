// ward dashboard. Every name from the mesh goes into the page as text
// (textContent, createTextNode), never as markup.
"use strict";

const POLL_MS = 2000;
const state = { page: null, timer: null, graph: null, graphKey: "", selected: null };

// --- helpers -------------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function time(secs) {
  if (!secs) return "—";
  return new Date(secs * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z";
}

function ago(secs) {
  if (!secs) return "—";
  const d = Math.round(secs - Date.now() / 1000);
  const a = Math.abs(d);
  const s = a < 90 ? `${a}s` : a < 5400 ? `${Math.round(a / 60)}m` : a < 172800 ? `${Math.round(a / 3600)}h` : `${Math.round(a / 86400)}d`;
  return d >= 0 ? `in ${s}` : `${s} ago`;
}

// spiffe://td/ns/N/sa/S as N/S.
function short(id) {
  if (!id) return "(no identity)";
  const m = /^spiffe:\/\/[^/]+\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(id);
  return m ? `${m[1]}/${m[2]}` : id;
}

class SignedOut extends Error {}

async function api(path, options) {
  const resp = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  if (resp.status === 401) throw new SignedOut();
  const body = resp.status === 204 ? null : await resp.json();
  if (!resp.ok) throw new Error((body && body.message) || `HTTP ${resp.status}`);
  return body;
}

function table(headers, rows, onclick) {
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((r) => {
      const tr = el("tr", { class: onclick ? "clickable" : null }, r.cells.map((c) => el("td", {}, c)));
      if (onclick) tr.addEventListener("click", () => onclick(r.key));
      if (r.key !== undefined && r.key === state.selected) tr.classList.add("selected");
      return tr;
    })));
}

function pager(data, go) {
  return el("div", { class: "pager" },
    el("button", { class: "secondary", type: "button", disabled: data.page <= 1, onclick: () => go(data.page - 1) }, "Previous"),
    el("span", { class: "muted" }, `page ${data.page} of ${data.pages} · ${data.total} in all`),
    el("button", { class: "secondary", type: "button", disabled: data.page >= data.pages, onclick: () => go(data.page + 1) }, "Next"));
}

function filterBox(placeholder, value, onchange) {
  let t = null;
  return el("input", {
    type: "search", placeholder, value: value || "", "aria-label": placeholder,
    oninput: (e) => { clearTimeout(t); t = setTimeout(() => onchange(e.target.value), 250); },
  });
}

function expiry(secs) {
  const left = secs - Date.now() / 1000;
  return el("span", { class: left < 3600 ? "soon" : null, title: time(secs) }, ago(secs));
}

// --- pages ---------------------------------------------------------------
// Each page has controls, made once, and a data area redrawn on every poll.

const pages = {
  overview: {
    title: "Overview",
    params: { page: 1, q: "" },
    controls(p, redraw) {
      return el("div", { class: "toolbar" },
        filterBox("Filter services", p.q, (v) => { p.q = v; p.page = 1; redraw(); }));
    },
    async draw(p, redraw) {
      const d = await api(`/ui/api/overview?page=${p.page}&q=${encodeURIComponent(p.q)}`);
      const c = d.counts;
      const svc = d.services;
      return [
        el("div", { class: "cards" },
          [["services", c.services], ["sidecars", c.sidecars], ["agents", c.agents], ["policies", c.policies]]
            .map(([k, v]) => el("div", { class: "card", "data-count": k }, el("div", { class: "n" }, v), el("div", { class: "muted" }, k)))),
        el("h2", {}, "Services"),
        table(["Service", "SPIFFE ID", "Protocol", "Connected sidecars and agents"], svc.items.map((s) => ({
          cells: [
            `${s.namespace}/${s.name}`,
            el("code", {}, s.spiffe_id),
            s.protocol,
            s.watchers.length === 0 ? el("span", { class: "muted" }, "none") :
              el("table", { class: "inner" }, el("tbody", {}, s.watchers.map((w) => el("tr", {},
                el("td", {}, el("span", { class: "tag" }, w.kind || "sidecar")),
                el("td", {}, w.version ? `v${w.version}` : ""),
                el("td", {}, w.advertise || w.remote),
                el("td", {}, "seen ", ago(w.last_seen)),
                el("td", {}, "cert expires ", w.cert_not_after ? expiry(w.cert_not_after) : "—"))))),
          ],
        }))),
        pager(svc, (n) => { p.page = n; redraw(); }),
        el("div", { class: "split" },
          el("div", {},
            el("h2", {}, "Certificate authority"),
            table(["", "Serial", "State", "Expires"], [
              { cells: ["root", el("code", {}, d.ca.root.serial || ""), "trust anchor", expiry(d.ca.root.not_after)] },
              ...(d.ca.signing || []).map((s) => ({ cells: ["signing CA", el("code", {}, s.serial), s.state, expiry(s.not_after)] })),
            ]),
            el("p", {}, "Next signing-CA rotation: ", d.ca.next_rotation ? expiry(d.ca.next_rotation) : "—", ` (trust domain ${d.trust_domain})`),
            el("h2", {}, "Signing keys"),
            table(["Purpose", "Key id", "State", "Next rotation"], d.signing_keys.map((k) => ({
              cells: [k.purpose === "oauth" ? "access tokens" : "JWT-SVIDs", el("code", {}, k.kid), k.state, k.next_rotation ? expiry(k.next_rotation) : "—"],
            })))),
          el("div", {},
            el("h2", {}, "Certificates near expiry"),
            el("p", { class: "muted" }, `Expiring within ${Math.round(d.near_expiry_window_secs / 60)} minutes.`),
            d.near_expiry.length === 0 ? el("p", { class: "muted" }, "None.") :
              table(["SPIFFE ID", "Serial", "Expires"], d.near_expiry.map((x) => ({
                cells: [el("code", {}, x.spiffe_id), el("code", {}, x.serial), expiry(x.not_after)],
              }))))),
      ];
    },
  },

  traffic: {
    title: "Traffic",
    params: {},
    controls() {
      return el("p", { class: "muted" }, "Who calls whom, as the sidecars report it every 10 seconds: requests per second, allowed and denied, and the policy behind each denial.");
    },
    async draw() {
      const d = await api("/ui/api/traffic");
      const graph = el("div", { id: "graph", role: "img", "aria-label": "traffic graph" });
      const rows = d.edges.map((e) => ({
        cells: [
          short(e.source), short(e.destination), e.rate.toFixed(1),
          el("span", { class: "allow" }, e.allowed),
          el("span", { class: e.denied ? "deny" : null }, e.denied),
          e.denied_by.length === 0 ? "" : e.denied_by.map((p) => el("span", { class: "tag deny" }, `${p.policy} (${p.requests})`)),
        ],
      }));
      return [graph,
        el("h2", {}, "Edges"),
        d.edges.length === 0 ? el("p", { class: "muted" }, "No traffic reported yet.") :
          table(["Source", "Destination", "req/s", "Allowed", "Denied", "Denied by"], rows),
        { afterDraw: () => drawGraph(graph, d) }];
    },
  },

  policies: {
    title: "Policies",
    params: { page: 1, q: "", open: null },
    controls(p, redraw) {
      const out = el("div", { id: "whatif-result", "aria-live": "polite" });
      const field = (name, label, attrs) => [el("label", { for: `wi-${name}` }, label), el("input", Object.assign({ id: `wi-${name}`, name }, attrs || {}))];
      const form = el("form", { id: "whatif", class: "whatif" },
        field("from", "From (caller)", { placeholder: "ns/default/sa/frontend, or empty for no identity" }),
        field("to", "To (service)", { placeholder: "default/payments", required: true }),
        field("method", "Method", { placeholder: "GET (empty: a TCP connection)" }),
        field("path", "Path", { placeholder: "/" }),
        field("port", "Port", { placeholder: "15006", inputmode: "numeric" }),
        el("span", {}), el("button", { type: "submit" }, "Check"));
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const f = new FormData(form);
        const body = { to: f.get("to") };
        for (const k of ["from", "method", "path"]) if (f.get(k)) body[k] = f.get(k);
        if (f.get("port")) body.port = Number(f.get("port"));
        out.replaceChildren();
        try {
          const r = await api("/ui/api/check", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
          out.append(el("p", {},
            el("strong", { class: r.decision }, r.decision.toUpperCase()), " — decided by ",
            el("code", { id: "whatif-policy" }, r.policy || "the default"),
            r.rule !== null && r.rule !== undefined ? ` (rule ${r.rule})` : "", `, ${r.reason}`),
            r.detail ? el("p", { class: "muted" }, r.detail) : "");
        } catch (e) {
          if (e instanceof SignedOut) return signedOut();
          out.append(el("p", { class: "error" }, e.message));
        }
      });
      return el("div", {},
        el("div", { class: "split" },
          el("div", {}, el("h2", {}, "What if…"), form, out),
          el("div", {}, el("h2", {}, "Policy"), el("div", { id: "policy-yaml" }, el("p", { class: "muted" }, "Choose a policy to see its YAML.")))),
        el("h2", {}, "Policies in force"),
        el("div", { class: "toolbar" }, filterBox("Filter policies", p.q, (v) => { p.q = v; p.page = 1; redraw(); })));
    },
    async draw(p, redraw) {
      const d = await api(`/ui/api/policies?page=${p.page}&q=${encodeURIComponent(p.q)}`);
      const open = async (key) => {
        p.open = key;
        state.selected = key;
        const [ns, name] = key.split("\u0000");
        const box = document.getElementById("policy-yaml");
        try {
          const r = await api(`/ui/api/policies/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`);
          box.replaceChildren(el("p", {}, el("strong", {}, `${r.namespace}/${r.name}`), ` · ${r.kind} · version ${r.version}`), el("pre", {}, r.yaml));
        } catch (e) {
          if (e instanceof SignedOut) return signedOut();
          box.replaceChildren(el("p", { class: "error" }, e.message));
        }
        redraw();
      };
      return [
        table(["Policy", "Kind", "Action", "Applies to", "Rules", "Updated"], d.items.map((x) => ({
          key: `${x.namespace}\u0000${x.name}`,
          cells: [`${x.namespace}/${x.name}`, x.kind, x.action || "", x.applies_to, x.rules, time(x.updated_at)],
        })), open),
        pager(d, (n) => { p.page = n; redraw(); }),
      ];
    },
  },

  audit: {
    title: "Audit log",
    params: { before: null, stack: [], q: "" },
    controls(p, redraw) {
      return el("div", { class: "toolbar" },
        filterBox("Filter by actor, action or target", p.q, (v) => { p.q = v; p.before = null; p.stack = []; redraw(); }));
    },
    async draw(p, redraw) {
      const d = await api(`/ui/api/audit?q=${encodeURIComponent(p.q)}${p.before ? `&before=${p.before}` : ""}`);
      return [
        table(["#", "When", "Actor", "Action", "Target"], d.items.map((r) => ({
          cells: [r.id, time(r.at), r.actor, el("code", {}, r.action), r.target],
        }))),
        el("div", { class: "pager" },
          el("button", { class: "secondary", type: "button", disabled: p.stack.length === 0, onclick: () => { p.before = p.stack.pop(); redraw(); } }, "Newer"),
          el("button", { class: "secondary", type: "button", disabled: !d.next_before, onclick: () => { p.stack.push(p.before); p.before = d.next_before; redraw(); } }, "Older")),
      ];
    },
  },

  clients: {
    title: "OAuth clients",
    params: { page: 1, q: "" },
    controls(p, redraw) {
      return el("div", { class: "toolbar" },
        el("span", { class: "muted" }, "Client secrets are stored only as keyed hashes and never shown."),
        filterBox("Filter clients", p.q, (v) => { p.q = v; p.page = 1; redraw(); }));
    },
    async draw(p, redraw) {
      const d = await api(`/ui/api/clients?page=${p.page}&q=${encodeURIComponent(p.q)}`);
      return [
        table(["Client id", "Service", "Authentication", "Scopes", "Audiences", "Created"], d.items.map((c) => ({
          cells: [el("code", {}, c.client_id), short(c.service_id), c.auth,
            (c.scopes || []).map((s) => el("span", { class: "tag" }, s)),
            (c.audiences || []).map((s) => el("span", { class: "tag" }, s)), time(c.created_at)],
        }))),
        pager(d, (n) => { p.page = n; redraw(); }),
      ];
    },
  },
};

// --- the traffic graph ---------------------------------------------------

function drawGraph(container, d) {
  const ids = new Set();
  for (const e of d.edges) { ids.add(e.source || ""); ids.add(e.destination); }
  for (const w of d.watchers) ids.add(w.spiffe_id);
  const nodes = [...ids].sort().map((id) => ({ data: { id: `n:${id}`, label: short(id) } }));
  const edges = d.edges.map((e) => ({
    data: {
      id: `e:${e.source}>${e.destination}`, source: `n:${e.source || ""}`, target: `n:${e.destination}`,
      label: `${e.rate.toFixed(1)}/s · ${e.allowed} ok · ${e.denied} denied`, denied: e.denied > 0 ? 1 : 0,
    },
  }));
  if (state.graph) state.graph.destroy();
  state.graph = cytoscape({
    container,
    elements: { nodes, edges },
    layout: { name: nodes.length > 12 ? "circle" : "breadthfirst", directed: true, padding: 30, spacingFactor: 1.2 },
    userZoomingEnabled: true,
    style: [
      { selector: "node", style: { label: "data(label)", "background-color": "#1f6feb", color: "#1c2128", "font-size": 12, "text-valign": "bottom", "text-margin-y": 6, width: 22, height: 22 } },
      { selector: "edge", style: { label: "data(label)", "curve-style": "bezier", "target-arrow-shape": "triangle", width: 2, "line-color": "#1a7f37", "target-arrow-color": "#1a7f37", "font-size": 10, "text-rotation": "none", "text-margin-x": 8, "text-halign": "right", "text-background-color": "#fff", "text-background-opacity": 1 } },
      { selector: "edge[denied > 0]", style: { "line-color": "#cf222e", "target-arrow-color": "#cf222e" } },
    ],
  });
}

// --- navigation, polling, signing in ------------------------------------

function show(which) {
  document.getElementById("sign-in").hidden = which !== "sign-in";
  document.getElementById("page").hidden = which !== "page";
  document.getElementById("nav").hidden = which !== "page";
  document.getElementById("sign-out").hidden = which !== "page";
}

function signedOut(message) {
  clearTimeout(state.timer);
  if (state.graph) { state.graph.destroy(); state.graph = null; }
  document.getElementById("page").replaceChildren();
  document.getElementById("status").textContent = "";
  document.getElementById("sign-in-error").textContent = message || "Your session has ended: sign in again.";
  show("sign-in");
  document.getElementById("token").focus();
}

async function refresh() {
  clearTimeout(state.timer);
  const name = state.page;
  const pg = pages[name];
  const area = document.getElementById("data");
  if (!pg || !area) return;
  try {
    const parts = await pg.draw(pg.params, refresh);
    if (state.page !== name) return;
    // Parts are nodes, or hooks to run once the nodes are in the page.
    const hooks = parts.filter((x) => x && !(x instanceof Node) && x.afterDraw);
    area.replaceChildren(...parts.filter((x) => x instanceof Node));
    for (const h of hooks) h.afterDraw();
    document.getElementById("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
    if (!area.hasAttribute("data-loaded")) {
      area.setAttribute("data-loaded", "true");
      // For measurements: when this page first showed its data.
      performance.mark(`ward:shown:${name}`);
    }
  } catch (e) {
    if (e instanceof SignedOut) return signedOut();
    document.getElementById("status").textContent = `not updated: ${e.message}`;
  }
  state.timer = setTimeout(refresh, POLL_MS);
}

function route() {
  const name = (location.hash.replace(/^#\//, "") || "overview").split("?")[0];
  const pg = pages[name] ? name : "overview";
  state.page = pg;
  state.selected = null;
  if (state.graph) { state.graph.destroy(); state.graph = null; }
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === pg);
  document.title = `${pages[pg].title} · ward`;
  const root = document.getElementById("page");
  root.replaceChildren(el("h1", {}, pages[pg].title), pages[pg].controls(pages[pg].params, refresh), el("div", { id: "data" }));
  show("page");
  refresh();
}

async function start() {
  document.getElementById("sign-in-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = document.getElementById("token");
    const error = document.getElementById("sign-in-error");
    error.textContent = "";
    try {
      const resp = await fetch("/ui/api/session", {
        method: "POST", credentials: "same-origin",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ token: input.value }),
      });
      if (!resp.ok) {
        const body = await resp.json().catch(() => ({}));
        error.textContent = body.message || `sign-in failed (HTTP ${resp.status})`;
        return;
      }
      input.value = "";
      route();
    } catch (e) {
      error.textContent = `sign-in failed: ${e.message}`;
    }
  });
  document.getElementById("sign-out").addEventListener("click", async () => {
    await fetch("/ui/api/session", { method: "DELETE", credentials: "same-origin" }).catch(() => {});
    signedOut("Signed out.");
  });
  window.addEventListener("hashchange", () => { if (!document.getElementById("page").hidden) route(); });
  const session = await api("/ui/api/session").catch(() => ({}));
  if (session.signed_in) route();
  else signedOut("");
}

start();
