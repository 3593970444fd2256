// Sesh live console: plain JS against the same-origin API. The socket
// logic follows sesh-client: reconnect with backoff and full jitter,
// resume from the last seq shown, resend unacked points with their ids.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  token: "", user: "", cursor: null,
  ws: null, session: null, lastSeq: null, attempt: 0, timer: null,
  pending: new Map(), participants: new Map(), series: new Map(), members: [],
  presenceTimer: null, quotaTimer: null, leaving: false,
};
const COLORS = ["#d33", "#36c", "#2a2", "#c80", "#909", "#088", "#555"];

function message(text, kind) {
  const div = document.createElement("div");
  div.textContent = text;
  if (kind) div.className = kind;
  $("messages").prepend(div);
  while ($("messages").children.length > 5) $("messages").lastChild.remove();
  if (kind === "info") setTimeout(() => div.remove(), 4000);
}

window.addEventListener("error", (e) => message("Console error: " + e.message));
window.addEventListener("unhandledrejection", (e) => message("Console error: " + (e.reason && e.reason.message || e.reason)));

// The claims of a JWT, to show who the token is for; the server checks it.
function claims(token) {
  const part = token.split(".")[1];
  if (!part) throw new Error("this is not a JWT (expected three dot-separated parts)");
  const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
  return JSON.parse(json);
}

async function api(method, path, body) {
  const init = { method, headers: { authorization: "Bearer " + state.token } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new Error("network error: " + e.message);
  }
  const text = await resp.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { /* shown below */ }
  if (!resp.ok) {
    const err = json && json.error;
    const retry = resp.headers.get("retry-after");
    throw new Error(err ? `${err.code} (${resp.status}): ${err.message}${retry ? `; retry in ${retry} s` : ""}`
      : `HTTP ${resp.status}`);
  }
  if (json === null) throw new Error(`${method} ${path}: not JSON`);
  return json;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows.map((cells) => {
    const tr = document.createElement("tr");
    for (const c of cells) {
      const td = document.createElement("td");
      td.textContent = c;
      tr.append(td);
    }
    return tr;
  }));
}

async function refreshQuota() {
  try {
    const q = await api("GET", "/v1/quota");
    const rows = [["plan", q.plan, ""]];
    for (const r of ["api", "sessions", "points"]) {
      const u = q[r];
      const reserved = u.reserved ? ` (+${u.reserved} reserved)` : "";
      rows.push([r, `${u.used}${reserved} used`, u.limit === null ? "unlimited" : `of ${u.limit}`]);
    }
    fill($("quota").tBodies[0], rows);
  } catch (e) {
    message("Quota: " + e.message);
  }
}

async function listSessions(more) {
  const q = more && state.cursor ? "?cursor=" + encodeURIComponent(state.cursor) : "";
  const list = await api("GET", "/v1/sessions" + q);
  if (!more) $("sessions").replaceChildren();
  for (const s of list.sessions) {
    const li = document.createElement("li");
    li.textContent = `${s.title || "(untitled)"} — ${s.status}, ${s.pointCount} points, ${s.startedAt}`;
    li.dataset.id = s.id;
    li.title = s.id;
    li.addEventListener("click", () => join(s.id).catch((e) => message("Join: " + e.message)));
    $("sessions").append(li);
  }
  if (!list.sessions.length && !more) $("sessions").innerHTML = "<li><i>no sessions in the last 30 days</i></li>";
  state.cursor = list.nextCursor || null;
  $("more").hidden = !state.cursor;
}

$("auth").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const token = $("token").value.trim();
  try {
    const c = claims(token);
    state.token = token;
    state.user = c.sub || "?";
    $("whoami").textContent = `as ${state.user} (${c.plan || "free"})`;
  } catch (e) {
    message("Bad token: " + e.message);
    return;
  }
  try {
    await listSessions(false);
    await refreshQuota();
    clearInterval(state.quotaTimer);
    state.quotaTimer = setInterval(refreshQuota, 10000);
    message("Signed in as " + state.user, "info");
  } catch (e) {
    $("whoami").textContent = "";
    message("Sign-in failed: " + e.message);
  }
});

