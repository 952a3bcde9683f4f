// The analyst's page: posts in (pasted or from a file), the server's labels out, as a table, a summary and a CSV.
// Plain JavaScript, no library and no request to any other origin. Posts go to the JSON API in requests of at most
// max_texts posts, one after another, so any number of posts works within the server's limits.
"use strict";

const settings = {
  apiPath: document.body.dataset.apiPath,
  maxTexts: Number(document.body.dataset.maxTexts),
  maxChars: Number(document.body.dataset.maxChars),
  keyRequired: document.body.dataset.keyRequired === "true",
  maxFileBytes: Number(document.body.dataset.maxFileBytes),
};
const KEY_STORAGE = "weibo-sentiment-api-key";
const $ = (id) => document.getElementById(id);
let rows = []; // one per post, in input order: {position, id, text, label, sentiment, confidence, prob_positive, ...}
let summary = {}; // the server's summaries of this analysis's requests, added up (addSummaries)

class PageError extends Error {}

// ---- reading posts ----------------------------------------------------------------------------------------------
function postsFromText(text) {
  return text.split(/\r?\n/).filter((line) => line.trim()).map((line) => ({ id: "", text: line }));
}

function parseDelimited(text, delimiter) {
  // RFC 4180: quoted fields may hold the delimiter, newlines and doubled quotes.
  const records = [];
  let record = [], field = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
      else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"' && field === "") quoted = true;
    else if (c === delimiter) { record.push(field); field = ""; }
    else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      record.push(field); records.push(record); record = []; field = "";
    } else field += c;
  }
  if (field !== "" || record.length) { record.push(field); records.push(record); }
  return records;
}

// The post's text: "review" (this project's files) or "content" (MindSpider/MediaCrawler's); a time column, if there
// is one, gives the chart of sentiment by day.
const TEXT_COLUMNS = ["review", "content"];
const TIME_COLUMNS = ["create_time", "create_date_time", "publish_time"];
const firstOf = (names, has) => names.find(has);

function postsFromTable(text, delimiter, name) {
  const [header, ...records] = parseDelimited(text, delimiter);
  if (!header) throw new PageError(`${name} is empty: expected a header row with a "review" column.`);
  const review = header.indexOf(firstOf(TEXT_COLUMNS, (c) => header.includes(c))), id = header.indexOf("id");
  const time = header.indexOf(firstOf(TIME_COLUMNS, (c) => header.includes(c)));
  if (review < 0) throw new PageError(`${name} has no "review" column (its header is: ${header.join(", ")}).`);
  return records.filter((r) => !(r.length === 1 && r[0] === "")).map((r) => ({
    id: id >= 0 ? r[id] || "" : "", text: r[review] || "", day: time >= 0 ? dayOf(r[time]) : null }));
}

// The day (Beijing time, as weibo-sentiment-trend reads epoch times by default) of a time value: seconds or
// milliseconds since the epoch, or a "2026-11-01 08:00:00" text as written.
function dayOf(value) {
  const text = String(value ?? "").trim();
  if (!text) return null;
  if (/^\d+(\.\d+)?$/.test(text)) {
    const number = Number(text), ms = number > 1e11 ? number : number * 1000;
    return new Date(ms + 8 * 3600e3).toISOString().slice(0, 10);
  }
  const match = text.match(/^(\d{4})[-/](\d{1,2})[-/](\d{1,2})/);
  return match ? `${match[1]}-${match[2].padStart(2, "0")}-${match[3].padStart(2, "0")}` : null;
}

function postsFromJsonl(text, name) {
  return text.split(/\r?\n/).map((line, i) => [line, i + 1]).filter(([line]) => line.trim()).map(([line, number]) => {
    let record;
    try { record = JSON.parse(line); } catch { throw new PageError(`${name} line ${number} is not valid JSON.`); }
    const field = record && typeof record === "object" ? firstOf(TEXT_COLUMNS, (c) => typeof record[c] === "string") : null;
    if (!field) throw new PageError(`${name} line ${number} has no "review" text.`);
    const time = firstOf(TIME_COLUMNS, (c) => record[c] !== undefined && record[c] !== null);
    return { id: record.id === undefined ? "" : String(record.id), text: record[field], day: time ? dayOf(record[time]) : null };
  });
}

