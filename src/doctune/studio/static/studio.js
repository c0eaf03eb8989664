// doctune studio: one page, six views, over the JSON/SSE API of doctune.studio.server.
"use strict";

const $ = (id) => document.getElementById(id);
const saved = JSON.parse(localStorage.getItem("doctune-studio") || "{}");
const state = { docs: saved.docs || "", model: saved.model || "scratch:tiny", run: saved.run || "",
                lora: saved.lora ?? true, knowledge: saved.knowledge ?? true, info: null };
function remember() {
  const { docs, model, run, lora, knowledge } = state;
  localStorage.setItem("doctune-studio", JSON.stringify({ docs, model, run, lora, knowledge }));
  showContext();
}

async function api(path, body) {
  const opts = body === undefined ? {} : { method: "POST", body: JSON.stringify(body),
                                            headers: { "Content-Type": "application/json" } };
  const res = await fetch(path, opts);
  const data = await res.json().catch(() => ({ error: `${res.status} ${res.statusText}` }));
  if (!res.ok || data.error && !data.train_command) throw new Error(data.error || res.statusText);
  return data;
}
function showError(id, err) { $(id).textContent = err ? String(err.message || err) : ""; }
function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) k === "class" ? e.className = v : e.setAttribute(k, v);
  for (const k of kids) e.append(k instanceof Node ? k : String(k));
  return e;
}
const kb = (n) => n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e3).toFixed(1)} kB`;
const mins = (s) => s == null ? "-" : s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`;

// ---- navigation ---------------------------------------------------------------------
function showPage() {
  const page = (location.hash || "#docs").slice(1);
  document.querySelectorAll(".page").forEach((p) => p.classList.toggle("active", p.id === `page-${page}`));
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === page));
  if (page === "knowledge") loadKnowledge();
  if (page === "chat") chatNames();
  if (page === "ship") shipDefaults();
}
function showContext() {
  const bits = [state.docs && `docs: ${state.docs}`, state.model && `model: ${state.model}`,
                state.run && `run: ${state.run.split("/").pop()}`].filter(Boolean);
  $("context").textContent = bits.join(" · ");
}

// ---- 1 docs -------------------------------------------------------------------------
$("docs-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("docs-error");
  $("docs-result").hidden = true;
  try {
    const r = await api("/api/docs", { path: $("docs-path").value });
    state.docs = $("docs-path").value; remember();
    const dialects = Object.entries(r.dialects).map(([d, n]) => `${d} ${n}`).join(", ");
    $("docs-summary").textContent = `${r.found} files found: ${r.kept.length} kept, ${r.skipped.length} skipped. ` +
      `Dialect${Object.keys(r.dialects).length > 1 ? "s" : ""}: ${dialects || "none"}. ` +
      `${kb(r.chars)} of clean text, about ${Math.round(r.chars / 4).toLocaleString()} tokens.`;
    const body = $("docs-kept").querySelector("tbody");
    body.replaceChildren(...r.kept.map((f) => {
      const tr = el("tr", { class: "pick", "data-rel": f.rel }, el("td", {}, f.rel), el("td", {}, f.dialect),
        el("td", { class: "num" }, kb(f.bytes_before)), el("td", { class: "num" }, kb(f.bytes_after)),
        el("td", {}, f.warnings.length ? `${f.warnings.length} warning(s)` : ""));
      tr.addEventListener("click", () => showDocFile(r.path, f.rel, tr));
      return tr;
    }));
    $("docs-skipped").replaceChildren(...(r.skipped.length ? r.skipped.map((s) => el("li", {}, `${s.rel}: ${s.reason}`))
                                                          : [el("li", {}, "none")]));
    $("docs-result").hidden = false;
    if (r.kept.length) showDocFile(r.path, r.kept[0].rel, body.firstChild);
  } catch (err) { showError("docs-error", err); }
});
let docPicks = 0;  // the last pick wins: an earlier file's answer arriving late is dropped
async function showDocFile(path, rel, row) {
  const pick = ++docPicks;
  document.querySelectorAll("#docs-kept tr.picked").forEach((t) => t.classList.remove("picked"));
  row.classList.add("picked");
  const f = await api(`/api/docs/file?${new URLSearchParams({ path, rel })}`);
  if (pick !== docPicks) return;
  $("docs-file-title").textContent = `${f.rel} (${f.dialect}), before and after cleaning`;
  $("docs-before").textContent = f.raw;
  $("docs-after").textContent = f.text;
}