$("refresh").addEventListener("click", () => listSessions(false).catch((e) => message("Sessions: " + e.message)));
$("more").addEventListener("click", () => listSessions(true).catch((e) => message("Sessions: " + e.message)));

$("create").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const body = {};
    if ($("title").value.trim()) body.title = $("title").value.trim();
    const members = $("members").value.split(",").map((m) => m.trim()).filter(Boolean);
    if (members.length) body.members = members;
    const s = await api("POST", "/v1/sessions", body);
    await join(s.id);
    listSessions(false).catch(() => {});
  } catch (e) {
    message("Create: " + e.message);
  }
});

$("joinform").addEventListener("submit", (ev) => {
  ev.preventDefault();
  join($("joinid").value.trim()).catch((e) => message("Join: " + e.message));
});

async function join(id) {
  if (!state.token) throw new Error("paste a token first");
  const s = await api("GET", "/v1/sessions/" + encodeURIComponent(id));
  leave();
  state.leaving = false;
  state.session = s;
  state.lastSeq = null;
  state.attempt = 0;
  state.pending.clear();
  state.series.clear();
  state.participants.clear();
  state.members = [s.ownerId, ...s.members];
  $("sid").textContent = s.id;
  $("points").tBodies[0].replaceChildren();
  $("live").hidden = false;
  drawChart();
  connect();
  refreshPresence();
  state.presenceTimer = setInterval(refreshPresence, 5000);
}

function leave() {
  state.leaving = true;
  clearTimeout(state.timer);
  clearInterval(state.presenceTimer);
  if (state.ws) state.ws.close(1000);
  state.ws = null;
}

$("leave").addEventListener("click", () => {
  leave();
  $("live").hidden = true;
});

function setStatus(text, online) {
  $("status").textContent = text;
  $("status").className = "status" + (online ? " online" : "");
}

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const url = `${proto}//${location.host}/v1/sessions/${encodeURIComponent(state.session.id)}/ws?token=${encodeURIComponent(state.token)}`;
  setStatus("connecting");
  const ws = new WebSocket(url);
  state.ws = ws;
  ws.onmessage = (ev) => {
    let f;
    try { f = JSON.parse(ev.data); } catch (_) { message("Undecodable frame"); return; }
    onFrame(f);
  };
  ws.onclose = (ev) => {
    if (state.ws !== ws || state.leaving) return;
    state.ws = null;
    // Full jitter over a ceiling growing from 0.5 s to 10 s.
    const ceiling = Math.min(10000, 500 * 2 ** state.attempt++);
    const wait = Math.floor(Math.random() * ceiling);
    setStatus(`reconnecting in ${(wait / 1000).toFixed(1)} s`);
    if (ev.code !== 1000 && state.attempt > 1) {
      // The browser hides why an upgrade failed; a read tells a final
      // refusal (bad token, not a member, ended) from a blip.
      api("GET", "/v1/sessions/" + encodeURIComponent(state.session.id)).then((s) => {
        if (s.status === "ended") { message("The session has ended."); leave(); setStatus("ended"); }
      }).catch((e) => { message("Connection refused: " + e.message); leave(); setStatus("offline"); });
    }
    state.timer = setTimeout(() => { if (!state.leaving) connect(); }, wait);
  };
}

function send(frame) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(frame));
}

function onFrame(f) {
  switch (f.type) {
    case "welcome":
      state.attempt = 0;
      setStatus("live", true);
      state.participants = new Map(f.participants.map((p) => [p.connId, p]));
      renderParticipants();
      if (state.lastSeq === null) state.lastSeq = Math.max(0, f.lastSeq - 50);
      if (f.lastSeq > state.lastSeq) send({ type: "resume", afterSeq: state.lastSeq });
      else resendPending();
      break;
    case "joined":
      state.participants.set(f.connId, f);
      renderParticipants();
      break;
    case "left":
      state.participants.delete(f.connId);
      renderParticipants();
      break;
    case "point":
      if (state.pending.has(f.id) && f.userId === state.user) {
        const p = state.pending.get(f.id);
        state.pending.delete(f.id);
        addPoint({ ...p.point, seq: f.seq, userId: state.user, ts: f.ts }, true);
      } else {
        addPoint(f, false);
      }
      break;
    case "ack": {
      const p = state.pending.get(f.id);
      if (p) {
        state.pending.delete(f.id);
        addPoint({ ...p.point, seq: f.seq, userId: state.user, ts: Date.now() }, true);
      }
      break;
    }
    case "resumed":
      if (f.more) send({ type: "resume", afterSeq: f.throughSeq });
      else resendPending();
      break;
    case "pong":
      break;
    case "error":
      if (f.ref && state.pending.has(f.ref) && f.code !== "rate_limited") state.pending.delete(f.ref);
      message(`Server: ${f.code}: ${f.message}`);
      break;
    case "ended":
      message(`The session has ended (last seq ${f.lastSeq}).`, "info");
      leave();
      setStatus("ended");
      break;
    default:
      message("Unknown frame type " + f.type);
  }
}