async function postsFromFile(file) {
  const kind = (file.name.match(/\.([a-z]+)$/i) || [])[1]?.toLowerCase();
  if (!["csv", "tsv", "jsonl", "txt"].includes(kind))
    throw new PageError(`${file.name}: unknown kind of file. Choose a .csv, .tsv, .jsonl or .txt file.`);
  if (file.size > settings.maxFileBytes)
    throw new PageError(`${file.name} is ${megabytes(file.size)}; this page reads files up to ${megabytes(settings.maxFileBytes)}. Split it, or use main.py predict for large files.`);
  let text;
  try { text = new TextDecoder("utf-8", { fatal: true }).decode(await file.arrayBuffer()); }
  catch { throw new PageError(`${file.name} is not UTF-8 text; save it as UTF-8.`); }
  text = text.replace(/^\uFEFF/, "");
  if (kind === "txt") return postsFromText(text);
  if (kind === "jsonl") return postsFromJsonl(text, file.name);
  return postsFromTable(text, kind === "csv" ? "," : "\t", file.name);
}

const megabytes = (bytes) => `${(bytes / 1e6).toFixed(1)} MB`;

// ---- asking the API -----------------------------------------------------------------------------------------------
function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || $("api-key").value.trim();
}

async function label(texts) {
  const headers = { "Content-Type": "application/json" };
  if (apiKey()) headers["X-API-Key"] = apiKey();
  let response;
  try {
    response = await fetch(settings.apiPath, { method: "POST", headers, body: JSON.stringify({ texts }) });
  } catch {
    throw new PageError("The server cannot be reached: is it still running? Start it again and reload this page.");
  }
  if (response.status === 401) {
    sessionStorage.removeItem(KEY_STORAGE);
    $("key-form").hidden = false;
    throw new PageError("The server did not accept the API key: type the right key and analyse again.");
  }
  let body = null;
  try { body = await response.json(); } catch { /* reported below */ }
  if (!response.ok) {
    const detail = body && body.detail ? `: ${typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)}` : "";
    throw new PageError(`The server refused the request (HTTP ${response.status})${detail}.`);
  }
  if (apiKey()) sessionStorage.setItem(KEY_STORAGE, apiKey());
  return body;
}

// The server's summary of each request (summarize() of the Python API), added up over the requests: the page counts
// nothing itself but the posts without text, which it never sends.
function addSummaries(total, summary) {
  for (const [key, value] of Object.entries(summary)) {
    if (Number.isInteger(value) && !key.endsWith("_share")) total[key] = (total[key] || 0) + value;
  }
  return total;
}

async function analyse() {
  clearError();
  const button = $("analyse");
  try {
    if (settings.keyRequired && !apiKey()) {
      $("key-form").hidden = false;
      $("api-key").focus();
      throw new PageError("This server asks for an API key: type it above, then analyse.");
    }
    const file = $("file").files[0];
    const posts = file ? await postsFromFile(file) : postsFromText($("posts").value);
    if (!posts.length) throw new PageError("Nothing to analyse: paste posts (one per line) or choose a file.");
    button.disabled = true;
    summary = {};
    rows = posts.map((post, position) => ({ position, id: post.id, text: post.text, day: post.day || null, truncated: post.text.length > settings.maxChars }));
    const labelled = rows.filter((row) => row.text.trim());
    const progress = $("progress");
    progress.hidden = false;
    progress.max = labelled.length;
    progress.value = 0;
    for (let start = 0; start < labelled.length; start += settings.maxTexts) {
      const chunk = labelled.slice(start, start + settings.maxTexts);
      // The model reads its first 128 tokens: cutting a longer post to max_chars changes nothing it reads.
      const { results, summary: chunkSummary } = await label(chunk.map((row) => row.text.slice(0, settings.maxChars)));
      chunk.forEach((row, i) => Object.assign(row, results[i], { truncated: row.truncated || results[i].truncated }));
      addSummaries(summary, chunkSummary);
      progress.value = Math.min(start + chunk.length, labelled.length);
      $("status").textContent = `${progress.value} of ${labelled.length} posts labelled`;
    }
    const probabilities = Object.fromEntries(probabilityColumns().map((column) => [column, null]));
    rows.filter((row) => !row.text.trim()).forEach((row) => Object.assign(row, { sentiment: "empty", label: null, confidence: null, ...probabilities, emoticons: "" }));
    $("status").textContent = `${labelled.length} posts labelled` + (labelled.length < rows.length ? `, ${rows.length - labelled.length} without text` : "");
    render();
  } catch (error) {
    showError(error instanceof PageError ? error.message : `Something went wrong: ${error.message}`);
  } finally {
    button.disabled = false;
    $("progress").hidden = true;
  }
}

// ---- showing the results ------------------------------------------------------------------------------------------
function render() {
  renderSummary();
  renderTable();
  $("summary").hidden = false;
  $("table-section").hidden = false;
}