// ---- 2 plan -------------------------------------------------------------------------
function recipe() {
  return { model: $("model").value.trim(), lora: $("lora").checked, knowledge: $("knowledge").checked,
           max_steps: $("steps").value || null, docs: state.docs,
           sets: $("sets").value.split("\n").map((s) => s.trim()).filter(Boolean) };
}
$("plan-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("plan-error");
  $("plan-result").hidden = true;
  Object.assign(state, { model: $("model").value.trim(), lora: $("lora").checked, knowledge: $("knowledge").checked });
  remember();
  try {
    const r = await api("/api/plan", { ...recipe(), device: $("device").value });
    $("plan-command").textContent = r.train_command;
    if (r.error) { showError("plan-error", r.error); return; }
    const m = r.memory;
    const v = $("plan-verdict");
    v.className = `verdict ${m.fits ? "fits" : "nofit"}`;
    v.textContent = `${m.fits ? "Fits" : "Does not fit"}: about ${Math.round(m.peak_mb).toLocaleString()} MB at the peak ` +
      `(${m.phase}) of a ${Math.round(m.budget_mb).toLocaleString()} MB budget on ${m.device}, ${m.precision}.`;
    $("plan-breakdown").querySelector("tbody").replaceChildren(...Object.entries(m.breakdown).map(([k, val]) =>
      el("tr", {}, el("td", {}, k.replace(/_/g, " ")), el("td", { class: "num" }, `${Math.round(val).toLocaleString()} MB`))));
    $("plan-recs").replaceChildren(...m.recommendations.map((x) => el("li", {}, x)));
    const p = r.pass;
    $("plan-pass").textContent = p.seconds == null ? `About ${p.tokens.toLocaleString()} tokens; the Train page shows the rate.` :
      `About ${p.tokens.toLocaleString()} tokens${state.knowledge ? " (docs and knowledge data)" : ""}: ${mins(p.seconds)} ` +
      `at ${p.tokens_per_sec} tokens/s (${p.how}).${p.note ? " " + p.note : ""}`;
    $("plan-result").hidden = false;
  } catch (err) { showError("plan-error", err); }
});

// ---- 3 train ------------------------------------------------------------------------
const charts = {};
let series = { steps: [], loss: [], val: [], tps: [], mem: [] };
let source = null;