function resendPending() {
  for (const p of state.pending.values()) send({ type: "point", ...p.point });
}

function addPoint(p, mine) {
  if (state.lastSeq !== null && p.seq <= state.lastSeq && !mine) return;
  if (state.lastSeq === null || p.seq > state.lastSeq) state.lastSeq = p.seq;
  const tbody = $("points").tBodies[0];
  const tr = document.createElement("tr");
  if (mine) tr.className = "mine";
  tr.dataset.seq = p.seq;
  for (const c of [p.seq, p.userId, p.kind, p.value ?? "", new Date(p.ts).toLocaleTimeString()]) {
    const td = document.createElement("td");
    td.textContent = c;
    tr.append(td);
  }
  tbody.prepend(tr);
  while (tbody.rows.length > 200) tbody.lastChild.remove();
  if (typeof p.value === "number") {
    const s = state.series.get(p.kind) || [];
    s.push(p.value);
    if (s.length > 100) s.shift();
    state.series.set(p.kind, s);
    drawChart();
  }
}

$("send").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const kind = $("kind").value.trim();
  const raw = $("value").value.trim();
  if (!kind) { message("A point needs a kind."); return; }
  const point = { id: crypto.randomUUID(), kind };
  if (raw !== "") {
    const v = Number(raw);
    if (!Number.isFinite(v)) { message("The value must be a number."); return; }
    point.value = v;
  }
  state.pending.set(point.id, { point });
  send({ type: "point", ...point });
  if (!state.ws) message("Offline: the point will be sent on reconnect.", "info");
});

function renderParticipants() {
  $("participants").replaceChildren(...[...state.participants.values()].map((p) => {
    const li = document.createElement("li");
    li.textContent = `${p.userId} (${p.connId.slice(0, 8)})`;
    return li;
  }));
}

async function refreshPresence() {
  if (!state.members.length) return;
  try {
    const b = await api("GET", "/v1/presence?users=" + state.members.map(encodeURIComponent).join(","));
    $("presence").replaceChildren(...b.users.map((u) => {
      const li = document.createElement("li");
      li.textContent = `${u.userId}: ${u.status}${u.activity ? " — " + u.activity : ""} (${u.connections} live)`;
      return li;
    }));
  } catch (e) {
    message("Presence: " + e.message);
  }
}

function drawChart() {
  const c = $("chart");
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const all = [...state.series.values()].flat();
  $("legend").replaceChildren();
  if (!all.length) {
    g.fillStyle = "#999";
    g.fillText("values appear here as points with a value arrive", 10, 20);
    return;
  }
  let lo = Math.min(...all), hi = Math.max(...all);
  if (lo === hi) { lo -= 1; hi += 1; }
  const pad = 10;
  let i = 0;
  for (const [kind, values] of state.series) {
    const color = COLORS[i++ % COLORS.length];
    g.strokeStyle = color;
    g.beginPath();
    values.forEach((v, k) => {
      const x = pad + (k / Math.max(1, values.length - 1)) * (c.width - 2 * pad);
      const y = c.height - pad - ((v - lo) / (hi - lo)) * (c.height - 2 * pad);
      if (k === 0) g.moveTo(x, y); else g.lineTo(x, y);
      g.fillStyle = color;
      g.fillRect(x - 1.5, y - 1.5, 3, 3);
    });
    g.stroke();
    const span = document.createElement("span");
    span.style.color = color;
    span.textContent = `■ ${kind} (last ${values[values.length - 1]})`;
    $("legend").append(span);
  }
}

drawChart();