function renderSummary() {
  // neutral: a three-class model's own, or, for a two-class model, posts inside the server's neutral band (model.neutral_band)
  const positive = summary.positive || 0, negative = summary.negative || 0, neutral = summary.neutral || 0;
  const classified = positive + negative + neutral, empty = rows.length - classified;
  const counts = document.querySelector("#summary .counts");
  Object.assign(counts.dataset, { positive, negative, neutral, empty, total: rows.length });
  const share = classified ? positive / classified : 0;
  counts.innerHTML = "";
  counts.append(`${rows.length} posts: `, span("positive", `${positive} positive`), ", ",
    ...(neutral ? [span("neutral", `${neutral} neutral`), ", "] : []), span("negative", `${negative} negative`),
    empty ? `, ${empty} without text` : "", ` · positive share ${(100 * share).toFixed(1)} %`);
  const split = $("split");
  split.innerHTML = "";
  split.setAttribute("aria-label", `${positive} positive, ${neutral ? `${neutral} neutral, ` : ""}${negative} negative`);
  for (const [name, count] of [["positive", positive], ["neutral", neutral], ["negative", negative]]) {
    if (!count) continue;
    const part = span(name, `${name} ${(100 * count / classified).toFixed(0)} %`);
    part.style.flex = String(count);
    split.append(part);
  }
  drawHistogram(rows.filter((r) => r.confidence !== null).map((r) => r.confidence), threeClass() ? 1 / 3 : 0.5);
  drawTrend();
}