function makeChart(id, labels, colors) {
  const box = $(id);
  const opts = { width: box.clientWidth || 400, height: 200, legend: { show: true, live: false },
                 scales: { x: { time: false } }, axes: [{ label: "step" }, {}],
                 series: [{ label: "step" }, ...labels.map((l, i) => ({ label: l, stroke: colors[i], width: 2, spanGaps: true,
                   points: { show: l === "validation", size: 6 } }))] };
  box.replaceChildren();
  return new uPlot(opts, [[], ...labels.map(() => [])], box);
}
function resetCharts() {
  series = { steps: [], loss: [], val: [], tps: [], mem: [] };
  charts.loss = makeChart("chart-loss", ["train", "validation"], ["#2f6fde", "#e67e22"]);
  charts.speed = makeChart("chart-speed", ["tokens/s"], ["#16a085"]);
  charts.mem = makeChart("chart-mem", ["RSS MB"], ["#8e44ad"]);
  $("chart-loss").dataset.points = "0";
  $("samples").replaceChildren();
}
function addMetrics(rows) {
  for (const r of rows) {
    let i = series.steps.indexOf(r.step);
    if (i < 0) { series.steps.push(r.step); for (const k of ["loss", "val", "tps", "mem"]) series[k].push(null); i = series.steps.length - 1; }
    if (r.train_loss != null) series.loss[i] = r.train_loss;
    if (r.val_loss != null) series.val[i] = r.val_loss;
    if (r.tokens_per_sec != null) series.tps[i] = r.tokens_per_sec;
    if (r.mem_rss_mb != null) series.mem[i] = r.mem_rss_mb;
  }
  charts.loss.setData([series.steps, series.loss, series.val]);
  charts.speed.setData([series.steps, series.tps]);
  charts.mem.setData([series.steps, series.mem]);
  $("chart-loss").dataset.points = String(series.loss.filter((x) => x != null).length);
}
function addSamples(rows) {
  for (const r of rows) {
    $("samples").prepend(el("div", { class: "sample" }, el("b", {}, `step ${r.step}: `),
      el("span", { class: "prompt" }, r.prompt), r.completion));
  }
}
function showRunState(s) {
  const st = $("run-status");
  st.className = `status ${s.status}`;
  st.textContent = `${s.status}${s.total_steps ? `: step ${s.step} of ${s.total_steps}` : s.step ? `: step ${s.step}` : ""}`;
  st.dataset.status = s.status;
  st.dataset.step = s.step;
  $("run-stop").disabled = s.status !== "running";
  $("run-resume").disabled = s.status === "running" || !s.checkpoints.length || s.has_final && !$("resume-steps").value;
  const last = (k) => { const v = series[k].filter((x) => x != null); return v.length ? v[v.length - 1] : null; };
  const tps = last("tps"), mem = last("mem");
  $("run-stats").replaceChildren(
    el("span", {}, "model ", el("b", {}, s.model || "-")),
    el("span", {}, "ETA ", el("b", {}, s.status === "running" ? mins(s.eta_s) : "-")),
    el("span", {}, "throughput ", el("b", {}, tps == null ? "-" : `${Math.round(tps)} tok/s`)),
    el("span", {}, "memory ", el("b", {}, mem == null ? "-" : `${Math.round(mem)} MB`)),
    el("span", {}, "checkpoints ", el("b", {}, s.checkpoints.length ? s.checkpoints.join(", ") : "none")),
    el("span", {}, "validation ppl ", el("b", {}, s.val_ppl_after ? `${s.val_ppl_before.toFixed(1)} → ${s.val_ppl_after.toFixed(1)}` : "-")));
  if (s.job) {
    const log = $("run-log"), atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent = `$ ${s.job.command}\n${s.job.output}`;
    if (atEnd) log.scrollTop = log.scrollHeight;  // follow the output unless scrolled back
  }
}
function watch(path) {
  if (source) source.close();
  resetCharts();
  if (!path) return;
  source = new EventSource(`/api/run/events?${new URLSearchParams({ path })}`);
  source.addEventListener("metrics", (e) => { const d = JSON.parse(e.data); if (d.reset) resetCharts(); addMetrics(d.rows); });
  source.addEventListener("samples", (e) => { const d = JSON.parse(e.data); if (d.reset) $("samples").replaceChildren(); addSamples(d.rows); });
  source.addEventListener("state", (e) => showRunState(JSON.parse(e.data)));
}
async function loadRuns(select) {
  const r = await api("/api/runs");
  const runs = r.runs.map((x) => x.path);
  if (state.run && !runs.includes(state.run)) runs.unshift(state.run);
  $("run-select").replaceChildren(el("option", { value: "" }, runs.length ? "pick a run" : "no runs yet"),
    ...runs.map((p) => el("option", { value: p }, p.split("/").pop())));
  $("run-select").value = select || state.run || "";
}
$("run-select").addEventListener("change", () => { state.run = $("run-select").value; remember(); watch(state.run); });
$("train-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("train-error");
  try {
    const s = await api("/api/train", { ...recipe(), out: $("run-out").value, overwrite: $("overwrite").checked });
    state.run = s.path; remember();
    await loadRuns(s.path);
    watch(s.path);
  } catch (err) { showError("train-error", err); }
});
$("run-stop").addEventListener("click", async () => {
  showError("train-error");
  try { await api("/api/run/stop", { path: state.run }); } catch (err) { showError("train-error", err); }
});
$("run-resume").addEventListener("click", async () => {
  showError("train-error");
  try { await api("/api/run/resume", { path: state.run, max_steps: $("resume-steps").value || null }); }
  catch (err) { showError("train-error", err); }
});

// ---- 4 knowledge --------------------------------------------------------------------
const LABELS = [["held-out questions, exact match", "heldout_em"], ["held-out questions, token F1", "heldout_f1"],
  ["held-out multiple choice", "heldout_mc_acc"], ["control-doc multiple choice", "control_mc_acc"],
  ["trained questions, exact match", "trained_em"], ["answers that stop", "stop_rate"],
  ["held-out document perplexity", "heldout_doc_ppl"], ["general English perplexity", "general_ppl"]];
let evalTimer = null;
async function loadKnowledge() {
  showError("eval-error");
  if (!state.run) { $("eval-status").textContent = "Pick a run on the Train page first."; return; }
  const r = await api(`/api/run/knowledge?${new URLSearchParams({ path: state.run })}`);
  const job = r.job;
  $("eval-status").textContent = job ? (job.running ? `running: ${job.command}` : job.returncode ? "the evaluation failed" : "evaluated") :
    r.result ? "evaluated earlier" : "not evaluated yet";
  $("eval-status").dataset.state = job ? (job.running ? "running" : job.returncode ? "failed" : "done") : r.result ? "done" : "none";
  if (job && job.returncode) showError("eval-error", job.output);
  clearTimeout(evalTimer);
  if (job && job.running) evalTimer = setTimeout(loadKnowledge, 1500);
  showKnowledge(r.result, r.answers);
}
function cell(v, k) {
  if (v == null) return "-";
  return k.endsWith("_ppl") ? v.toFixed(2) : `${(100 * v).toFixed(1)}%`;
}
function showKnowledge(result, answers) {
  $("eval-summary").hidden = !result;
  if (result) {
    $("eval-summary").querySelector("tbody").replaceChildren(...LABELS.filter(([, k]) => result.base[k] != null || result.tuned[k] != null)
      .map(([label, k]) => { const c = result.change[k];
        return el("tr", {}, el("td", {}, label), el("td", { class: "num" }, cell(result.base[k], k)),
          el("td", { class: "num" }, cell(result.tuned[k], k)),
          el("td", { class: "num" }, c == null ? "-" : k.endsWith("_ppl") ? `${c > 0 ? "+" : ""}${c.toFixed(1)}%` : `${c > 0 ? "+" : ""}${c.toFixed(1)} pts`)); }));
  }
  const mark = (a) => a == null ? el("td", {}, "-") : el("td", {}, el("span", { class: a.right ? "right" : "wrong" }, a.right ? "✓ " : "✗ "), a.text);
  $("eval-questions").querySelector("tbody").replaceChildren(...(answers || []).map((q) =>
    el("tr", {}, el("td", {}, `${q.question} `, el("small", {}, `(${q.split})`)), el("td", {}, q.answer), mark(q.base), mark(q.tuned))));
}
$("eval-start").addEventListener("click", async () => {
  showError("eval-error");
  try { await api("/api/run/eval", { path: state.run, max_questions: $("eval-n").value || null }); loadKnowledge(); }
  catch (err) { showError("eval-error", err); }
});

