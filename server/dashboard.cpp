// The dashboard: GET / serves one static page (no toolchain, no CDN: nothing reaches outside the
// home) that polls GET /v1/cluster every second and chats through the server's own
// /v1/chat/completions, streamed. /v1/cluster is documented in docs/API.md.
#include <fmt/format.h>

#include <algorithm>

#include "server/server_impl.h"

namespace hearth::server {

using json = nlohmann::ordered_json;

namespace {

constexpr const char* kDashboard = R"HTML(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>hearth</title>
<style>
 body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f5f2;color:#222}
 header{background:#2d2a26;color:#f6f5f2;padding:10px 16px;display:flex;gap:16px;align-items:baseline}
 header h1{font-size:18px;margin:0} #state{font-weight:bold} .ok{color:#7fd37f} .bad{color:#ff8a7a}
 main{display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);gap:16px;padding:16px}
 section{background:#fff;border-radius:6px;padding:12px;box-shadow:0 1px 2px #0002}
 h2{font-size:15px;margin:0 0 8px} table{border-collapse:collapse;width:100%} td,th{text-align:left;padding:3px 6px;border-bottom:1px solid #eee}
 .bar{background:#e7e3dc;height:8px;border-radius:4px;overflow:hidden} .bar>div{background:#c2703d;height:8px}
 #log{height:320px;overflow:auto;white-space:pre-wrap;border:1px solid #ddd;padding:8px;background:#fbfaf8}
 .you{color:#555} .model{color:#111} form{display:flex;gap:6px;margin-top:8px} #msg{flex:1;padding:6px} button{padding:6px 12px}
 .stats{display:grid;grid-template-columns:repeat(4,1fr);gap:8px;margin-bottom:10px} .stats div{background:#f3f1ec;padding:6px;border-radius:4px}
 .stats b{display:block;font-size:18px}
</style></head>
<body>
<header><h1>hearth</h1><span id="model"></span><span id="state">…</span><span id="reason"></span></header>
<main>
<div>
<section><h2>Cluster</h2>
 <div class="stats"><div>tokens/s<b id="tps">0</b></div><div>running<b id="running">0</b></div>
 <div>queued<b id="waiting">0</b></div><div>recoveries<b id="recoveries">0</b></div></div>
 <table id="stages"><thead><tr><th>stage</th><th>node</th><th>backend</th><th>layers</th><th>memory used / offered</th><th>bandwidth</th><th>busy</th></tr></thead><tbody></tbody></table>
 <h2 style="margin-top:12px">Nodes</h2>
 <table id="nodes"><thead><tr><th>address</th><th>role</th></tr></thead><tbody></tbody></table>
</section>
</div>
<section><h2>Chat</h2>
 <div id="log"></div>
 <form id="chat"><input id="msg" autocomplete="off" placeholder="Say something"><button id="send">Send</button></form>
 <details style="margin-top:8px"><summary>API key</summary><input id="key" placeholder="only if the server has one" style="width:100%"></details>
</section>
</main>
<script>
const $ = id => document.getElementById(id);
const gib = b => (b / 2 ** 30).toFixed(2) + " GiB";
$("key").value = localStorage.getItem("hearth-key") || "";
$("key").onchange = () => localStorage.setItem("hearth-key", $("key").value);
function row(cells) { const tr = document.createElement("tr"); for (const c of cells) { const td = document.createElement("td");
  if (c instanceof Node) td.appendChild(c); else td.textContent = c; tr.appendChild(td); } return tr; }
function bar(frac) { const b = document.createElement("div"); b.className = "bar"; const i = document.createElement("div");
  i.style.width = Math.round(100 * Math.min(1, frac)) + "%"; b.appendChild(i); b.title = Math.round(100 * frac) + "%"; return b; }
async function refresh() {
  try {
    const c = await (await fetch("/v1/cluster")).json();
    $("model").textContent = c.model + " · " + c.n_layers + " layers";
    $("state").textContent = c.state; $("state").className = c.state === "serving" ? "ok" : "bad";
    $("reason").textContent = c.reason || "";
    $("tps").textContent = c.tokens_per_second.toFixed(1);
    $("running").textContent = c.requests.running; $("waiting").textContent = c.requests.waiting;
    $("recoveries").textContent = c.recoveries;
    const tb = $("stages").tBodies[0]; tb.replaceChildren();
    c.stages.forEach((s, i) => tb.appendChild(row(["stage " + i, s.address || "this process", s.backend + (s.device ? " · " + s.device : ""),
      "[" + s.first + ", " + s.last + ")", s.memory_budget ? gib(s.memory_used) + " / " + gib(s.memory_budget) : "",
      s.bandwidth_gbps ? s.bandwidth_gbps.toFixed(1) + " GB/s" : "", bar(s.busy_share)])));
    const nb = $("nodes").tBodies[0]; nb.replaceChildren();
    for (const n of c.nodes) nb.appendChild(row([n.address, n.role]));
  } catch (e) { $("state").textContent = "unreachable"; $("state").className = "bad"; }
}
refresh(); setInterval(refresh, 1000);
const history = [];
$("chat").onsubmit = async (ev) => {
  ev.preventDefault();
  const text = $("msg").value.trim(); if (!text) return;
  $("msg").value = ""; history.push({role: "user", content: text});
  const you = document.createElement("div"); you.className = "you"; you.textContent = "you: " + text; $("log").appendChild(you);
  const out = document.createElement("div"); out.className = "model"; $("log").appendChild(out);
  const answer = document.createElement("span"); answer.className = "answer"; out.append("model: ", answer);
  const headers = {"Content-Type": "application/json"}; if ($("key").value) headers.Authorization = "Bearer " + $("key").value;
  const r = await fetch("/v1/chat/completions", {method: "POST", headers,
    body: JSON.stringify({model: "hearth", messages: history, stream: true, max_tokens: 256})});
  if (!r.ok) { answer.textContent = "error " + r.status + ": " + (await r.text()); return; }
  const reader = r.body.getReader(), dec = new TextDecoder(); let buf = "", whole = "";
  for (;;) {
    const {value, done} = await reader.read(); if (done) break;
    buf += dec.decode(value, {stream: true}); let at;
    while ((at = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, at); buf = buf.slice(at + 2);
      if (!ev.startsWith("data: ") || ev === "data: [DONE]") continue;
      const d = JSON.parse(ev.slice(6));
      const piece = d.choices && d.choices[0] && d.choices[0].delta && d.choices[0].delta.content;
      if (piece) { whole += piece; answer.textContent = whole; $("log").scrollTop = 1e9; }
    }
  }
  out.dataset.done = "1"; history.push({role: "assistant", content: whole});
};
</script></body></html>
)HTML";

}  // namespace

void OpenAiServer::Impl::dashboard(const httplib::Request&, httplib::Response& res) {
  res.set_content(kDashboard, "text/html; charset=utf-8");
}

void OpenAiServer::Impl::cluster(const httplib::Request&, httplib::Response& res) {
  engine::Model* m = ready(res);
  if (m == nullptr) return;
  const engine::SchedulerStats st = scheduler.load()->stats();
  // Rates over the time since the previous call: at least half a second, or any time in which
  // tokens were generated (a short answer can finish inside half a second), else the last rates.
  double tps = 0;
  std::vector<double> busy;
  {
    std::lock_guard lock(rates.mutex);
    const Clock::time_point now = Clock::now();
    const double dt = rates.at == Clock::time_point{} ? 0 : seconds_between(rates.at, now);
    const bool fresh = dt >= 0.5 || (dt > 0 && st.generated_tokens > rates.generated);
    if (fresh) {
      rates.tokens_per_second = static_cast<double>(st.generated_tokens - rates.generated) / dt;
      rates.busy_share.assign(st.stage_busy_seconds.size(), 0.0);
      for (size_t i = 0; i < st.stage_busy_seconds.size(); ++i) {
        const double before = i < rates.busy.size() ? rates.busy[i] : 0.0;
        rates.busy_share[i] = std::clamp((st.stage_busy_seconds[i] - before) / dt, 0.0, 1.0);
      }
    }
    if (fresh || rates.at == Clock::time_point{}) {
      rates.at = now;
      rates.generated = st.generated_tokens;
      rates.busy = st.stage_busy_seconds;
    }
    tps = rates.tokens_per_second;
    busy = rates.busy_share;
  }
  const engine::ExecutorHealth& h = st.executor;
  const int32_t n_layers = m->config().n_layer;
  json stages = json::array();
  auto busy_of = [&](size_t i) { return i < busy.size() ? busy[i] : 0.0; };
  if (h.stages.empty() && h.state != engine::ExecutorHealth::State::down) {
    // Every layer in this process.
    stages.push_back({{"address", ""}, {"backend", "this process"}, {"device", ""}, {"first", 0},
                      {"last", n_layers}, {"memory_used", 0}, {"memory_budget", 0}, {"bandwidth_gbps", 0},
                      {"busy_share", busy_of(0)}});
  }
  for (size_t i = 0; i < h.stages.size(); ++i) {
    const engine::StageHealth& s = h.stages[i];
    stages.push_back({{"address", s.address},
                      {"backend", s.backend},
                      {"device", s.device},
                      {"first", s.first},
                      {"last", s.last},
                      {"memory_used", s.memory_used},
                      {"memory_budget", s.memory_budget},
                      {"bandwidth_gbps", s.bandwidth_gbps},
                      {"busy_share", busy_of(i)}});
  }
  json nodes = json::array();
  for (const auto& [address, role] : h.nodes) nodes.push_back({{"address", address}, {"role", role}});
  json out = {{"model", options.model_id},
              {"n_layers", n_layers},
              {"state", engine::executor_state_name(h.state)},
              {"reason", h.reason},
              {"plan", h.plan},
              {"stages", stages},
              {"nodes", nodes},
              {"tokens_per_second", tps},
              {"requests", {{"running", st.running}, {"waiting", st.waiting}, {"slots", st.slots}}},
              {"kv_positions", {{"used", st.kv_positions_used}, {"total", st.kv_positions_total}}},
              {"generated_tokens", st.generated_tokens},
              {"prompt_tokens", st.prompt_tokens},
              {"recoveries", h.recoveries},
              {"stage_failures", h.stage_failures},
              {"rebalances", h.rebalances},
              {"prefix_cache_hits", st.prefix_cache_hits}};
  res.set_content(dump(out), "application/json");
}

}  // namespace hearth::server