// Shares of negative and positive posts per day (when the input has a time column), above the posts per day: the
// chart weibo-sentiment-trend draws, for the posts on this page.
function drawTrend() {
  const figure = $("trend-figure"), svg = $("trend");
  const byDay = new Map();
  for (const row of rows) {
    if (!row.day || !["positive", "negative", "neutral"].includes(row.sentiment)) continue;
    const counts = byDay.get(row.day) || { positive: 0, negative: 0, neutral: 0 };
    counts[row.sentiment] += 1;
    byDay.set(row.day, counts);
  }
  figure.hidden = byDay.size === 0;
  svg.innerHTML = "";
  if (!byDay.size) return;
  const days = [...byDay.keys()].sort(), width = 640, top = 10, shareHeight = 120, barTop = 150, barHeight = 40, left = 34;
  const step = days.length > 1 ? (width - left - 10) / (days.length - 1) : 0;
  const x = (i) => left + (days.length > 1 ? i * step : (width - left) / 2);
  const most = Math.max(...days.map((d) => Object.values(byDay.get(d)).reduce((a, b) => a + b, 0)));
  const element = (name, attributes) => {
    const node = document.createElementNS("http://www.w3.org/2000/svg", name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
    return node;
  };
  for (const share of [0, 50, 100]) {
    const y = top + shareHeight * (1 - share / 100);
    svg.append(element("line", { x1: left, x2: width - 10, y1: y, y2: y, class: "grid" }));
    const label = element("text", { x: left - 4, y: y + 3, "text-anchor": "end", class: "axis" });
    label.textContent = `${share}%`;
    svg.append(label);
  }
  for (const sentiment of ["negative", "positive"]) {
    const points = days.map((day, i) => {
      const c = byDay.get(day), total = c.positive + c.negative + c.neutral;
      return `${x(i).toFixed(1)},${(top + shareHeight * (1 - c[sentiment] / total)).toFixed(1)}`;
    });
    svg.append(element("polyline", { points: points.join(" "), class: `trend-${sentiment}`, "data-days": days.length }));
  }
  days.forEach((day, i) => {
    const c = byDay.get(day), total = c.positive + c.negative + c.neutral, height = barHeight * total / most;
    const bar = element("rect", { x: x(i) - 3, y: barTop + barHeight - height, width: 6, height, class: "trend-posts" });
    const title = element("title", {});
    title.textContent = `${day}: ${total} posts, ${c.negative} negative, ${c.positive} positive` + (c.neutral ? `, ${c.neutral} neutral` : "");
    bar.append(title);
    svg.append(bar);
  });
  for (const i of new Set([0, days.length - 1])) {
    const label = element("text", { x: x(i), y: barTop + barHeight + 12, "text-anchor": i ? "end" : "start", class: "axis" });
    label.textContent = days[i];
    svg.append(label);
  }
  svg.setAttribute("aria-label", `Share of negative and positive posts on ${days.length} days, from ${days[0]} to ${days[days.length - 1]}`);
}

// A two-class model's confidence lies in [0.5, 1], a three-class model's in [1/3, 1].
function drawHistogram(values, low) {
  const svg = $("histogram"), bins = 10, width = 300, height = 110, left = 20;
  const tick = (value) => (Number.isInteger(value * 100) ? String(value) : value.toFixed(2));
  const counts = new Array(bins).fill(0);
  values.forEach((v) => { counts[Math.min(bins - 1, Math.max(0, Math.floor((v - low) / (1 - low) * bins)))] += 1; });
  const most = Math.max(1, ...counts);
  const parts = counts.map((count, i) => {
    const barHeight = (height - 10) * count / most, x = left + i * (width - left) / bins;
    return `<rect x="${x + 1}" y="${height - barHeight}" width="${(width - left) / bins - 2}" height="${barHeight}"><title>${count} posts</title></rect>`;
  });
  parts.push(`<text x="${left}" y="${height + 14}">${tick(low)}</text><text x="${(left + width) / 2 - 8}" y="${height + 14}">${tick((low + 1) / 2)}</text>`,
             `<text x="${width - 10}" y="${height + 14}">1.0</text><text x="0" y="10">${most}</text>`);
  svg.innerHTML = parts.join("");
  svg.setAttribute("aria-label", `confidence of ${values.length} posts, 10 bins from ${tick(low)} to 1.0: ${counts.join(", ")}`);
}

function renderTable() {
  const order = $("sort").value, filter = $("filter").value;
  const shown = [...rows];
  if (order !== "input") {
    const sign = order === "confidence-desc" ? -1 : 1;
    shown.sort((a, b) => sign * ((a.confidence ?? -1) - (b.confidence ?? -1)) || a.position - b.position);
  }
  const body = document.querySelector("#results tbody");
  body.replaceChildren(...shown.map((row) => {
    const tr = document.createElement("tr");
    tr.dataset.label = row.label === null || row.label === undefined ? "" : String(row.label);
    tr.hidden = filter !== "all" && row.sentiment !== filter;
    const text = cell("", "text");
    text.append(span("post", row.text));
    if (row.truncated) text.append(mark("truncated", "longer than the model reads: labelled from its beginning"));
    const confidence = document.createElement("td");
    if (row.confidence !== null) {
      const bar = document.createElement("span");
      bar.className = "bar";
      const fill = document.createElement("span");
      fill.style.width = `${(100 * row.confidence).toFixed(1)}%`; // through the CSSOM: allowed by the page's CSP
      bar.append(fill);
      confidence.append(bar, row.confidence.toFixed(3));
    }
    const sentiment = cell(row.sentiment, `sentiment-${row.sentiment}`);
    tr.append(cell(String(row.position + 1), "number"), text, sentiment, confidence, cell(row.emoticons || ""));
    return tr;
  }));
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function span(className, text) {
  return Object.assign(document.createElement("span"), { className, textContent: text });
}

function mark(text, title) {
  return Object.assign(document.createElement("span"), { className: "mark", textContent: text, title });
}

// A three-class model (model.num_labels 3) answers every class's probability; a two-class model, prob_positive.
const threeClass = () => rows.some((row) => row.prob_neutral !== undefined);
const probabilityColumns = () => (threeClass() ? ["prob_negative", "prob_neutral", "prob_positive"] : ["prob_positive"]);

function downloadCsv() {
  const columns = ["id", "review", "label", "sentiment", "confidence", ...probabilityColumns(), "emoticons", "truncated"];
  const quote = (value) => {
    const text = value === null || value === undefined ? "" : String(value);
    return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  };
  const lines = [columns.join(","), ...rows.map((r) => columns.map((column) => (column === "review" ? r.text : r[column])).map(quote).join(","))];
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob(["\uFEFF" + lines.join("\r\n") + "\r\n"], { type: "text/csv;charset=utf-8" }));
  link.download = "predictions.csv";
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

function showError(message) {
  const error = $("error");
  error.textContent = message;
  error.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// ---- wiring -------------------------------------------------------------------------------------------------------
$("analyse").addEventListener("click", analyse);
$("posts").addEventListener("keydown", (event) => { if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) analyse(); });
$("key-form").addEventListener("submit", (event) => { event.preventDefault(); analyse(); });
$("clear").addEventListener("click", () => {
  $("posts").value = "";
  $("file").value = "";
  rows = [];
  clearError();
  $("status").textContent = "";
  $("summary").hidden = $("table-section").hidden = true;
});
$("filter").addEventListener("change", renderTable);
$("sort").addEventListener("change", renderTable);
$("download").addEventListener("click", downloadCsv);
if (settings.keyRequired && !sessionStorage.getItem(KEY_STORAGE)) $("key-form").hidden = false;
