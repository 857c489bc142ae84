"""The web page served at `/`: plain HTML and vanilla JS, no build step, talking to the JSON API.

Kept as a Python string (not a package data file) so that it ships with any install of the
package. Element ids are stable: the browser test drives them.
"""

INDEX_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{TITLE}}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#243b53;color:#fff;padding:10px 20px}header h1{margin:0;font-size:20px}
main{display:grid;grid-template-columns:1fr 1fr;gap:16px;padding:16px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px}
section.wide{grid-column:1 / span 2}
input,select,button{font-size:14px;padding:4px 8px}
ul{padding-left:18px}li{margin:4px 0}.meta{color:#777;font-size:12px}
.facet{display:inline-block;margin:2px;padding:2px 6px;border:1px solid #bbb;border-radius:10px;cursor:pointer;font-size:12px}
.facet.on{background:#243b53;color:#fff}.why{font-size:12px;margin-left:6px}
.explain{background:#f3f6fa;padding:6px;font-size:12px;margin-top:4px}
#dashboard img{max-width:48%;margin:4px;border:1px solid #ddd}
#report-frame{width:100%;height:640px;border:1px solid #ddd;margin-top:6px}
.err{color:#b00}
</style></head>
<body><header><h1>{{TITLE}}</h1></header>
<main>
<section id="search-panel">
  <h2>Search</h2>
  <form id="search-form"><input id="q" placeholder="search products" size="30" autocomplete="off">
  <button id="search-btn" type="submit">Search</button></form>
  <div id="correction" class="meta"></div>
  <div id="facets"></div>
  <ul id="results"></ul>
</section>
<section id="rec-panel">
  <h2>Recommendations</h2>
  <select id="user-list"><option value="">pick a user</option></select>
  <input id="user" placeholder="or type a user id" size="16">
  <button id="rec-btn" type="button">Recommend</button>
  <div id="strategy" class="meta"></div>
  <ul id="recs"></ul>
</section>
<section id="dashboard-panel" class="wide">
  <h2>Data value</h2>
  <div id="dashboard" class="meta">loading...</div>
</section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const filters = {category: null, brand: null};
function esc(s) { const d = document.createElement("div"); d.textContent = s == null ? "" : String(s); return d.innerHTML; }
async function getJSON(url) {
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}
function itemLine(it) {
  const price = it.price == null ? "" : " - " + Number(it.price).toFixed(2);
  return "<b>" + esc(it.title) + "</b> <span class='meta'>" + esc(it.item_id) + " | " + esc(it.brand) +
         " | " + esc(it.category) + price + "</span>";
}
async function runSearch() {
  const q = $("q").value.trim();
  if (!q) return;
  const p = new URLSearchParams({q: q, k: "10"});
  for (const f of ["category", "brand"]) if (filters[f]) p.set(f, filters[f]);
  try {
    const res = await getJSON("/v1/search?" + p);
    $("correction").textContent = res.corrected_query ? "showing results for: " + res.corrected_query : "";
    $("results").innerHTML = res.items.map((it) => "<li class='result' data-id='" + esc(it.item_id) + "'>" +
      itemLine(it) + "</li>").join("") || "<li class='meta'>no results</li>";
    let html = "";
    for (const f of ["category", "brand"]) {
      for (const [v, n] of Object.entries(res.facets[f] || {})) {
        const on = filters[f] === v ? " on" : "";
        html += "<span class='facet" + on + "' data-f='" + f + "' data-v='" + esc(v) + "'>" + esc(v) + " (" + n + ")</span>";
      }
      html += "<br>";
    }
    $("facets").innerHTML = html;
    for (const el of document.querySelectorAll(".facet")) {
      el.onclick = () => { const f = el.dataset.f; filters[f] = filters[f] === el.dataset.v ? null : el.dataset.v; runSearch(); };
    }
  } catch (e) { $("results").innerHTML = "<li class='err'>" + esc(e.message) + "</li>"; }
}
async function explain(li, user, item) {
  const box = li.querySelector(".explain");
  if (box) { box.remove(); return; }
  const d = document.createElement("div"); d.className = "explain"; li.appendChild(d);
  try {
    const ex = await getJSON("/v1/explain?" + new URLSearchParams({user_id: user, item_id: item}));
    d.innerHTML = esc(ex.reason || "") + (ex.score == null ? "" : " - score " + ex.score.toFixed(3) + ", rank " + ex.rank) +
      "<br>because of: " + (ex.nearest_history.map((h) => esc(h.title) + " (similarity " + h.similarity.toFixed(2) + ")").join("; ") || "-") +
      (ex.influential_training_records && ex.influential_training_records.length ? "<br>most valuable training records: " +
        ex.influential_training_records.map((r) => esc(r.user_id) + " " + esc(r.event) + " " + esc(r.item_id) +
        " (value " + Number(r.value).toFixed(3) + ")").join("; ") : "");
  } catch (e) { d.innerHTML = "<span class='err'>" + esc(e.message) + "</span>"; }
}
async function runRecommend() {
  const user = $("user").value.trim() || $("user-list").value;
  if (!user) return;
  try {
    const res = await getJSON("/v1/recommend?" + new URLSearchParams({user_id: user, k: "10"}));
    $("strategy").textContent = res.strategy + " (" + res.history_events + " events in history)";
    $("recs").innerHTML = res.items.map((it) => "<li class='rec' data-id='" + esc(it.item_id) + "'>" + itemLine(it) +
      "<a href='#' class='why'>why?</a></li>").join("");
    for (const li of document.querySelectorAll("#recs li")) {
      li.querySelector(".why").onclick = (ev) => { ev.preventDefault(); explain(li, user, li.dataset.id); };
    }
  } catch (e) { $("recs").innerHTML = "<li class='err'>" + esc(e.message) + "</li>"; }
}
async function loadUsers() {
  try {
    const res = await getJSON("/v1/users?limit=50");
    $("user-list").innerHTML += res.users.map((u) => "<option>" + esc(u) + "</option>").join("");
  } catch (e) { /* the picker stays empty */ }
}
async function loadDashboard() {
  try {
    const r = await getJSON("/v1/reports");
    if (!r.available || (!r.images.length && !r.html.length)) {
      $("dashboard").textContent = "no valuation report yet (run the valuation job; set reports_dir)"; return;
    }
    // the valuation job writes report.html with its plots inline: show the newest one in place
    const main = r.html.find((h) => h.endsWith("report.html")) || r.html[0];
    $("dashboard").innerHTML = r.html.map((h) => "<a href='/reports/" + encodeURI(h) + "' target='_blank'>" + esc(h) + "</a>").join(" ") +
      (main ? "<iframe id='report-frame' src='/reports/" + encodeURI(main) + "'></iframe>" : "") +
      "<br>" + r.images.map((i) => "<img alt='" + esc(i) + "' src='/reports/" + encodeURI(i) + "'>").join("");
  } catch (e) { $("dashboard").innerHTML = "<span class='err'>" + esc(e.message) + "</span>"; }
}
$("search-form").onsubmit = (e) => { e.preventDefault(); filters.category = filters.brand = null; runSearch(); };
$("rec-btn").onclick = runRecommend;
$("user-list").onchange = () => { $("user").value = ""; runRecommend(); };
loadUsers(); loadDashboard();
</script></body></html>
"""
