// convarith explorer: reads the controls, asks the server, draws what it says.
// Every size, padding and footprint comes from the JSON API; this file only
// lays out rectangles and text.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const SVG_NS = "http://www.w3.org/2000/svg";
  const AXIS_NAMES = { 1: ["length"], 2: ["height", "width"], 3: ["depth", "height", "width"] };
  // where a cell of a grid is drawn: [row, column] (1-D: one row; 3-D: its depth slice's row and column)
  const rowCol = (pos) => (pos.length === 1 ? [0, pos[0]] : pos.slice(-2));
  // a cell of the grid takes the first of these kinds any of its axes has (as convarith.viz.frames does)
  const CELL_ORDER = ["beyond", "padding", "inserted", "copy", "dropped", "skipped"];
  const UNREAD = new Set(["dropped", "skipped"]);

  // ------------------------------------------------------------------ state

  const defaults = {
    rank: 2, input: [7, 7, 7], kernel: [3, 3, 3], stride: [2, 2, 2], dilation: [1, 1, 1],
    padding: "same", pads: [[1, 1], [1, 1], [1, 1]], mode: "zeros", inCh: 1, filters: 1, groups: 1,
    transposed: false, op: [null, null, null], depth: 0, pool: "", ceil: false, countPad: false, convention: "",
    frame: 0, view: "direct", look: "slices", tab: "stack", port: "keras", imageKernel: "edge", numbers: "1 0 -1; 2 0 -2; 1 0 -1",
    layers: [{ kind: "conv", k: 3, s: 1, d: 1, p: "same" }, { kind: "conv", k: 3, s: 2, d: 1, p: "same" }],
    cell: null,
  };
  let state = JSON.parse(JSON.stringify(defaults));
  let geometry = null;   // last /api/geometry answer
  let volume = null;     // last /api/volume answer (the oblique 3-D view), or null
  let outputRects = [];  // output <rect>s in row-major order: frame i is outputRects[i]
  let frameRects = [];   // what the frames step through: output cells, or input cells (scatter view)
  const scattering = () => state.transposed && state.view === "scatter";
  // 3-D: the whole volume seen at an angle instead of one depth slice at a time
  const oblique = () => state.rank === 3 && state.look === "oblique" && !scattering();
  let inputRects = new Map();  // "p0,p1" -> rect
  let outputByKey = new Map();  // "o0,o1" -> rect
  let playing = null;
  let requestNumber = 0;
  const latest = { stack: 0, code: 0, image: 0, solve: 0, volume: 0 };  // answers to older requests are dropped
  let uploadedImage = null;
  let stackDrawn = "";  // the /api/stack request whose answer is drawn (a control of the grid alone leaves it)
  let stackAnswer = null;  // that answer, drawn again to the new width when the window is resized

  // ------------------------------------------------------------------ URL

  const joinAxes = (v) => v.slice(0, state.rank).join("x");
  // A whole number stays a number; anything else ("2.5", "1e3", "abc") is kept as typed,
  // so the server refuses it by name instead of the page rounding it into something else.
  const strictInt = (text) => {
    const t = String(text).trim();
    if (t === "") return NaN;
    return /^-?\d+$/.test(t) ? parseInt(t, 10) : t;
  };
  const splitAxes = (text) => {
    const parts = String(text).split("x").map(strictInt);
    return parts.length === 1 ? [parts[0], parts[0], parts[0]] : parts.length === 2 ? [...parts, parts[1]] : parts;
  };
  let urlProblems = [];  // what a shared link asked for that the page cannot show

  function writeURL() {
    const q = new URLSearchParams();
    q.set("in", joinAxes(state.input));
    q.set("k", joinAxes(state.kernel));
    q.set("s", joinAxes(state.stride));
    q.set("d", joinAxes(state.dilation));
    q.set("p", state.padding);
    if (state.padding === "explicit") q.set("pads", state.pads.slice(0, state.rank).map((p) => p.join(",")).join("x"));
    if (state.mode !== "zeros") q.set("pm", state.mode);
    if (state.inCh !== 1) q.set("c", state.inCh);
    if (state.filters !== 1) q.set("f", state.filters);
    if (state.groups !== 1) q.set("g", state.groups);
    if (state.transposed) { q.set("t", "1"); if (hasOutputPadding()) q.set("op", joinAxes(state.op)); }
    if (state.pool) q.set("pool", state.pool);
    if (state.pool && state.ceil) q.set("ceil", "1");
    if (state.pool && state.countPad) q.set("cip", "1");
    if (state.convention) q.set("conv", state.convention);
    if (state.transposed && state.view === "scatter") q.set("view", "scatter");
    if (state.frame) q.set("frame", state.frame);
    if (state.rank === 3 && state.depth) q.set("z", state.depth);
    if (state.rank === 3 && state.look === "oblique") q.set("look", "oblique");
    q.set("tab", state.tab);
    if (state.tab === "code") q.set("port", state.port);
    if (state.tab === "image") { q.set("ik", state.imageKernel); if (state.imageKernel === "custom") q.set("nums", state.numbers); }
    q.set("layers", state.layers.map((l) => [l.kind, l.k, l.s, l.d, l.p].join(",")).join(";"));
    if (state.cell) q.set("cell", state.cell.join("x"));
    const search = "?" + q.toString();
    if (location.search !== search) history.replaceState(null, "", search);  // not free: only when it changed
  }

  function readURL() {
    const q = new URLSearchParams(location.search);
    if (![...q.keys()].length) return;
    const s = state;
    urlProblems = [];
    const axesOf = (name, fallback) => {
      const text = q.has(name) ? q.get(name) : fallback;
      const parts = splitAxes(text);
      if (parts.length > 3) {
        urlProblems.push(`${name}=${text} has ${parts.length} axes; the explorer draws 1-D, 2-D and 3-D convolutions`);
        return splitAxes(fallback);
      }
      return parts;
    };
    if (q.has("in")) {
      s.input = axesOf("in", "7x7");
      const count = String(q.get("in")).split("x").length;
      s.rank = count === 1 ? 1 : count === 3 ? 3 : 2;
      if (urlProblems.length) s.rank = 2;
    }
    if (s.rank === 1) s.input = [s.input[0], s.input[0], s.input[0]];
    s.kernel = axesOf("k", "3");
    s.stride = axesOf("s", "1");
    s.dilation = axesOf("d", "1");
    s.padding = q.get("p") || "valid";
    if (q.has("pads")) s.pads = q.get("pads").split("x").map((pair) => pair.split(",").map(strictInt));
    while (s.pads.length < 3) s.pads.push([...s.pads[s.pads.length - 1]]);
    s.mode = q.get("pm") || "zeros";
    s.inCh = strictInt(q.get("c") || "1");
    s.filters = strictInt(q.get("f") || "1");
    s.groups = strictInt(q.get("g") || "1");
    s.transposed = q.get("t") === "1";
    s.op = q.has("op") ? splitAxes(q.get("op")) : [null, null, null];
    s.depth = parseInt(q.get("z") || "0", 10) || 0;
    s.pool = q.get("pool") || "";
    s.ceil = q.get("ceil") === "1";
    s.countPad = q.get("cip") === "1";
    s.convention = q.get("conv") || "";
    s.frame = parseInt(q.get("frame") || "0", 10) || 0;
    s.view = q.get("view") === "scatter" ? "scatter" : "direct";
    s.look = q.get("look") === "oblique" ? "oblique" : "slices";
    s.tab = q.get("tab") || "stack";
    s.port = q.get("port") || "keras";
    s.imageKernel = q.get("ik") || "edge";
    if (q.has("nums")) s.numbers = q.get("nums");
    if (q.has("layers")) {
      s.layers = q.get("layers").split(";").filter(Boolean).map((text) => {
        const [kind, k, st, d, p] = text.split(",");
        return { kind, k: parseInt(k, 10), s: parseInt(st, 10), d: parseInt(d, 10), p };
      });
    }
    s.cell = q.has("cell") ? q.get("cell").split("x").map((t) => parseInt(t, 10)) : null;
  }

  // ------------------------------------------------------------------ controls <-> state

  // type=number inputs report "" for what they cannot parse: read the raw text where we can
  const num = (id) => strictInt($(id).value);

  function stateToControls() {
    const s = state;
    $("rank").value = String(s.rank);
    for (const a of [0, 1, 2]) {
      $("in-" + a).value = s.input[a]; $("k-" + a).value = s.kernel[a];
      $("s-" + a).value = s.stride[a]; $("d-" + a).value = s.dilation[a];
      $("op-" + a).value = s.op[a] === null || Number.isNaN(s.op[a]) ? "" : s.op[a];
      $(`p-${a}-lo`).value = s.pads[a][0]; $(`p-${a}-hi`).value = s.pads[a][1];
    }
    $("padding").value = s.padding; $("padding-mode").value = s.mode;
    $("in-ch").value = s.inCh; $("filters").value = s.filters; $("groups").value = s.groups;
    $("transposed").checked = s.transposed; $("pool").value = s.pool; $("view").value = s.view;
    $("ceil-mode").checked = s.ceil; $("count-pad").checked = s.countPad;
    $("image-kernel").value = s.imageKernel; $("numbers").value = s.numbers;
    document.querySelectorAll("[data-convention]").forEach((b) => b.classList.toggle("on", b.dataset.convention === s.convention));
    document.querySelectorAll("[data-port]").forEach((b) => b.classList.toggle("on", b.dataset.port === s.port));
    showTab(s.tab, false);
    syncVisibility();
  }

  function controlsToState() {
    const s = state;
    s.rank = num("rank");
    for (const a of [0, 1, 2]) {
      s.input[a] = num("in-" + a); s.kernel[a] = num("k-" + a);
      s.stride[a] = num("s-" + a); s.dilation[a] = num("d-" + a);
      s.op[a] = $("op-" + a).value.trim() === "" && !$("op-" + a).validity.badInput ? null : num("op-" + a);
      s.pads[a] = [num(`p-${a}-lo`), num(`p-${a}-hi`)];
    }
    s.padding = $("padding").value; s.mode = $("padding-mode").value;
    s.inCh = num("in-ch"); s.filters = num("filters"); s.groups = num("groups");
    s.transposed = $("transposed").checked; s.pool = $("pool").value; s.view = $("view").value;
    s.ceil = $("ceil-mode").checked; s.countPad = $("count-pad").checked;
    s.imageKernel = $("image-kernel").value; s.numbers = $("numbers").value;
    syncVisibility();
  }

  function syncVisibility() {
    const one = state.rank === 1, three = state.rank === 3;
    document.querySelectorAll(".ax1").forEach((el) => { el.hidden = one; });
    document.querySelectorAll(".ax2").forEach((el) => { el.hidden = !three; });
    document.body.classList.toggle("rank-3", three);
    const sides = { 1: ["left / right"], 2: ["top / bottom", "left / right"], 3: ["front / back", "top / bottom", "left / right"] }[state.rank] || [];
    sides.forEach((words, axis) => { document.querySelector(".ax-name-" + axis).textContent = words; });
    $("explicit").hidden = state.padding !== "explicit";
    $("op-row").hidden = !state.transposed;
    $("view-row").hidden = !state.transposed;
    document.querySelectorAll(".pool-only").forEach((el) => { el.hidden = !state.pool; });
    $("numbers-row").hidden = state.imageKernel !== "custom";
    document.querySelector(".zero-only").hidden = !state.transposed;
    document.querySelector(".copy-only").hidden = state.mode === "zeros";
    syncLook();
  }

  // 3-D: which view the picture shows (slices or oblique), and the controls that go with it
  function syncLook() {
    const on = oblique();
    document.querySelectorAll("[data-look]").forEach((b) => {
      const pressed = b.dataset.look === (on ? "oblique" : "slices");
      b.classList.toggle("on", pressed);
      b.setAttribute("aria-pressed", String(pressed));
    });
    $("look-oblique").disabled = scattering();
    $("look-oblique").title = scattering() ? "the oblique view shows the direct view (one output voxel per step)"
      : "the whole volume, seen at an angle (key O)";
    document.querySelector("#depth-row .slices-only").hidden = on;
    document.querySelector(".legend .volume-only").hidden = !on;
    $("grid").toggleAttribute("hidden", on);  // an <svg> has no .hidden property
    $("volume").toggleAttribute("hidden", !on);
  }

  function setLook(look) {
    if (state.rank !== 3 || state.look === look) return;
    state.look = look;
    syncLook();
    writeURL();
    if (oblique()) refreshVolume(); else if (geometry) { renderGrid(); setFrame(state.frame); }
  }

  // What the API is sent: the controls as they are, unchecked here. (NaN -> null, so the server names the field.)
  function settings() {
    const s = state, r = s.rank;
    const ax = (v) => v.slice(0, r).map(nanNull);
    const body = {
      rank: r, input_size: ax(s.input), kernel_size: ax(s.kernel), strides: ax(s.stride),
      dilation: ax(s.dilation), padding_mode: s.mode, in_channels: nanNull(s.inCh),
      filters: nanNull(s.filters), groups: nanNull(s.groups), transposed: s.transposed,
      pool: s.pool || null, ceil_mode: s.ceil, count_include_pad: s.countPad,
      convention: s.convention || null,
    };
    body.padding = s.padding === "explicit" ? s.pads.slice(0, r).map((p) => p.map(nanNull)) : s.padding;
    if (s.transposed && hasOutputPadding()) body.output_padding = ax(s.op);
    return body;
  }
  const hasOutputPadding = () => state.op.slice(0, state.rank).some((v) => v !== null);
  const nanNull = (n) => (typeof n === "number" && Number.isNaN(n) ? null : n);

  // ------------------------------------------------------------------ API

  async function post(path, body) {
    let response;
    try {
      response = await fetch(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    } catch (error) {
      return { ok: false, status: 0, error: "the server cannot be reached (" + error.message + ")" };
    }
    let data = null;
    try { data = await response.json(); } catch (error) { data = null; }
    if (!response.ok) {
      const message = data && data.error ? data.error.message : "HTTP " + response.status;
      return { ok: false, status: response.status, error: message };
    }
    return { ok: true, status: response.status, data };
  }

  function showError(id, message) {
    const el = $(id);
    el.hidden = !message;
    el.textContent = message || "";
  }

  // ------------------------------------------------------------------ main update

  let timer = null;
  let scheduled = false;  // an update is waiting for its timer: the page is not settled yet
  function changed() {
    controlsToState();
    state.frame = 0;
    schedule();
  }
  function schedule() {
    document.body.dataset.busy = "1";  // until the answer to the latest settings is drawn
    clearTimeout(timer);
    scheduled = true;
    timer = setTimeout(update, 16);  // coalesce a burst of keystrokes, no more
  }

  async function update() {
    scheduled = false;
    writeURL();
    const mine = ++requestNumber;
    document.body.dataset.busy = "1";
    const room = gridRoom();
    const [answer, volumeAnswer] = await Promise.all([
      post("/api/geometry", settings()), oblique() ? post("/api/volume", { ...settings(), room }) : null]);
    if (mine !== requestNumber) return;
    if (!answer.ok) {
      showError("error", answer.error);
      $("stage").classList.add("stale");
      if (!scheduled) {
        document.body.dataset.busy = "";
        document.body.dataset.ready = String(mine);
      }
      return;
    }
    showError("error", urlProblems.join("; "));
    $("stage").classList.remove("stale");
    $("cli").textContent = animateCommand();
    geometry = answer.data;
    renderSummary();
    renderGrid(room);
    syncLook();
    renderVolume(volumeAnswer);
    renderKernel();
    renderDerivation();
    setFrame(Math.min(state.frame, geometry.frames - 1));
    document.body.dataset.drawn = String(mine);  // the picture is up to date (the tabs follow)
    await Promise.all([updateStack(), updateTab()]);
    if (mine === requestNumber && !scheduled) {
      document.body.dataset.busy = "";
      document.body.dataset.ready = String(mine);
    }
  }

  // ------------------------------------------------------------------ summary & derivation

  const pair = (p) => `(${p[0]}, ${p[1]})`;
  const times = (v) => v.join(" × ");

  function renderSummary() {
    const g = geometry, names = AXIS_NAMES[g.input_size.length] || g.input_size.map((_, i) => "axis " + i);
    $("input-size").textContent = times(g.input_size);
    $("output-size").textContent = times(g.output_size);
    $("padding-split").textContent = g.padding.map((p, i) => `${names[i]} ${pair(p)}`).join(" · ");
    $("crop-row").hidden = g.kind !== "conv_transpose";
    $("crop").textContent = g.crop.map((p, i) => `${names[i]} ${pair(p)}`).join(" · ");
    const dropped = g.dropped.map((d, i) => (d ? `${names[i]} ${d}` : null)).filter(Boolean);
    $("dropped").textContent = dropped.length ? dropped.join(" · ") : "none";
    $("dropped").classList.toggle("warn", dropped.length > 0);
    let shapes = `tensor ${JSON.stringify(g.input_shape)} → ${JSON.stringify(g.output_shape)}`;
    if (g.kernel_shape) {
      const torchLayout = ["torch", "onnx"].includes(state.convention);
      shapes += ` · kernel ${JSON.stringify(g.kernel_shape[torchLayout ? "torch" : "keras"])} (${torchLayout ? "PyTorch" : "Keras"} layout)`;
    }
    if (g.groups && g.groups > 1) shapes += ` · ${g.groups} groups`;
    $("shapes").textContent = shapes;
    drawGroups(g.channel_groups);
    const c = g.convention, note = $("convention-note");
    if (!c) { note.hidden = true; return; }
    note.hidden = false;
    note.className = "convention-note " + (c.accepted === true ? "ok" : c.accepted === false ? "bad" : "unknown");
    note.textContent = c.accepted === true ? `${c.framework} accepts these settings.` : c.error;
  }

  const GROUP_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"];

  // Input channels -> output channels, one colour per group (only for several channels).
  function drawGroups(groups) {
    const svg = $("group-diagram");
    svg.replaceChildren();
    const count = groups ? groups.inputs.flat().length + groups.outputs.flat().length : 0;
    const hide = !groups || count <= 2 || count > 96;
    svg.toggleAttribute("hidden", hide);  // an SVG element has no .hidden property
    if (hide) return;
    const box = 14, gap = 3, row = (n) => n * (box + gap);
    const width = 120 + Math.max(row(groups.inputs.flat().length), row(groups.outputs.flat().length));
    svg.setAttribute("viewBox", `0 0 ${width} 66`);
    svg.setAttribute("width", width); svg.setAttribute("height", 66);
    el("text", { x: 0, y: 14, class: "small-label" }, svg).textContent = "in channels";
    el("text", { x: 0, y: 60, class: "small-label" }, svg).textContent = "out channels";
    const place = (list, y) => list.map((channels, g) => channels.map((c) => {
      const x = 110 + row(c);
      el("rect", { x, y, width: box, height: box, rx: 2, fill: GROUP_COLOURS[g % GROUP_COLOURS.length], class: "channel" }, svg);
      return x + box / 2;
    }));
    const ins = place(groups.inputs, 2), outs = place(groups.outputs, 48);
    ins.forEach((xs, g) => {
      for (const x0 of xs) for (const x1 of outs[g]) {
        el("line", { x1: x0, y1: 17, x2: x1, y2: 47, stroke: GROUP_COLOURS[g % GROUP_COLOURS.length], "stroke-opacity": 0.45 }, svg);
      }
    });
    el("text", { x: 0, y: 37, class: "small-label muted-label" }, svg).textContent = `${groups.inputs.length} group${groups.inputs.length > 1 ? "s" : ""}`;
  }

  function renderDerivation() {
    const e = geometry.explain;
    $("summary-text").textContent = e.summary;
    const box = $("formula");
    box.replaceChildren();
    const uniform = e.axes.every((a) => JSON.stringify(a.steps) === JSON.stringify(e.axes[0].steps));
    for (const a of uniform ? e.axes.slice(0, 1) : e.axes) {
      const block = document.createElement("div");
      block.className = "axis-derivation";
      const title = document.createElement("div");
      title.className = "axis-title";
      title.textContent = (uniform && e.axes.length > 1 ? "every axis" : a.name) + ":  " + a.formula;
      block.appendChild(title);
      for (const step of a.steps) {
        const line = document.createElement("code");
        line.textContent = step;
        block.appendChild(line);
      }
      box.appendChild(block);
    }
    const notes = $("notes");
    notes.replaceChildren();
    for (const n of e.notes) {
      const li = document.createElement("li");
      li.textContent = n;
      notes.appendChild(li);
    }
  }

  // ------------------------------------------------------------------ grid drawing

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  // Cartesian product of per-axis lists (the API gives the footprint per axis).
  function product(lists) {
    return lists.reduce((acc, list) => acc.flatMap((a) => list.map((b) => [...a, b])), [[]]);
  }

  function gridCells(axes) {
    // one entry per padded-grid cell: position, kind and the input cell it holds
    const rank = axes.length;
    return product(axes.map((a) => a.grid.map((c, i) => ({ ...c, i })))).map((combo) => {
      const kinds = combo.map((c) => c.kind);
      let kind = "input";
      for (const k of CELL_ORDER) if (kinds.includes(k)) { kind = k; break; }
      const sources = combo.map((c) => c.source);
      const source = sources.some((v) => v === null) ? null : sources;
      return { pos: combo.map((c) => c.i), kind, source, rank };
    });
  }

  // the grid's room, read before the page is written (a read after a write forces a layout)
  const gridRoom = () => Math.max(200, ($("grid").parentElement.clientWidth || $("stage").clientWidth) - 4);

  function renderGrid(available = gridRoom()) {
    const g = geometry, svg = $("grid");
    svg.replaceChildren();
    stopPlaying();
    const rank = g.axes.length;
    const padded = scattering() ? g.input_size.slice() : g.axes.map((a) => a.grid.length);
    const out = g.output_size;
    const [rows, cols] = rowCol(padded.map((n) => n - 1)).map((n) => n + 1);
    const [oRows, oCols] = rowCol(out.map((n) => n - 1)).map((n) => n + 1);
    const gap = 56;
    const tall = Math.floor(440 / Math.max(rows, oRows));
    const inFirst = `input ${times(g.input_size)}`;
    // a ceil-mode pooling window may reach past the padded input: those cells are drawn too
    const overhang = !scattering() && padded.some((n, i) => n > g.padded_size[i]);
    const grown = g.kind === "conv_transpose" ? "zeros inserted, padded"
      : [g.padding.some((p) => p[0] || p[1]) && "padded", overhang && "the last window overhangs"].filter(Boolean).join(", ");
    const inSecond = scattering() ? "(each cell scatters a patch)" : padded.join() !== g.input_size.join()
      ? `→ ${times(padded)} (${grown})` : "";
    // 3-D: the labels name the depth slice shown (room kept for the widest number)
    const sliced = rank === 3 && !scattering();
    const zIn = sliced ? ` · slice ${padded[0] - 1}` : "", zOut = sliced ? ` · slice ${out[0] - 1}` : "";
    const inLabelText = (inSecond ? `${inFirst}  ${inSecond}` : inFirst) + zIn;
    const outText = `output ${times(out)}` + zOut;
    const labelWidth = (text) => text.length * 8.2;  // 14px bold system font, generous
    // Side by side when both grids and their labels fit; on a narrow screen the output
    // goes under the input rather than shrinking both. A label longer than its grid goes
    // on two lines rather than under the output's label.
    const layout = (stacked) => {
      const cell = Math.max(stacked ? 5 : 6, Math.min(40, tall, stacked ? Math.floor((available - 10) / Math.max(cols, oCols))
        : Math.floor((available - gap - 10) / (cols + oCols))));
      const room = stacked ? available : cols * cell + gap - 12;
      const twoLines = labelWidth(inLabelText) > room;
      const inWidth = labelWidth(twoLines ? (inSecond || inFirst) + zIn : inLabelText);
      const outX = stacked ? 0 : Math.max(cols * cell + gap, inWidth + 24);
      const width = Math.max(outX + Math.max(oCols * cell, labelWidth(outText)) + 10, inWidth, cols * cell + 2);
      return { cell, twoLines, outX, width, stacked };
    };
    let plan = layout(false);
    if (plan.cell < 14 || plan.width > available) {
      const other = layout(true);
      // the narrower where neither fits: a figure scrolled sideways hides the output's label
      if (other.cell > plan.cell || other.width <= available || other.width < plan.width) plan = other;
    } else if (rows === 1 && oRows === 1 && plan.cell < 26) {
      // 1-D: two strips one above the other cost little height, and cells of 26 px carry their labels
      const other = layout(true);
      if (other.cell >= 26 && other.width <= available) plan = other;
    }
    const { cell, twoLines, outX, width, stacked } = plan;
    const top = twoLines ? 52 : 34;
    const outTop = stacked ? top + rows * cell + 40 : top;
    const height = outTop + (stacked ? oRows : Math.max(rows, oRows)) * cell + 10;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svg.style.setProperty("--cell", cell + "px");

    const defs = el("defs", {}, svg);
    const hatch = el("pattern", { id: "hatch", width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" }, defs);
    el("rect", { width: 6, height: 6, fill: "#ffffff" }, hatch);
    el("line", { x1: 0, y1: 0, x2: 0, y2: 6, stroke: "#c9ced6", "stroke-width": 2 }, hatch);

    const inLabel = el("text", { x: 0, y: 20, class: "grid-label" }, svg);
    let inLast = inLabel;
    if (twoLines && inSecond) {
      el("tspan", { x: 0, dy: 0 }, inLabel).textContent = inFirst;
      inLast = el("tspan", { x: 0, dy: 18 }, inLabel);
      inLast.textContent = inSecond;
    } else {
      inLabel.textContent = inSecond ? `${inFirst}  ${inSecond}` : inFirst;
    }
    if (sliced) el("tspan", { class: "z-in" }, inLast).textContent = " · slice 0";
    const outLabel = el("text", { x: outX, y: outTop - 14, class: "grid-label output" }, svg);
    outLabel.textContent = `output ${times(out)}`;
    if (sliced) el("tspan", { class: "z-out" }, outLabel).textContent = " · slice 0";
    if (stacked) {
      el("text", { x: labelWidth(outText) + 16, y: outTop - 10, class: "grid-arrow" }, svg).textContent = "↓";
    } else {
      el("text", { x: cols * cell + gap / 2, y: top + Math.min(rows, oRows) * cell / 2 + 6, class: "grid-arrow", "text-anchor": "middle" }, svg).textContent = "→";
    }

    inputRects = new Map();
    const inputGroup = el("g", { class: "input-grid" }, svg);
    // The cells are written as one piece of markup (a 64 x 64 grid has thousands: one
    // parse is much faster than a createElement and 8 setAttribute calls per cell).
    // 3-D: one group per depth slice, drawn at the same place; one is shown at a time.
    const fill = (group, positions, attributes) => {
      const parts = [];
      let z = null;
      positions.forEach((pos, i) => {
        if (rank === 3 && pos[0] !== z) {
          if (z !== null) parts.push("</g>");
          z = pos[0];
          parts.push(`<g class="slice" data-z="${z}">`);
        }
        parts.push(`<rect ${attributes(pos, i)}/>`);
      });
      if (z !== null) parts.push("</g>");
      group.innerHTML = parts.join("");
      return [...group.getElementsByTagName("rect")];
    };
    // the oblique view draws the input itself: the hidden slices keep only the output cells the player steps
    const cells = oblique() ? [] : scattering()
      ? product(g.input_size.map((n) => [...Array(n).keys()])).map((pos) => ({ pos, kind: "input", source: pos }))
      : gridCells(g.axes);
    const firstPos = [], lastPos = [];
    const inRects = fill(inputGroup, cells.map((c) => c.pos), (pos, i) => {
      const [r, col] = rowCol(pos), c = cells[i];
      return `x="${col * cell + 0.5}" y="${top + r * cell + 0.5}" width="${cell - 1}" height="${cell - 1}" ` +
        `class="cell in k-${c.kind}" data-pos="${pos.join(",")}" data-src="${c.source ? c.source.join(",") : ""}" data-kind="${c.kind}"`;
    });
    document.querySelector(".legend .beyond-only").hidden = !g.axes.some((a) => a.grid.some((c) => c.kind === "beyond"));
    cells.forEach((c, i) => {
      inputRects.set(c.pos.join(","), inRects[i]);
      if (c.kind === "input" || UNREAD.has(c.kind)) {
        c.pos.forEach((p, a) => { firstPos[a] = Math.min(firstPos[a] ?? p, p); lastPos[a] = Math.max(lastPos[a] ?? p, p); });
      }
    });
    // the real input's outline, inside the padding
    if (firstPos.length) {
      const [r0, c0] = rowCol(firstPos);
      const [r1, c1] = rowCol(lastPos);
      el("rect", { x: c0 * cell, y: top + r0 * cell, width: (c1 - c0 + 1) * cell, height: (r1 - r0 + 1) * cell, class: "input-outline" }, svg);
    }

    outputRects = [];
    outputByKey = new Map();
    const outputGroup = el("g", { class: "output-grid" }, svg);
    const outCells = product(out.map((n) => [...Array(n).keys()]));
    outputRects = fill(outputGroup, outCells, (index, frame) => {
      const [r, col] = rowCol(index);
      return `x="${outX + col * cell + 0.5}" y="${outTop + r * cell + 0.5}" width="${cell - 1}" height="${cell - 1}" ` +
        `class="cell out" data-out="${index.join(",")}" data-frame="${frame}"`;
    });
    outCells.forEach((index, i) => outputByKey.set(index.join(","), outputRects[i]));
    el("g", { id: "labels" }, svg);
    frameRects = scattering() ? [...inputGroup.querySelectorAll("rect")] : outputRects;
    // one input and one output cell are in the Tab order (roving focus; arrows move it)
    rove(inputGroup.querySelector("rect.k-input") || inputGroup.querySelector("rect"));
    rove(outputRects[0]);
    const depth = $("depth");
    depth.max = String(rank === 3 ? padded[0] - 1 : 0);
    depth.setAttribute("aria-label", `input depth slice (0 to ${depth.max})`);
    const scrub = $("scrub");
    scrub.max = String(Math.max(0, frameRects.length - 1));
  }

  // The kernel as a grid of taps; a tap shows the input cell it multiplies in the current step.
  function renderKernel() {
    const svg = $("kernel"), g = geometry;
    svg.replaceChildren();
    const k = g.spec.kernel_size, rank = k.length;
    // 3-D: one depth slice of the kernel at a time, the one that multiplies the input slice shown
    const [depths, rows, cols] = rank === 3 ? k : [1, rank === 2 ? k[0] : 1, rank === 2 ? k[1] : k[0]];
    const size = Math.max(18, Math.min(30, Math.floor(120 / Math.max(rows, cols))));
    const show = !g.spec.pool && rows * cols <= 49;
    svg.toggleAttribute("hidden", !show);
    if (!show) return;
    const width = Math.max(cols * size + 2, rank === 3 ? 96 : 60), height = rows * size + (rank === 3 ? 32 : 18);
    const top = rank === 3 ? 30 : 16;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("width", width); svg.setAttribute("height", height);
    el("text", { x: 0, y: 11, class: "k-title" }, svg).textContent = "kernel";
    if (rank === 3) el("text", { x: 0, y: 24, class: "k-title k-none", display: "none" }, svg).textContent = "(slice not read)";
    for (let d = 0; d < depths; d++) {
      const group = rank === 3 ? el("g", { class: "k-slice", "data-kz": d, display: d ? "none" : "inline" }, svg) : svg;
      if (rank === 3) el("text", { x: 0, y: 24, class: "k-title" }, group).textContent = `depth ${d} of 0–${depths - 1}`;
      for (const pair of product([[...Array(rows).keys()], [...Array(cols).keys()]])) {
        const [r, c] = pair, tap = rank === 3 ? [d, r, c] : rank === 2 ? [r, c] : [c];
        const rect = el("rect", { x: c * size + 1, y: top + r * size, width: size - 2, height: size - 2, rx: 3,
          class: "k-tap", tabindex: 0, role: "button", "data-tap": tap.join(","),
          "aria-label": `weight w[${tap.join(",")}]` }, group);
        const text = el("text", { x: c * size + size / 2, y: top + r * size + size / 2 + 3, "text-anchor": "middle" }, group);
        text.textContent = size >= 26 ? tap.slice(-2).join(",") : "";
        const on = () => markTap(tap.join(","));
        rect.addEventListener("mouseenter", on); rect.addEventListener("focus", on); rect.addEventListener("click", on);
        rect.addEventListener("mouseleave", () => markTap(null)); rect.addEventListener("blur", () => markTap(null));
      }
    }
  }

  // 3-D: the kernel's depth slice that multiplies the input slice shown for output cell `index`
  function showKernelSlice(index) {
    const slices = document.querySelectorAll("#kernel .k-slice");
    if (!slices.length) return;
    const tap = tapsOf(index).find((t) => t.position[0] === state.depth);
    const kz = tap ? tap.kernel[0] : null;
    slices.forEach((s) => s.setAttribute("display", Number(s.dataset.kz) === kz ? "inline" : "none"));
    const none = document.querySelector("#kernel .k-none");
    if (none) none.setAttribute("display", kz === null ? "inline" : "none");
  }

  function markTap(key) {
    document.querySelectorAll("#grid .tap-hover, #volume .tap-hover, #kernel .on").forEach((n) => n.classList.remove("tap-hover", "on"));
    if (key === null || !outputRects.length || scattering()) return;
    const index = outputRects[state.frame].dataset.out.split(",").map(Number);
    const tap = tapsOf(index).find((t) => t.kernel.join(",") === key);
    const kernelRect = document.querySelector(`#kernel [data-tap="${key}"]`);
    if (kernelRect) kernelRect.classList.add("on");
    if (!tap) return;
    const voxel = document.querySelector(`#volume .voxel[data-pos="${tap.position.join(",")}"]`);
    if (voxel) voxel.classList.add("tap-hover");  // the oblique view: the voxel it multiplies
    const cell = inputRects.get(tap.position.join(","));
    if (cell) cell.classList.add("tap-hover");
    const box = $("cell-sum");
    box.replaceChildren();
    const b = document.createElement("b");
    b.textContent = `w[${key}] multiplies `;
    box.append(b, document.createTextNode(tap.source ? `x[${tap.source.join(",")}] for output[${index.join(",")}]`
      : `a zero (padding) for output[${index.join(",")}]`));
  }

  function tapsOf(index) {
    const g = geometry;
    return product(index.map((o, axis) => g.axes[axis].taps[o])).map((combo) => ({
      kernel: combo.map((t) => t.kernel[0]),
      position: combo.map((t) => t.position[0]),
      source: combo.some((t) => t.source === null) ? null : combo.map((t) => t.source[0]),
      in_padding: combo.some((t) => t.in_padding),
    }));
  }

  function clearMarks() {
    document.querySelectorAll("#grid .hl, #grid .hl-pad, #grid .current, #grid .feed, #grid .hovered, #grid .copy")
      .forEach((n) => n.classList.remove("hl", "hl-pad", "current", "feed", "hovered", "copy"));
    const labels = $("labels");
    if (labels) labels.replaceChildren();
  }

  function label(rect, text, dark) {
    const cell = parseFloat(rect.getAttribute("width")) + 1;
    if (cell < 26) return;  // below that a label would be unreadable (under 8 px)
    const slice = rect.parentNode;  // 3-D: only the depth slice shown gets labels
    if (slice.classList && slice.classList.contains("slice") && slice.getAttribute("display") === "none") return;
    const t = el("text", {
      x: parseFloat(rect.getAttribute("x")) + cell / 2 - 0.5, y: parseFloat(rect.getAttribute("y")) + cell / 2 + 3.5,
      class: "tap-label" + (dark ? " dark" : ""), "text-anchor": "middle", "font-size": Math.max(8, Math.min(11, cell / 3.2, 1.5 * cell / text.length)),
    }, $("labels"));
    t.textContent = text;
  }

  function showFootprint(index, current) {
    clearMarks();
    const rect = outputByKey.get(index.join(","));
    if (rect) rect.classList.add(current ? "current" : "hovered");
    const taps = tapsOf(index);
    for (const t of taps) {
      const cellRect = inputRects.get((scattering() ? t.source || [] : t.position).join(","));
      if (!cellRect) continue;
      cellRect.classList.add(t.source ? "hl" : "hl-pad");
      if (!geometry.spec.pool) label(cellRect, "w" + t.kernel.join(","), !t.source);
    }
    renderSum(index, taps);
  }

  function renderSum(index, taps) {
    const g = geometry;
    const term = (t) => (t.source ? `x[${t.source.join(",")}]` : "0");
    let text;
    if (g.spec.pool === "max") text = `max(${taps.filter((t) => t.source || !t.in_padding).map(term).join(", ")})`;
    else if (g.spec.pool === "avg") text = `mean(${taps.map(term).join(", ")})`;
    else text = taps.map((t) => `w[${t.kernel.join(",")}]·${term(t)}`).join(" + ");
    const box = $("cell-sum");
    box.replaceChildren();
    const b = document.createElement("b");
    b.textContent = `output[${index.join(",")}] = `;
    const code = document.createElement("code");
    code.textContent = text;
    box.append(b, code);
  }

  // Scatter view: the input cell adds x·w to each output cell its kernel-sized patch covers.
  function showScatter(source) {
    clearMarks();
    const key = source.join(",");
    for (const r of inputRects.values()) if (r.dataset.src === key) r.classList.add("hl");
    const feeds = product(source.map((i, axis) => geometry.axes[axis].feeds[i]));
    for (const combo of feeds) {
      const rect = outputByKey.get(combo.map((f) => f[0]).join(","));
      if (!rect) continue;
      rect.classList.add("current");
      label(rect, "w" + combo.map((f) => f[1]).join(","));
    }
    const box = $("cell-sum");
    box.replaceChildren();
    const b = document.createElement("b");
    b.textContent = `input[${key}] adds `;
    const code = document.createElement("code");
    code.textContent = feeds.length
      ? feeds.map((combo) => `x[${key}]·w[${combo.map((f) => f[1]).join(",")}] → output[${combo.map((f) => f[0]).join(",")}]`).join(", ")
      : "nothing: its whole patch is cropped away";
    box.append(b, code);
  }

  function hoverOutput(index) {
    if (playing) return;
    showFootprint(index, false);
  }

  function hoverInput(source) {
    if (playing || !source) return;
    clearMarks();
    const key = source.join(",");
    for (const r of inputRects.values()) {
      if (r.dataset.src === key) r.classList.add(r.dataset.kind === "copy" ? "copy" : "hovered");
    }
    const feeds = product(source.map((i, axis) => geometry.axes[axis].feeds[i]));
    for (const combo of feeds) {
      const out = combo.map((f) => f[0]);
      const rect = outputByKey.get(out.join(","));
      if (!rect) continue;
      rect.classList.add("feed");
      if (!geometry.spec.pool) label(rect, "w" + combo.map((f) => f[1]).join(","));
    }
    const box = $("cell-sum");
    box.replaceChildren();
    const b = document.createElement("b");
    b.textContent = `input[${key}] feeds `;
    const span = document.createElement("span");
    span.textContent = feeds.length ? `${feeds.length} output cell${feeds.length > 1 ? "s" : ""}` : "no output cell (dropped)";
    box.append(b, span);
  }

  // ---- keyboard access to every cell: roving focus inside each grid
  function cellKey(rect) { return rect.dataset.out !== undefined ? rect.dataset.out : rect.dataset.pos; }
  function cellWords(rect) {
    return rect.dataset.out !== undefined ? `output cell ${rect.dataset.out}`
      : `${rect.dataset.kind === "input" ? "input" : rect.dataset.kind} cell ${rect.dataset.pos} of the padded grid`;
  }
  function rove(rect) {
    if (!rect) return;
    const group = rect.closest(".input-grid, .output-grid");
    group.querySelectorAll("rect[tabindex]").forEach((r) => { r.removeAttribute("tabindex"); r.removeAttribute("role"); r.removeAttribute("aria-label"); });
    rect.setAttribute("tabindex", "0"); rect.setAttribute("role", "button"); rect.setAttribute("aria-label", cellWords(rect));
  }
  // the cell ``by`` = [rows, columns] away from ``rect`` in its grid (clamped to the grid), or null
  function neighbour(rect, by, ends) {
    const output = rect.dataset.out !== undefined;
    const pos = cellKey(rect).split(",").map(Number);
    const size = output ? geometry.output_size : (scattering() ? geometry.input_size : geometry.axes.map((a) => a.grid.length));
    const n = pos.length, row = n - 2, col = n - 1;
    if (ends !== undefined) pos[col] = ends ? size[col] - 1 : 0;
    if (by[1]) pos[col] = Math.max(0, Math.min(size[col] - 1, pos[col] + by[1]));
    if (by[0] && row >= 0) pos[row] = Math.max(0, Math.min(size[row] - 1, pos[row] + by[0]));
    const key = pos.join(",");
    return output ? outputByKey.get(key) : inputRects.get(key);
  }
  function cellKeydown(event) {
    const rect = event.target;
    const moves = { ArrowRight: [0, 1], ArrowLeft: [0, -1], ArrowDown: [1, 0], ArrowUp: [-1, 0], PageDown: [8, 0], PageUp: [-8, 0] };
    let next = null;
    if (moves[event.key]) next = neighbour(rect, moves[event.key]);
    else if (event.key === "Home" || event.key === "End") next = neighbour(rect, [0, 0], event.key === "End");
    else if (event.key === "Enter") {
      event.preventDefault(); stopPlaying();
      if (rect.dataset.out !== undefined && !scattering()) { setFrame(Number(rect.dataset.frame)); writeURL(); }
      gridPointer({ target: rect });
      return;
    } else return;
    event.preventDefault();
    if (next) { rove(next); next.focus(); }
  }

  // One listener for every cell (a 64 x 64 view has thousands).
  function gridPointer(event) {
    const rect = event.target.closest ? event.target.closest("rect.cell") : null;
    if (!rect) return;
    if (rect.dataset.out) { hoverOutput(rect.dataset.out.split(",").map(Number)); return; }
    const kind = rect.dataset.kind;
    if (kind === "input" || UNREAD.has(kind)) { hoverInput(rect.dataset.src.split(",").map(Number)); return; }
    clearHover();
    if (playing) return;
    const what = CELL_WORDS[kind](rect);
    const box = $("cell-sum");
    box.replaceChildren();
    const b = document.createElement("b");
    b.textContent = `cell (${rect.dataset.pos}) of the padded grid: `;
    box.append(b, document.createTextNode(what));
  }

  // what each kind of padded-grid cell is, said once (the legend uses the same words)
  const CELL_WORDS = {
    inserted: () => "an inserted zero (between the input cells of a transposed convolution)",
    copy: (rect) => `padding that copies input[${rect.dataset.src}] (${geometry.spec.padding_mode})`,
    padding: () => (geometry.spec.pool === "max" ? "padding, never the maximum (it counts as −∞)" : "zero padding"),
    beyond: () => "beyond the padded input: only a ceil-mode window reaches it, and it is ignored",
  };

  function clearHover() {
    if (playing || !geometry) return;
    setFrame(state.frame);
  }

  // ------------------------------------------------------------------ 3-D: the oblique volume

  // The server lays the volumes out (viz.scene.build_volume_scene): still shapes with their
  // role, and the two projections. A voxel corner (d, r, c) is origin + c·across + r·down + d·back.
  const voxelCorner = (v, d, r, c) => [v.origin[0] + c * v.across[0] + r * v.down[0] + d * v.back[0],
    v.origin[1] + c * v.across[1] + r * v.down[1] + d * v.back[1]];
  // front, top and right faces of the box over voxels first..last (inclusive)
  function boxFaces(v, first, last) {
    const [d0, r0, c0] = first, [d1, r1, c1] = last.map((n) => n + 1), p = (d, r, c) => voxelCorner(v, d, r, c);
    return [[p(d0, r0, c0), p(d0, r0, c1), p(d0, r1, c1), p(d0, r1, c0)],
      [p(d0, r0, c0), p(d1, r0, c0), p(d1, r0, c1), p(d0, r0, c1)],
      [p(d0, r0, c1), p(d1, r0, c1), p(d1, r1, c1), p(d0, r1, c1)]];
  }
  const pointsText = (points) => points.map((q) => q[0].toFixed(1) + "," + q[1].toFixed(1)).join(" ");
  const ANCHORS = { l: "start", m: "middle", r: "end" };

  async function refreshVolume() {
    if (!geometry || !oblique()) return;
    const mine = ++latest.volume;
    const answer = await post("/api/volume", { ...settings(), room: gridRoom() });
    if (mine !== latest.volume || !oblique()) return;
    renderVolume(answer);
    setFrame(state.frame);
  }

  function renderVolume(answer) {
    const svg = $("volume");
    if (!oblique()) { volume = null; svg.replaceChildren(); return; }
    if (!answer) return;  // on its way (refreshVolume)
    if (!answer.ok) { volume = null; svg.replaceChildren(); showError("error", answer.error); return; }
    volume = answer.data;
    const v = volume, parts = [];
    for (const shape of v.shapes) {
      if (shape.kind === "polygon") parts.push(`<polygon class="${shape.role}" points="${pointsText(shape.points)}"/>`);
      else if (shape.kind === "line") {
        const [a, b] = shape.points;
        parts.push(`<line class="${shape.role}" x1="${a[0]}" y1="${a[1]}" x2="${b[0]}" y2="${b[1]}"/>`);
      } else parts.push(`<text class="${shape.role}" x="${shape.points[0][0]}" y="${shape.points[0][1]}" ` +
        `text-anchor="${ANCHORS[shape.anchor[0]] || "start"}" dominant-baseline="central"></text>`);
    }
    svg.setAttribute("viewBox", `0 0 ${v.width} ${v.height}`);
    svg.setAttribute("width", v.width);
    svg.setAttribute("height", v.height);
    // what moves goes under the labels (which have a halo): a line never strikes a label out
    const firstText = v.shapes.findIndex((shape) => shape.kind === "text");
    parts.splice(firstText < 0 ? parts.length : firstText, 0, '<g id="volume-step"></g>');
    svg.innerHTML = parts.join("");
    const texts = v.shapes.filter((shape) => shape.kind === "text");
    svg.querySelectorAll("text").forEach((node, i) => { node.textContent = texts[i].text; });
  }

  // What moves: the voxels the window reads (one cube each, far ones first), the kernel's
  // box around them, the output voxel written and the lines joining the two boxes.
  function drawVolumeStep(index) {
    const group = $("volume-step");
    if (!volume || !group) return;
    const taps = tapsOf(index), parts = [];
    const positions = taps.map((t) => t.position);
    const first = [0, 1, 2].map((a) => Math.min(...positions.map((p) => p[a])));
    const last = [0, 1, 2].map((a) => Math.max(...positions.map((p) => p[a])));
    const kernelBox = boxFaces(volume.lower, first, last), target = boxFaces(volume.upper, index, index);
    const cube = (faces, attributes) => `<g ${attributes}>` + faces.map((face, i) =>
      `<polygon class="${["front", "top", "side"][i]}" points="${pointsText(face)}"/>`).join("") + "</g>";
    if (taps.length <= volume.max_cubes) {
      const order = taps.slice().sort((a, b) => b.position[0] - a.position[0] || b.position[1] - a.position[1]
        || a.position[2] - b.position[2]);
      for (const t of order) {
        parts.push(cube(boxFaces(volume.lower, t.position, t.position),
          `class="voxel ${t.source ? "in" : "pad"}" data-pos="${t.position.join(",")}"`));
      }
    } else {  // a big window: its box alone, filled (the cubes would hide one another anyway)
      parts.push(cube(kernelBox, 'class="voxel in many"'));
    }
    parts.push(cube(kernelBox, 'class="kbox"'));
    // the lines from the kernel box's front corners to the output voxel's
    kernelBox[0].forEach((a, i) => {
      const b = target[0][i];
      parts.push(`<line class="link" x1="${a[0].toFixed(1)}" y1="${a[1].toFixed(1)}" x2="${b[0].toFixed(1)}" y2="${b[1].toFixed(1)}"/>`);
    });
    parts.push(cube(target, `class="voxel out" data-out="${index.join(",")}"`));
    group.innerHTML = parts.join("");
    $("volume").setAttribute("aria-label", `the 3-D convolution seen at an angle: output (${index.join(", ")}) reads ` +
      `${taps.filter((t) => t.source).length} input voxels and ${taps.filter((t) => !t.source).length} padding voxels ` +
      `in slices ${first[0]}–${last[0]} of the padded input; Space plays, arrow keys step, O goes back to slices`);
  }

  // ------------------------------------------------------------------ animation

  function setFrame(frame, keepDepth = false) {
    if (!geometry || !frameRects.length) return;
    frame = Math.max(0, Math.min(frame, frameRects.length - 1));
    state.frame = frame;
    $("scrub").value = String(frame);
    if (scattering()) {
      const source = frameRects[frame].dataset.src.split(",").map(Number);
      showScatter(source);
      $("frame-label").textContent = `frame ${frame + 1} / ${frameRects.length} · input (${source.join(", ")})`;
      return;
    }
    const index = outputRects[frame].dataset.out.split(",").map(Number);
    if (index.length === 3) {  // first the slices: labels go on the cells shown
      const reads = tapsOf(index).map((t) => t.position[0]);
      if (!keepDepth && !reads.includes(state.depth)) state.depth = reads[0];  // the window's first slice
      showDepth(state.depth, index[0], reads);
      showKernelSlice(index);
    }
    showFootprint(index, true);
    if (oblique()) drawVolumeStep(index);
    $("frame-label").textContent = `frame ${frame + 1} / ${outputRects.length} · output (${index.join(", ")})`;
  }

  // 3-D: show input depth slice z (of the padded grid) and output depth slice oz.
  function showDepth(z, oz, reads) {
    const max = Number($("depth").max);
    z = Math.max(0, Math.min(z, max));
    state.depth = z;
    $("depth").value = String(z);
    document.querySelectorAll("#grid .z-in").forEach((t) => { t.textContent = ` · slice ${z}`; });
    document.querySelectorAll("#grid .z-out").forEach((t) => { t.textContent = ` · slice ${oz}`; });
    document.querySelectorAll("#grid .input-grid .slice").forEach((g) => g.setAttribute("display", Number(g.dataset.z) === z ? "inline" : "none"));
    document.querySelectorAll("#grid .output-grid .slice").forEach((g) => g.setAttribute("display", Number(g.dataset.z) === oz ? "inline" : "none"));
    // the cells in the Tab order move to the slices shown (a hidden cell cannot take focus)
    for (const [selector, depthShown, map] of [[".input-grid", z, inputRects], [".output-grid", oz, outputByKey]]) {
      const current = document.querySelector(`#grid ${selector} rect[tabindex]`);
      if (!current) continue;
      const pos = cellKey(current).split(",").map(Number);
      if (pos[0] !== depthShown) { pos[0] = depthShown; rove(map.get(pos.join(","))); }
    }
    const span = reads.length ? `the window reads slices ${Math.min(...reads)}–${Math.max(...reads)}` : "";
    $("depth-label").textContent = oblique() ? `${span} of 0–${max} (padded input) · it writes output slice ${oz}`
      : `input slice ${z} of 0–${max} (padded) · output slice ${oz} · ${span}`;
  }

  function stepDepth(by) {
    if (!geometry || geometry.output_size.length !== 3 || scattering()) return;
    state.depth = Math.max(0, Math.min(state.depth + by, Number($("depth").max)));
    setFrame(state.frame, true);
    writeURL();
  }

  function stopPlaying() {
    if (playing) clearInterval(playing);
    playing = null;
    $("play").textContent = "▶ play";
  }

  function togglePlay() {
    if (playing) { stopPlaying(); writeURL(); return; }
    if (state.frame >= frameRects.length - 1) setFrame(0);
    const speed = parseFloat($("speed").value);
    $("play").textContent = "⏸ pause";
    playing = setInterval(() => {
      if (state.frame >= frameRects.length - 1) { stopPlaying(); writeURL(); return; }
      setFrame(state.frame + 1);
    }, 700 / speed);
  }

  // ------------------------------------------------------------------ export, command, quiz

  // The `convarith animate` command that draws this view (flags as the CLI names them).
  function animateCommand() {
    const s = state, r = s.rank, axes = (v) => v.slice(0, r).join("x");
    const parts = ["convarith animate", axes(s.input)];
    if (r === 1) parts.push("--rank 1");
    parts.push("-k " + axes(s.kernel));
    if (s.stride.slice(0, r).some((v) => v !== 1)) parts.push("-s " + axes(s.stride));
    if (s.dilation.slice(0, r).some((v) => v !== 1)) parts.push("-d " + axes(s.dilation));
    if (s.padding === "explicit") {
      const pads = s.pads.slice(0, r);
      const even = pads.every((p) => p[0] === p[1]) && pads.every((p) => p[0] === pads[0][0]);
      parts.push("-p " + (even ? pads[0][0] : pads.map((p) => p.join(",")).join("x")));
    } else if (s.padding !== "valid") parts.push("-p " + s.padding);
    if (s.mode !== "zeros") parts.push("--padding-mode " + s.mode);
    if (s.transposed) parts.push("--transposed");
    if (scattering()) parts.push("--view scatter");
    if (s.transposed && hasOutputPadding()) parts.push("--output-padding " + axes(s.op));
    if (s.pool) parts.push("--pool " + s.pool);
    if (s.pool && s.ceil) parts.push("--ceil-mode");
    if (s.pool && s.countPad) parts.push("--count-include-pad");
    parts.push("-o conv.gif");
    return parts.join(" ");
  }

  // The grid as a standalone SVG: the page's CSS colours written into the shapes.
  const shownPicture = () => (oblique() && volume ? $("volume") : $("grid"));
  function standaloneSVG() {
    const svg = shownPicture(), copy = svg.cloneNode(true);
    copy.setAttribute("xmlns", SVG_NS);
    copy.removeAttribute("hidden");
    const live = svg.querySelectorAll("rect, text, line, polygon"), copies = copy.querySelectorAll("rect, text, line, polygon");
    live.forEach((node, i) => {
      const style = getComputedStyle(node), target = copies[i];
      for (const name of ["fill", "stroke", "stroke-width", "stroke-dasharray", "font-size", "font-weight", "font-family", "visibility", "fill-opacity", "opacity", "text-anchor", "dominant-baseline", "paint-order", "stroke-linejoin"]) {
        target.style.setProperty(name, style.getPropertyValue(name));
      }
      target.removeAttribute("class");
    });
    const paper = document.createElementNS(SVG_NS, "rect");
    paper.setAttribute("width", "100%"); paper.setAttribute("height", "100%"); paper.setAttribute("fill", "#ffffff");
    copy.insertBefore(paper, copy.firstChild);
    return new XMLSerializer().serializeToString(copy);
  }

  function download(name, blob) {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob); a.download = name;
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  function exportPNG() {
    const text = standaloneSVG(), svg = shownPicture();
    const width = Number(svg.getAttribute("width")), height = Number(svg.getAttribute("height"));
    const image = new Image();
    image.onload = () => {
      const canvas = document.createElement("canvas");
      canvas.width = width * 2; canvas.height = height * 2;
      const context = canvas.getContext("2d");
      context.scale(2, 2); context.drawImage(image, 0, 0);
      canvas.toBlob((blob) => download("convarith.png", blob), "image/png");
    };
    image.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(text);
  }

  // The animation as a GIF, drawn by the server (at most 1024 frames: every k-th step beyond).
  async function exportGIF() {
    if (!geometry) return;
    const body = settings(), status = $("export-status");
    if (scattering()) body.view = "scatter";
    const steps = (scattering() ? geometry.input_size : geometry.output_size).reduce((a, b) => a * b, 1);
    body.every = Math.min(64, Math.max(1, Math.ceil(steps / 1024)));
    status.textContent = "drawing the GIF…";
    let response;
    try {
      response = await fetch("/api/animation.gif", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    } catch (error) {
      status.textContent = "the server cannot be reached (" + error.message + ")";
      return;
    }
    if (!response.ok) {
      let message = "HTTP " + response.status;
      try { message = (await response.json()).error.message; } catch (error) { /* keep the status */ }
      status.textContent = "no GIF: " + message;
      return;
    }
    download("convarith.gif", await response.blob());
    const notes = [];
    if (body.every > 1) notes.push(`GIF: one step in ${body.every} (at most 1024 frames)`);
    // the animations draw a volume as its depth slices side by side; SVG and PNG keep this view
    if (oblique()) notes.push("the GIF draws the depth slices side by side (SVG and PNG export the oblique volume)");
    status.textContent = notes.join("; ");
  }

  function toggleQuiz(on) {
    document.body.classList.toggle("quizzing", on);
    $("quiz").hidden = !on;
    $("quiz-toggle").setAttribute("aria-pressed", String(on));
    $("quiz-toggle").textContent = on ? "stop quiz" : "quiz me";
    $("quiz-feedback").textContent = ""; $("quiz-answer").value = "";
    if (on) $("quiz-answer").focus();
  }

  function checkQuiz() {
    if (!geometry) return;
    const typed = $("quiz-answer").value.trim().split(/\s*[x×,*]\s*|\s+/).filter(Boolean);
    const want = geometry.output_size.map(String);
    const right = typed.length === want.length ? typed.every((t, i) => t === want[i])
      : typed.length === 1 && want.every((w) => w === typed[0]);
    const box = $("quiz-feedback");
    box.className = right ? "right" : "wrong";
    box.textContent = right ? `right: ${times(geometry.output_size)} — ` + geometry.explain.axes[0].steps.slice(-1)[0]
      : "not yet — count where the window can stand: O = floor((I + P_lo + P_hi − K_eff) / S) + 1";
    if (right) document.body.classList.remove("quizzing");
  }

  function newQuestion() {
    const pick = (list) => list[Math.floor(Math.random() * list.length)];
    const s = state, n = pick([5, 6, 7, 8, 9, 10, 11, 12]);
    s.rank = 2; s.input = [n, n, n]; s.kernel = Array(3).fill(pick([1, 2, 3, 3, 5]));
    s.stride = Array(3).fill(pick([1, 2, 2, 3])); s.dilation = Array(3).fill(pick([1, 1, 1, 2]));
    s.padding = pick(["valid", "same", "explicit"]); const p = pick([0, 1, 2]); s.pads = [[p, p], [p, p], [p, p]];
    s.transposed = false; s.pool = ""; s.mode = "zeros"; s.convention = "";
    document.querySelectorAll("[data-convention]").forEach((b) => b.classList.toggle("on", b.dataset.convention === ""));
    stateToControls(); state.frame = 0; schedule(); toggleQuiz(true);
  }

  // ------------------------------------------------------------------ stack

  function renderLayers() {
    const box = $("layers");
    box.replaceChildren();
    state.layers.forEach((layer, i) => {
      const row = document.createElement("div");
      row.className = "layer";
      row.innerHTML = `
        <span class="layer-n">${i + 1}</span>
        <select data-f="kind" aria-label="layer ${i + 1} kind"><option value="conv">conv</option><option value="max">max pool</option><option value="avg">avg pool</option></select>
        <label>k <input data-f="k" type="number" min="1" max="15"></label>
        <label>s <input data-f="s" type="number" min="1" max="8"></label>
        <label>d <input data-f="d" type="number" min="1" max="8"></label>
        <label>pad <select data-f="p"><option>valid</option><option>same</option><option>full</option><option>0</option><option>1</option><option>2</option><option>3</option></select></label>
        <span class="layer-size" data-size></span>
        <button type="button" data-act="up" title="move up">↑</button>
        <button type="button" data-act="down" title="move down">↓</button>
        <button type="button" data-act="remove" title="remove">✕</button>`;
      for (const input of row.querySelectorAll("[data-f]")) {
        input.value = String(layer[input.dataset.f]);
        input.addEventListener("change", () => {
          const f = input.dataset.f;
          layer[f] = f === "kind" || f === "p" ? input.value : parseInt(input.value, 10);
          state.cell = null;
          refreshStack();
        });
      }
      row.querySelectorAll("[data-act]").forEach((b) => b.addEventListener("click", () => {
        const act = b.dataset.act, list = state.layers;
        if (act === "remove" && list.length > 1) list.splice(i, 1);
        if (act === "up" && i > 0) [list[i - 1], list[i]] = [list[i], list[i - 1]];
        if (act === "down" && i < list.length - 1) [list[i + 1], list[i]] = [list[i], list[i + 1]];
        state.cell = null;
        renderLayers();
        refreshStack();
      }));
      box.appendChild(row);
    });
  }

  async function refreshStack() {
    writeURL();
    await updateStack();
  }

  async function updateStack() {
    const s = state;
    const layers = s.layers.map((l) => {
      const layer = { kernel_size: l.k, strides: l.s, dilation: l.d, padding: /^\d+$/.test(l.p) ? parseInt(l.p, 10) : l.p };
      if (l.kind !== "conv") layer.pool = l.kind;
      return layer;
    });
    const body = { rank: s.rank, input_size: s.input.slice(0, s.rank), layers };
    if (s.cell) body.cell = s.cell;
    const mine = ++latest.stack, key = JSON.stringify(body);
    if (key === stackDrawn) return;  // same layers on the same input: the picture stands
    stackDrawn = "";
    const answer = await post("/api/stack", body);
    if (mine !== latest.stack) return;
    const svg = $("stack-svg");
    if (answer.ok) stackDrawn = key;
    if (!answer.ok) {
      showError("stack-error", answer.error);
      document.querySelectorAll("#layers [data-size]").forEach((n) => { n.textContent = ""; });
      svg.replaceChildren();
      return;
    }
    showError("stack-error", "");
    const d = answer.data;
    stackAnswer = d;
    document.querySelectorAll("#layers [data-size]").forEach((n, i) => {
      const row = d.layers[i];
      n.textContent = `${times(row.input_size)} → ${times(row.output_size)}` + (row.dropped.some((v) => v) ? " (drops rows)" : "");
    });
    drawReceptive(d);
  }

  function drawReceptive(d) {
    const svg = $("stack-svg");
    const available = Math.max(200, (svg.parentElement.clientWidth || 360) - 10);  // read before any write
    svg.replaceChildren();
    const rf = d.receptive;
    if (!rf) { $("receptive-text").textContent = d.receptive_error || ""; return; }
    const rank = d.input_size.length;
    const last = d.layers[d.layers.length - 1].output_size;
    const field = rf.fields[rf.fields.length - 1];
    $("receptive-text").textContent =
      `output cell (${rf.cell.join(", ")}) of the last layer reads input cells ` +
      rf.exact.map((cells, i) => (cells.length ? `${cells[0]}…${cells[cells.length - 1]}` : "none") + ` (${cells.length})`).join(" × ") +
      ` · receptive field ${field.size.join("×")}, jump ${field.jump.join("×")}, start ${field.start.join(",")}`;
    const [rows, cols] = rowCol(d.input_size.map((n) => n - 1)).map((n) => n + 1);
    const [oRows, oCols] = rowCol(last.map((n) => n - 1)).map((n) => n + 1);
    // 3-D: the depth slice where the field starts, and the chosen cell's slice
    const inZ = rank === 3 ? (rf.exact[0].length ? rf.exact[0][0] : 0) : null, outZ = rank === 3 ? rf.cell[0] : null;
    const cell = Math.max(5, Math.min(22, Math.floor(360 / Math.max(rows, cols, oRows, oCols))));
    // room around the input for the part of the field that lies in the padding
    const span = rf.span.map((p) => p.map(Number));
    const [sr, sc] = rank === 1 ? [[0, 0], span[0]] : span.slice(-2);
    const left = Math.max(0, -sc[0]) * cell + 2, above = Math.max(0, -sr[0]) * cell;
    const right = Math.max(0, sc[1] - cols + 1) * cell, below = Math.max(0, sr[1] - rows + 1) * cell;
    const top = 26 + above, inWidth = left + Math.max(cols * cell + right, 90);
    const outText = `layer ${d.layers.length} output ${times(last)}`;
    const outWidth = Math.max(oCols * cell, outText.length * 8.2) + 10;
    // side by side where both fit the figure's width (a phone), else the output under the input
    const stacked = inWidth + 48 + outWidth > available;
    const outX = stacked ? 0 : inWidth + 48, inBottom = top + rows * cell + below;
    const outTop = stacked ? inBottom + 32 : top;
    const width = stacked ? Math.max(inWidth + 10, outWidth) : outX + outWidth;
    const height = stacked ? outTop + oRows * cell + 8 : top + Math.max(rows * cell + below, oRows * cell) + 8;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("width", width); svg.setAttribute("height", height);
    el("text", { x: 0, y: 16, class: "grid-label" }, svg).textContent = `input ${times(d.input_size)}`;
    el("text", { x: outX, y: stacked ? outTop - 10 : 16, class: "grid-label output" }, svg).textContent = outText;
    const box = el("g", { transform: `translate(${left}, 0)` }, svg);
    const exact = rf.exact.map((cells) => new Set(cells));
    const inputCells = el("g", {}, box), marks = [];  // one piece of markup: a 64 x 64 input has 4096 cells
    for (const pos of product(d.input_size.map((n) => [...Array(n).keys()]))) {
      if (inZ !== null && pos[0] !== inZ) continue;
      const [r, c] = rowCol(pos);
      const inside = pos.every((p, i) => exact[i].has(p));
      marks.push(`<rect x="${c * cell + 0.5}" y="${top + r * cell + 0.5}" width="${cell - 1}" height="${cell - 1}" ` +
        `class="cell rf ${inside ? "rf-in" : ""}" data-pos="${pos.join(",")}"/>`);
    }
    inputCells.innerHTML = marks.join("");
    // the field's nominal span (it may reach into the padding, outside the input)
    el("rect", { x: sc[0] * cell, y: top + sr[0] * cell, width: (sc[1] - sc[0] + 1) * cell,
      height: (sr[1] - sr[0] + 1) * cell, class: "rf-span" }, box);
    const outputCells = el("g", {}, svg), outs = [];
    for (const pos of product(last.map((n) => [...Array(n).keys()]))) {
      if (outZ !== null && pos[0] !== outZ) continue;
      const [r, c] = rowCol(pos);
      outs.push(`<rect x="${outX + c * cell + 0.5}" y="${outTop + r * cell + 0.5}" width="${cell - 1}" height="${cell - 1}" ` +
        `class="cell out${pos.join() === rf.cell.join() ? " current" : ""}" data-out="${pos.join(",")}"/>`);
    }
    outputCells.innerHTML = outs.join("");
  }

  // ------------------------------------------------------------------ tabs: code, image, solver

  function showTab(name, refresh = true) {
    state.tab = name;
    document.querySelectorAll("[data-tab]").forEach((b) => b.classList.toggle("on", b.dataset.tab === name));
    for (const t of ["stack", "code", "image", "solve"]) $("tab-" + t).hidden = t !== name;
    if (refresh) { writeURL(); updateTab(); }
  }

  async function updateTab() {
    if (state.tab === "code") return updateCode();
    if (state.tab === "image") return updateImage();
    return null;
  }

  async function updateCode() {
    const mine = ++latest.code;
    const answer = await post("/api/port", { ...settings(), to: state.port });
    if (mine !== latest.code) return;
    const code = $("code").querySelector("code");
    if (!answer.ok) { showError("code-error", answer.error); code.textContent = ""; return; }
    showError("code-error", "");
    code.textContent = answer.data.code;
  }

  async function copyCode() {
    const text = $("code").innerText;
    try {
      await navigator.clipboard.writeText(text);
    } catch (error) {
      const range = document.createRange();
      range.selectNodeContents($("code"));
      const selection = getSelection();
      selection.removeAllRanges(); selection.addRange(range);
      document.execCommand("copy");
    }
    $("copy-code").textContent = "copied ✓";
    setTimeout(() => { $("copy-code").textContent = "copy"; }, 1200);
  }

  async function updateImage() {
    const s = settings();
    const body = {
      image: $("image-source").value === "upload" && uploadedImage ? uploadedImage : "sample",
      kernel: state.imageKernel, numbers: state.numbers, strides: s.strides, dilation: s.dilation,
      padding: s.padding, padding_mode: s.padding_mode, transposed: s.transposed, pool: s.pool,
      ceil_mode: s.ceil_mode, count_include_pad: s.count_include_pad,
    };
    if (s.rank !== 2) { showError("image-error", "image mode needs 2-D settings (choose 2-D above)"); return; }
    if (s.pool) body.kernel_size = s.kernel_size;
    if (s.transposed) body.output_padding = s.output_padding;
    const mine = ++latest.image;
    const answer = await post("/api/image", body);
    if (mine !== latest.image) return;
    if (!answer.ok) { showError("image-error", answer.error); $("image-out").removeAttribute("src"); $("image-out").dataset.ready = ""; return; }
    showError("image-error", "");
    const d = answer.data;
    $("image-in").src = d.input_png;
    $("image-out").src = d.output_png;
    $("image-out").dataset.ready = "1";
    $("image-in-cap").textContent = `input ${times(d.input_size)}`;
    $("image-out-cap").textContent = `feature map ${times(d.output_size)} · values ${d.min.toPrecision(3)} … ${d.max.toPrecision(3)}`;
  }

  function readUpload(file) {
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => { uploadedImage = reader.result; updateImage(); };
    reader.onerror = () => showError("image-error", "the file could not be read");
    reader.readAsDataURL(file);
  }

  async function runSolver() {
    const body = {
      size: num("solve-size"), target: num("solve-target"), max_kernel: num("solve-k"),
      max_stride: num("solve-s"), max_dilation: num("solve-d"), symmetric: $("solve-sym").checked,
    };
    for (const k of Object.keys(body)) body[k] = nanNull(body[k]);
    const mine = ++latest.solve;
    const answer = await post("/api/solve", body);
    if (mine !== latest.solve) return;
    const tbody = $("solutions").querySelector("tbody");
    tbody.replaceChildren();
    if (!answer.ok) { showError("solve-error", answer.error); return; }
    showError("solve-error", answer.data.solutions.length ? "" : "no configuration within these bounds");
    for (const sol of answer.data.solutions) {
      const tr = document.createElement("tr");
      for (const v of [sol.kernel, sol.stride, sol.dilation, pair(sol.padding), sol.dropped || ""]) {
        const td = document.createElement("td");
        td.textContent = String(v);
        tr.appendChild(td);
      }
      const td = document.createElement("td");
      const use = document.createElement("button");
      use.type = "button"; use.textContent = "use"; use.className = "ghost";
      use.addEventListener("click", () => {
        state.kernel = Array(3).fill(sol.kernel); state.stride = Array(3).fill(sol.stride);
        state.dilation = Array(3).fill(sol.dilation); state.padding = "explicit";
        state.pads = [0, 1, 2].map(() => [...sol.padding]); state.transposed = false; state.pool = "";
        stateToControls(); state.frame = 0; schedule();
      });
      td.appendChild(use); tr.appendChild(td);
      tbody.appendChild(tr);
    }
  }

  // ------------------------------------------------------------------ wiring

  function wire() {
    $("controls").addEventListener("submit", (event) => event.preventDefault());
    $("controls").addEventListener("input", changed);
    $("controls").addEventListener("change", changed);
    document.querySelectorAll("[data-convention]").forEach((b) => b.addEventListener("click", () => {
      state.convention = b.dataset.convention;
      document.querySelectorAll("[data-convention]").forEach((x) => x.classList.toggle("on", x === b));
      schedule();
    }));
    document.querySelectorAll("[data-tab]").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));
    document.querySelectorAll("[data-port]").forEach((b) => b.addEventListener("click", () => {
      state.port = b.dataset.port;
      document.querySelectorAll("[data-port]").forEach((x) => x.classList.toggle("on", x === b));
      writeURL(); updateCode();
    }));
    $("grid").addEventListener("mouseover", gridPointer);
    $("grid").addEventListener("mouseleave", clearHover);
    $("grid").addEventListener("focusin", (event) => {  // a focused cell shows what hovering shows
      if (event.target.classList && event.target.classList.contains("cell")) { stopPlaying(); gridPointer(event); }
    });
    $("grid").addEventListener("focusout", (event) => {
      if (!(event.relatedTarget && event.relatedTarget.closest && event.relatedTarget.closest("#grid rect.cell"))) clearHover();
    });
    $("grid").addEventListener("keydown", (event) => {  // arrows step through the frames
      if (event.target.classList && event.target.classList.contains("cell")) { cellKeydown(event); return; }
      const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[event.key];
      if (step === undefined) return;
      event.preventDefault();
      stopPlaying(); setFrame(state.frame + step); writeURL();
    });
    $("grid").addEventListener("click", (event) => {  // a tap does what hovering does
      const rect = event.target.closest ? event.target.closest("rect.cell") : null;
      if (!rect) return;
      stopPlaying();
      if (rect.dataset.out && !scattering()) { setFrame(Number(rect.dataset.frame)); writeURL(); return; }
      gridPointer(event);
    });
    // Space plays or pauses, arrows step, Home/End jump: anywhere but in a field
    document.addEventListener("keydown", (event) => {
      const t = event.target, tag = t && t.tagName;
      if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey) return;
      if (["INPUT", "SELECT", "TEXTAREA", "BUTTON", "A"].includes(tag) || (t && t.isContentEditable)) return;
      if (event.key === " ") { event.preventDefault(); togglePlay(); return; }
      if (event.key === "[" || event.key === "]") { event.preventDefault(); stepDepth(event.key === "]" ? 1 : -1); return; }
      if ((event.key === "o" || event.key === "O") && state.rank === 3 && !scattering()) {
        event.preventDefault(); setLook(oblique() ? "slices" : "oblique"); return;
      }
      const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[event.key];
      if (event.key === "PageDown" || event.key === "PageUp") {  // a whole output row at a time
        event.preventDefault(); stopPlaying();
        const row = geometry && geometry.output_size.length > 1 ? geometry.output_size[geometry.output_size.length - 1] : 10;
        setFrame(state.frame + (event.key === "PageDown" ? row : -row)); writeURL();
      } else if (event.key === "Home" || event.key === "End") {
        event.preventDefault(); stopPlaying(); setFrame(event.key === "Home" ? 0 : frameRects.length - 1); writeURL();
      } else if (step !== undefined && t === $("grid")) {
        return;  // the grid's own handler steps
      } else if (step !== undefined) {
        event.preventDefault(); stopPlaying(); setFrame(state.frame + step); writeURL();
      }
    });
    $("copy-code").addEventListener("click", copyCode);
    $("export-svg").addEventListener("click", () => download("convarith.svg", new Blob([standaloneSVG()], { type: "image/svg+xml" })));
    $("export-png").addEventListener("click", exportPNG);
    $("export-gif").addEventListener("click", exportGIF);
    $("stack-svg").addEventListener("click", (event) => {  // a cell of the last output: the field it reads
      const rect = event.target.closest ? event.target.closest("rect[data-out]") : null;
      if (!rect) return;
      state.cell = rect.dataset.out.split(",").map(Number); refreshStack();
    });
    $("depth").addEventListener("input", () => stepDepth(Number($("depth").value) - state.depth));
    document.querySelectorAll("[data-look]").forEach((b) => b.addEventListener("click", () => setLook(b.dataset.look)));
    $("copy-cli").addEventListener("click", async () => {
      try { await navigator.clipboard.writeText($("cli").textContent); $("copy-cli").textContent = "copied ✓"; }
      catch (error) { $("copy-cli").textContent = "select it above"; }
      setTimeout(() => { $("copy-cli").textContent = "copy command"; }, 1200);
    });
    $("quiz-toggle").addEventListener("click", () => toggleQuiz(!document.body.classList.contains("quizzing") && $("quiz").hidden));
    $("quiz-check").addEventListener("click", checkQuiz);
    $("quiz-answer").addEventListener("keydown", (event) => { if (event.key === "Enter") checkQuiz(); });
    $("quiz-new").addEventListener("click", newQuestion);
    $("play").addEventListener("click", togglePlay);
    $("first").addEventListener("click", () => { stopPlaying(); setFrame(0); writeURL(); });
    $("prev").addEventListener("click", () => { stopPlaying(); setFrame(state.frame - 1); writeURL(); });
    $("next").addEventListener("click", () => { stopPlaying(); setFrame(state.frame + 1); writeURL(); });
    const rowOfFrames = () => (geometry && geometry.output_size.length > 1 ? geometry.output_size[geometry.output_size.length - 1] : 10);
    $("prev-row").addEventListener("click", () => { stopPlaying(); setFrame(state.frame - rowOfFrames()); writeURL(); });
    $("next-row").addEventListener("click", () => { stopPlaying(); setFrame(state.frame + rowOfFrames()); writeURL(); });
    $("scrub").addEventListener("input", () => { stopPlaying(); setFrame(parseInt($("scrub").value, 10)); writeURL(); });
    $("speed").addEventListener("change", () => { if (playing) { stopPlaying(); togglePlay(); } });
    $("add-layer").addEventListener("click", () => {
      if (state.layers.length >= 12) { showError("stack-error", "at most 12 layers"); return; }
      state.layers.push({ kind: "conv", k: 3, s: 1, d: 1, p: "same" });
      state.cell = null; renderLayers(); refreshStack();
    });
    $("image-source").addEventListener("change", () => {
      if ($("image-source").value === "upload") $("upload").click(); else updateImage();
    });
    $("upload").addEventListener("change", () => readUpload($("upload").files[0]));
    $("image-kernel").addEventListener("change", () => { state.imageKernel = $("image-kernel").value; syncVisibility(); writeURL(); updateImage(); });
    $("numbers").addEventListener("change", () => { state.numbers = $("numbers").value; writeURL(); updateImage(); });
    $("solve").addEventListener("click", runSolver);
    $("share").addEventListener("click", async () => {
      writeURL();
      try { await navigator.clipboard.writeText(location.href); $("share").textContent = "link copied ✓"; }
      catch (error) { $("share").textContent = "link in the address bar"; }
      setTimeout(() => { $("share").textContent = "copy link"; }, 1500);
    });
    window.addEventListener("resize", () => {
      if (stackAnswer && stackDrawn) drawReceptive(stackAnswer);  // the layer stack's picture fits the width too
      if (!geometry) return;
      if (oblique()) refreshVolume(); else { renderGrid(); setFrame(state.frame); }
    });
  }

  readURL();
  stateToControls();
  renderLayers();
  wire();
  update();
})();