// ---- 5 chat -------------------------------------------------------------------------
async function chatNames() {
  $("chat-tuned-name").textContent = state.run ? `(${state.run.split("/").pop()})` : "(pick a run on the Train page)";
  $("chat-base-name").textContent = "";
  if (!state.run) return;
  const r = await api(`/api/run?${new URLSearchParams({ path: state.run })}`);
  $("chat-base-name").textContent = r.model ? `(${r.model}${r.lora ? ", the adapter off" : ""})` : "";
}
function ask(side, q) {
  return new Promise((done) => {
    const out = $(`chat-${side}`);
    out.textContent = "";
    out.dataset.done = "false";
    const es = new EventSource(`/api/chat?${new URLSearchParams({ run: state.run, side, q })}`);
    const finish = () => { es.close(); out.dataset.done = "true"; done(); };
    es.addEventListener("text", (e) => { out.textContent += JSON.parse(e.data); });
    es.addEventListener("error", (e) => { if (e.data) out.textContent = `(${JSON.parse(e.data)})`; finish(); });
    es.addEventListener("done", finish);
  });
}
$("chat-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const q = $("chat-q").value;
  if (!state.run || !q.trim()) { $("chat-tuned").textContent = state.run ? "Type a question." : "Pick a run on the Train page first."; return; }
  await Promise.all([ask("tuned", q), ask("base", q)]);
});

// ---- 6 ship -------------------------------------------------------------------------
function shipDefaults() {
  if (!$("ship-out").value && state.run) $("ship-out").value = `exports/${state.run.split("/").pop()}-${$("ship-quant").value || "f16"}`;
}
$("ship-format").addEventListener("change", () => { $("ship-quant").disabled = $("ship-format").value !== "gguf"; });
$("ship-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("ship-error");
  $("ship-result").hidden = true;
  try {
    let job = await api("/api/ship", { run: state.run, format: $("ship-format").value, quant: $("ship-quant").value,
                                       out: $("ship-out").value, force: $("ship-force").checked });
    $("ship-status").textContent = `exporting: ${job.command}`;
    while (job.running) { await new Promise((r) => setTimeout(r, 700)); job = await api(`/api/job?id=${job.id}`); }
    if (job.returncode) { $("ship-status").textContent = ""; showError("ship-error", job.output); return; }
    $("ship-status").textContent = `done: ${job.command}`;
    const r = await api(`/api/shipped?${new URLSearchParams({ out: job.target })}`);
    $("ship-files").replaceChildren(...r.files.map((f) => el("li", {}, `${f.name} (${kb(f.bytes)})`)));
    $("ship-ollama").hidden = !r.modelfile;
    $("ship-command").textContent = r.ollama || "";
    $("ship-modelfile").textContent = r.modelfile || "";
    $("ship-result").hidden = false;
  } catch (err) { showError("ship-error", err); }
});
$("ship-copy").addEventListener("click", () => navigator.clipboard?.writeText($("ship-command").textContent));

// ---- start --------------------------------------------------------------------------
async function start() {
  state.info = await api("/api/info");
  $("ship-quant").replaceChildren(...state.info.quants.map((q) => el("option", {}, q)));
  $("docs-path").value = state.docs;
  $("model").value = state.model;
  $("lora").checked = state.lora;
  $("knowledge").checked = state.knowledge;
  window.addEventListener("hashchange", showPage);
  showPage();
  showContext();
  await loadRuns();
  watch(state.run);
  document.body.dataset.ready = "true";
}
start();
